// Command mcpdemo is the demo's MCP side (make demo, deploy/demo.sh): not
// part of writ. It has three parts:
//
//	mcpdemo upstream ADDR CALLS           an SDK MCP server on ADDR with one tool, echo; each call that reaches it appends a line to CALLS
//	mcpdemo stdio CALLS                   the same server over stdin/stdout (writ gateway mcp --upstream-command), with a second tool, pid (its process id)
//	mcpdemo call [flags]                  as the node (its SVID, key in the TPM): call a tool through the gateway with a writ from writ request --mcp-server, or none (the gateway asks the broker)
//
// call prints the tool's result, or "refused: REASON" and exits 126.
package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"net/http"
	"os"
	"strings"
	"time"

	"github.com/modelcontextprotocol/go-sdk/mcp"
	"github.com/spiffe/go-spiffe/v2/bundle/spiffebundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/spiffetls/tlsconfig"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"

	"github.com/writ-dev/writ/attest/prover"
	"github.com/writ-dev/writ/internal/nodestate"
	"github.com/writ-dev/writ/mcpgate"
)

func main() {
	if len(os.Args) < 2 {
		fatal(errors.New("usage: mcpdemo upstream|stdio|call …"))
	}
	var err error
	switch args := os.Args[2:]; os.Args[1] {
	case "upstream":
		err = upstream(args)
	case "stdio":
		err = stdio(args)
	case "call":
		err = call(args)
	default:
		err = fmt.Errorf("unknown command %q", os.Args[1])
	}
	var refused refusal
	if errors.As(err, &refused) {
		fmt.Println("refused:", string(refused))
		os.Exit(126)
	}
	if err != nil {
		fatal(err)
	}
}

// refusal is the gateway's reason code for a refused call.
type refusal string

func (r refusal) Error() string { return "refused: " + string(r) }

func fatal(err error) {
	fmt.Fprintln(os.Stderr, "mcpdemo:", err)
	os.Exit(1)
}

// upstream serves the echo tool over streamable HTTP until killed.
func upstream(args []string) error {
	if len(args) != 2 {
		return errors.New("usage: mcpdemo upstream ADDR CALLS")
	}
	srv := echoServer(args[1])
	s := &http.Server{Addr: args[0], ReadHeaderTimeout: 10 * time.Second,
		Handler: mcp.NewStreamableHTTPHandler(func(*http.Request) *mcp.Server { return srv }, nil)}
	return s.ListenAndServe()
}

// stdio serves echo and pid over stdin and stdout until stdin closes.
func stdio(args []string) error {
	if len(args) != 1 {
		return errors.New("usage: mcpdemo stdio CALLS")
	}
	srv := echoServer(args[0])
	srv.AddTool(&mcp.Tool{Name: "pid", InputSchema: map[string]any{"type": "object"}},
		func(context.Context, *mcp.CallToolRequest) (*mcp.CallToolResult, error) {
			return &mcp.CallToolResult{Content: []mcp.Content{&mcp.TextContent{Text: fmt.Sprint(os.Getpid())}}}, nil
		})
	return srv.Run(context.Background(), &mcp.StdioTransport{})
}

// echoServer is an SDK server with the tool echo, which appends each call
// that reaches it (its arguments, and the parent writ the gateway names)
// to the file calls.
func echoServer(calls string) *mcp.Server {
	srv := mcp.NewServer(&mcp.Implementation{Name: "echo", Version: "v1"}, nil)
	srv.AddTool(&mcp.Tool{Name: "echo", InputSchema: map[string]any{"type": "object"}},
		func(_ context.Context, req *mcp.CallToolRequest) (*mcp.CallToolResult, error) {
			f, err := os.OpenFile(calls, os.O_WRONLY|os.O_APPEND|os.O_CREATE, 0o600)
			if err != nil {
				return nil, err
			}
			parent, _ := req.Params.Meta[mcpgate.ParentMetaKey].(string)
			_, err = fmt.Fprintf(f, "%s\tparent=%s\n", req.Params.Arguments, parent)
			if cerr := f.Close(); err == nil {
				err = cerr
			}
			if err != nil {
				return nil, err
			}
			var a struct{ Text string }
			if err := json.Unmarshal(req.Params.Arguments, &a); err != nil {
				return nil, err
			}
			return &mcp.CallToolResult{Content: []mcp.Content{&mcp.TextContent{Text: a.Text}}}, nil
		})
	return srv
}

