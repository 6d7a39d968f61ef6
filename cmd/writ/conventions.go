package main

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"slices"
	"strings"
	"time"

	"github.com/urfave/cli/v2"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"
)

// ConfigEnv names the broker configuration file for every --config flag
// that takes one (writ broker run, writ node …, writ entry …).
const ConfigEnv = "WRIT_CONFIG"

// globalFlags are valid at every level of the command tree: writ
// --log-level debug agent run and writ agent run --log-level debug mean
// the same (global reads them).
func globalFlags() []cli.Flag {
	return []cli.Flag{
		&cli.StringFlag{Name: "log-level", Value: "info", EnvVars: []string{"WRIT_LOG_LEVEL"}, Category: "global",
			Usage: "log `LEVEL`: debug, info, warn or error (logs go to stderr)"},
		&cli.StringFlag{Name: "log-format", Value: "text", EnvVars: []string{"WRIT_LOG_FORMAT"}, Category: "global",
			Usage: "log `FORMAT`: text (logfmt) or json (one object per line)"},
	}
}

// conventions applies the CLI's conventions to every command, at every
// depth: the global flags (fresh instances: urfave/cli keeps state in a
// flag), WRIT_CONFIG for --config, and flag parsing errors as usage errors
// (exit 2).
func conventions(cmds []*cli.Command) {
	for _, c := range cmds {
		for _, f := range c.Flags {
			if p, ok := f.(*cli.PathFlag); ok && p.Name == "config" && !slices.Contains(p.EnvVars, ConfigEnv) {
				p.EnvVars = append(p.EnvVars, ConfigEnv)
			}
		}
		// Clipped: commands may share a flag slice's backing array.
		c.Flags = append(slices.Clip(c.Flags), globalFlags()...)
		c.OnUsageError = onUsageError
		conventions(c.Subcommands)
	}
}

// global returns a global flag's value from the deepest command that set
// it, or its default.
func global(c *cli.Context, name string) string {
	for _, x := range c.Lineage() {
		if x.Command != nil && x.IsSet(name) {
			return x.String(name)
		}
	}
	return c.String(name)
}

func onUsageError(_ *cli.Context, err error, _ bool) error { return usageError(err) }

// isCLIUsageError reports whether err is a usage error urfave/cli returns
// without a hook: an unknown command, a required flag left out. It has no
// type for them, so their messages are matched.
func isCLIUsageError(err error) bool {
	msg := err.Error()
	return strings.HasPrefix(msg, "No help topic for ") || strings.HasPrefix(msg, "Required flag")
}

// completionCommand prints a shell completion script. The scripts are
// urfave/cli's (autocomplete/), which ask writ itself for the candidates
// with --generate-bash-completion.
func completionCommand() *cli.Command {
	return &cli.Command{
		Name:      "completion",
		Usage:     "print a shell completion script: bash, zsh or fish",
		ArgsUsage: "SHELL",
		Description: "bash: source <(writ completion bash), or save it to /etc/bash_completion.d/writ\n" +
			"zsh:  writ completion zsh > \"${fpath[1]}/_writ\"\n" +
			"fish: writ completion fish > ~/.config/fish/completions/writ.fish",
		Action: func(c *cli.Context) error {
			if c.NArg() != 1 {
				return usageError(fmt.Errorf("which shell? bash, zsh or fish"))
			}
			var script string
			switch c.Args().First() {
			case "bash":
				script = bashCompletion
			case "zsh":
				script = zshCompletion
			case "fish":
				var err error
				if script, err = c.App.ToFishCompletion(); err != nil {
					return err
				}
			default:
				return usageError(fmt.Errorf("shell %q: want bash, zsh or fish", c.Args().First()))
			}
			_, err := fmt.Fprint(c.App.Writer, script)
			return err
		},
	}
}

