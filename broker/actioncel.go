package broker

import (
	"context"
	"fmt"
	"strings"
	"sync"

	"github.com/google/cel-go/cel"
	"github.com/google/cel-go/common/types"
	"github.com/google/cel-go/ext"

	"github.com/writ-dev/writ/artifact"
	"github.com/writ-dev/writ/artifact/jcs"
	"github.com/writ-dev/writ/policy"
)

// actionCELEnv is the environment of a rule's when condition: the action
// as a map. Every kind has kind. Kind exec: argv (list of strings, argv[0]
// first), env (map of the bound variables), path, sha256, interpreter,
// interpreter_sha256 (empty for a binary) and cwd. Kind http: method,
// scheme, authority, path, query (strings as bound, the query without
// "?"), headers (map of the bound names, lower-case, to lists of values;
// an empty list for a header bound absent) and body_sha256 (hex). Kind
// mcp: server, method, tool, arguments (params.arguments parsed: JSON
// objects as maps, arrays as lists, numbers as doubles) and
// arguments_sha256 (hex, of their JCS form). Limits are the policy's (policy.CostLimit,
// policy.MaxExprLen, policy.EvalTimeout).
var actionCELEnv = sync.OnceValues(func() (*cel.Env, error) {
	return cel.NewEnv(
		cel.Variable("action", cel.MapType(cel.StringType, cel.DynType)),
		ext.Strings(),
		cel.ParserExpressionSizeLimit(policy.MaxExprLen),
	)
})

// actionCondition is a compiled when condition.
type actionCondition struct {
	expr    string
	prg     cel.Program
	partial cel.Program // the same, evaluated with unknowns (mayHold)
}

func compileActionCondition(expr string) (*actionCondition, error) {
	env, err := actionCELEnv()
	if err != nil {
		return nil, fmt.Errorf("CEL environment: %w", err)
	}
	if strings.TrimSpace(expr) == "" {
		return nil, fmt.Errorf("empty")
	}
	ast, iss := env.Compile(expr)
	if iss.Err() != nil {
		return nil, fmt.Errorf("does not compile: %w", iss.Err())
	}
	if !ast.OutputType().IsExactType(cel.BoolType) {
		return nil, fmt.Errorf("has type %s; a condition must have type bool", ast.OutputType())
	}
	if denied := policy.DeniedCall(ast); denied != "" {
		return nil, fmt.Errorf("calls %s, which conditions may not use: its output can grow without bound", denied)
	}
	prg, err := env.Program(ast, cel.CostLimit(policy.CostLimit), cel.InterruptCheckFrequency(100))
	if err != nil {
		return nil, fmt.Errorf("%w", err)
	}
	partial, err := env.Program(ast, cel.CostLimit(policy.CostLimit), cel.InterruptCheckFrequency(100),
		cel.EvalOptions(cel.OptPartialEval))
	if err != nil {
		return nil, fmt.Errorf("%w", err)
	}
	return &actionCondition{expr: expr, prg: prg, partial: partial}, nil
}

// mayHold reports whether the condition could hold for an action of which
// in gives the known members, the members named unknown left unknown
// (cel-go partial evaluation): true when it evaluates to true or to a
// residual that depends on an unknown; false when it is false whatever
// the unknowns are, or fails.
func (c *actionCondition) mayHold(in map[string]any, unknown ...string) bool {
	patterns := make([]*cel.AttributePatternType, 0, len(unknown))
	for _, u := range unknown {
		patterns = append(patterns, cel.AttributePattern("action").QualString(u))
	}
	vars, err := cel.PartialVars(map[string]any{"action": in}, patterns...)
	if err != nil {
		return false
	}
	ctx, cancel := context.WithTimeout(context.Background(), policy.EvalTimeout)
	defer cancel()
	out, _, err := c.partial.ContextEval(ctx, vars)
	if err != nil {
		return false
	}
	if types.IsUnknown(out) {
		return true
	}
	b, ok := out.Value().(bool)
	return ok && b
}

// eval returns nil when the condition holds for act; an evaluation error
// (cost limit, timeout, a missing key) refuses, as a false condition does.
func (c *actionCondition) eval(act *artifact.Action) error {
	in, err := celInput(act)
	if err != nil {
		return err
	}
	return c.evalInput(in)
}

// celInput is act as the when condition sees it (actionCELEnv), copied so
// that no condition can reach the caller's slices and maps.
func celInput(act *artifact.Action) (map[string]any, error) {
	switch {
	case act.Kind == artifact.KindHTTP && act.HTTP != nil:
		h := act.HTTP
		headers := make(map[string][]string, len(h.Headers))
		for name, values := range h.Headers {
			headers[name] = append([]string{}, values...)
		}
		return map[string]any{"kind": act.Kind, "method": h.Method, "scheme": h.Scheme, "authority": h.Authority,
			"path": h.Path, "query": h.Query, "headers": headers, "body_sha256": h.BodySHA256}, nil
	case act.Kind == artifact.KindMCP && act.MCP != nil:
		t := act.MCP
		digest, err := t.ArgumentsSHA256()
		if err != nil {
			return nil, err
		}
		raw := t.Arguments
		if len(raw) == 0 {
			raw = []byte("{}")
		}
		args, err := jcs.Parse(raw) // ArgumentsSHA256 checked it is an object JCS can represent
		if err != nil {
			return nil, err
		}
		return map[string]any{"kind": act.Kind, "server": t.Server, "method": t.Method, "tool": t.Tool,
			"arguments": args, "arguments_sha256": digest}, nil
	}
	argv := make([]string, len(act.Argv))
	copy(argv, act.Argv)
	env := make(map[string]string, len(act.Env))
	for k, v := range act.Env {
		env[k] = v
	}
	return map[string]any{"kind": act.Kind,
		"argv": argv, "env": env, "path": act.Path, "sha256": act.SHA256, "cwd": act.Cwd,
		"interpreter": act.Interpreter, "interpreter_sha256": act.InterpreterSHA256,
	}, nil
}

// evalInput evaluates the condition over celInput's map.
func (c *actionCondition) evalInput(in map[string]any) error {
	ctx, cancel := context.WithTimeout(context.Background(), policy.EvalTimeout)
	defer cancel()
	out, _, err := c.prg.ContextEval(ctx, map[string]any{"action": in})
	if err != nil {
		return fmt.Errorf("its when condition failed: %w", err)
	}
	if b, ok := out.Value().(bool); !ok || !b {
		return fmt.Errorf("its when condition is false")
	}
	return nil
}