// call calls --tool with --arguments through the gateway, as the node
// (its SVID, the key in the TPM), with the writ in the file --writ (from
// writ request --mcp-server) in params._meta, or none.
func call(args []string) error {
	fs := flag.NewFlagSet("call", flag.ExitOnError)
	tpmSpec := fs.String("tpm", "", "the node's TPM")
	dataDir := fs.String("data-dir", "", "the node agent's data DIR")
	bundlePath := fs.String("bundle", "", "the broker's trust bundle FILE")
	tdName := fs.String("trust-domain", "", "trust DOMAIN")
	gateway := fs.String("gateway", "", "the gateway's URL")
	tool := fs.String("tool", "", "tool NAME")
	arguments := fs.String("arguments", "{}", "the call's arguments (JSON object)")
	writFile := fs.String("writ", "", "the writ FILE; none: the gateway asks the broker for one")
	if err := fs.Parse(args); err != nil {
		return err
	}
	var meta mcp.Meta
	if *writFile != "" {
		writ, err := os.ReadFile(*writFile)
		if err != nil {
			return err
		}
		meta = mcp.Meta{mcpgate.MetaKey: strings.TrimSpace(string(writ))}
	}
	td, err := spiffeid.TrustDomainFromString(*tdName)
	if err != nil {
		return err
	}
	bundle, err := spiffebundle.Load(td, *bundlePath)
	if err != nil {
		return err
	}
	chain, keyBlob, err := nodestate.Dir(*dataDir).SVID()
	if err != nil {
		return err
	}
	tpm, err := prover.Open(*tpmSpec, "")
	if err != nil {
		return err
	}
	defer tpm.Close()
	signer, err := tpm.LoadSigner(keyBlob)
	if err != nil {
		return err
	}
	defer signer.Close()
	id, _, err := x509svid.Verify(chain, bundle)
	if err != nil {
		return err
	}
	node := &x509svid.SVID{ID: id, Certificates: chain, PrivateKey: signer}
	gwID := spiffeid.RequireFromPath(td, "/gateway")
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()

	var callArgs map[string]any
	if err := json.Unmarshal([]byte(*arguments), &callArgs); err != nil {
		return fmt.Errorf("--arguments: %w", err)
	}
	hc := &http.Client{Transport: &http.Transport{TLSClientConfig: tlsconfig.MTLSClientConfig(node, bundle, tlsconfig.AuthorizeID(gwID))}}
	client := mcp.NewClient(&mcp.Implementation{Name: "mcpdemo", Version: "v1"}, nil)
	cs, err := client.Connect(ctx, &mcp.StreamableClientTransport{Endpoint: *gateway, HTTPClient: hc}, nil)
	if err != nil {
		return fmt.Errorf("connect to the gateway: %w", err)
	}
	defer func() { _ = cs.Close() }()
	res, err := cs.CallTool(ctx, &mcp.CallToolParams{Name: *tool, Arguments: callArgs, Meta: meta})
	if reason := mcpgate.ReasonOf(err); reason != "" {
		return refusal(reason)
	}
	if err != nil {
		return err
	}
	var out []string
	for _, c := range res.Content {
		if t, ok := c.(*mcp.TextContent); ok {
			out = append(out, t.Text)
		}
	}
	fmt.Println(strings.Join(out, "\n"))
	return nil
}
