// Command writ-spire-plugin is writ's SPIRE NodeAttestor plugin, both sides
// in one binary: SPIRE starts it with plugin_args ["agent"] in the agent's
// NodeAttestor "writ" block and ["server"] in the server's (see
// deploy/spire/ and docs/adr/0034). The plugins live in package
// spireplugin.
package main

import (
	"fmt"
	"os"

	"github.com/spiffe/spire-plugin-sdk/pluginmain"
	agentnav1 "github.com/spiffe/spire-plugin-sdk/proto/spire/plugin/agent/nodeattestor/v1"
	servernav1 "github.com/spiffe/spire-plugin-sdk/proto/spire/plugin/server/nodeattestor/v1"
	configv1 "github.com/spiffe/spire-plugin-sdk/proto/spire/service/common/config/v1"

	"github.com/writ-dev/writ/spireplugin"
)

const usage = "usage: writ-spire-plugin agent|server (run by SPIRE as plugin_cmd, with plugin_args)"

func main() {
	if len(os.Args) != 2 {
		fmt.Fprintln(os.Stderr, usage)
		os.Exit(2)
	}
	switch os.Args[1] {
	case "agent":
		p := spireplugin.NewAgent()
		pluginmain.Serve(agentnav1.NodeAttestorPluginServer(p), configv1.ConfigServiceServer(p))
	case "server":
		p := spireplugin.NewServer()
		pluginmain.Serve(servernav1.NodeAttestorPluginServer(p), configv1.ConfigServiceServer(p))
	default:
		fmt.Fprintln(os.Stderr, usage)
		os.Exit(2)
	}
}