// manCommand prints the man page (roff), as make man writes it to
// docs/man/writ.1.
func manCommand() *cli.Command {
	return &cli.Command{
		Name:  "man",
		Usage: "print the writ(1) man page (roff): writ man | man -l -",
		Action: func(c *cli.Context) error {
			page, err := c.App.ToManWithSection(1)
			if err != nil {
				return err
			}
			_, err = fmt.Fprint(c.App.Writer, page)
			return err
		},
	}
}

const bashCompletion = `# bash completion for writ (urfave/cli's bash_autocomplete)
_writ_bash_autocomplete() {
  if [[ "${COMP_WORDS[0]}" != "source" ]]; then
    local cur opts base words cword
    COMPREPLY=()
    cur="${COMP_WORDS[COMP_CWORD]}"
    if declare -F _init_completion >/dev/null 2>&1; then
      _init_completion -n "=:" || return
    else
      COMPREPLY=()
      _get_comp_words_by_ref -n "=:" cur prev words cword
    fi
    words=("${words[@]:0:$cword}")
    if [[ "$cur" == "-"* ]]; then
      requestComp="${words[*]} ${cur} --generate-bash-completion"
    else
      requestComp="${words[*]} --generate-bash-completion"
    fi
    opts=$(eval "${requestComp}" 2>/dev/null)
    COMPREPLY=($(compgen -W "${opts}" -- ${cur}))
    return 0
  fi
}
complete -o bashdefault -o default -o nospace -F _writ_bash_autocomplete writ
`

const zshCompletion = `#compdef writ
# zsh completion for writ (urfave/cli's zsh_autocomplete)
_writ_zsh_autocomplete() {
  local -a opts
  local cur
  cur=${words[-1]}
  if [[ "$cur" == "-"* ]]; then
    opts=("${(@f)$(${words[@]:0:#words[@]-1} ${cur} --generate-bash-completion)}")
  else
    opts=("${(@f)$(${words[@]:0:#words[@]-1} --generate-bash-completion)}")
  fi
  if [[ "${opts[1]}" != "" ]]; then
    _describe 'values' opts
  else
    _files
  fi
}
compdef _writ_zsh_autocomplete writ
`

// DefaultShutdownTimeout is how long a daemon lets work in flight finish
// after SIGTERM or SIGINT before it cuts it off.
const DefaultShutdownTimeout = 5 * time.Second

func shutdownTimeoutFlag() cli.Flag {
	return &cli.DurationFlag{Name: "shutdown-timeout", Value: DefaultShutdownTimeout, EnvVars: []string{"WRIT_SHUTDOWN_TIMEOUT"},
		Usage: "on SIGTERM or SIGINT, stop taking new work and let work in flight finish for up to `DURATION`, then cut it off"}
}

// shutdownTimeout reads --shutdown-timeout: positive, at most 10 minutes.
func shutdownTimeout(c *cli.Context) (time.Duration, error) {
	d := c.Duration("shutdown-timeout")
	if d <= 0 || d > 10*time.Minute {
		return 0, usageError(fmt.Errorf("--shutdown-timeout %s: must be positive and at most 10m", d))
	}
	return d, nil
}

// jsonFlag is --json on a command that lists or shows things: one JSON
// object per line, every ID whole.
func jsonFlag() cli.Flag {
	return &cli.BoolFlag{Name: "json", Usage: "print JSON, one object per line, IDs whole"}
}

// printJSON prints each message as one line of JSON (proto field names).
func printJSON[M proto.Message](w io.Writer, msgs ...M) error {
	for _, m := range msgs {
		raw, err := protojson.MarshalOptions{UseProtoNames: true}.Marshal(m)
		if err != nil {
			return err
		}
		// protojson varies its whitespace on purpose; scripts get one
		// stable line.
		var line bytes.Buffer
		if err := json.Compact(&line, raw); err != nil {
			return err
		}
		if _, err := fmt.Fprintln(w, line.String()); err != nil {
			return err
		}
	}
	return nil
}
