package main

import (
	"fmt"
	"runtime/debug"

	"github.com/urfave/cli/v2"
)

// version is set at build time with -ldflags "-X main.version=…".
var version = "dev"

func versionCommand() *cli.Command {
	return &cli.Command{
		Name:  "version",
		Usage: "print the version of writ",
		Action: func(c *cli.Context) error {
			_, err := fmt.Fprintf(c.App.Writer, "writ %s\n", versionLine())
			return err
		},
	}
}

// versionLine is the version and the revision writ was built from, as
// writ version and writ --version print them after "writ ".
func versionLine() string {
	rev := "unknown"
	if info, ok := debug.ReadBuildInfo(); ok {
		for _, s := range info.Settings {
			if s.Key == "vcs.revision" {
				rev = s.Value
			}
		}
	}
	return fmt.Sprintf("%s (revision %s)", version, rev)
}

func init() {
	cli.VersionPrinter = func(c *cli.Context) { fmt.Fprintf(c.App.Writer, "writ %s\n", c.App.Version) }
}
