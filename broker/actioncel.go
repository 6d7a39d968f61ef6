package broker

import (
	"context"
	"fmt"
	"strings"
	"sync"

	"github.com/google/cel-go/cel"
	"github.com/google/cel-go/ext"

	"github.com/writ-dev/writ/artifact"
	"github.com/writ-dev/writ/policy"
)

// actionCELEnv is the environment of a rule's when condition: the action
// as a map with argv (list of strings, argv[0] first), env (map of the
// bound variables), path, sha256, interpreter, interpreter_sha256 (empty
// for a binary) and cwd. Limits are the policy's (policy.CostLimit,
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
	expr string
	prg  cel.Program
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
	return &actionCondition{expr: expr, prg: prg}, nil
}

// eval returns nil when the condition holds for act; an evaluation error
// (cost limit, timeout, a missing key) refuses, as a false condition does.
func (c *actionCondition) eval(act *artifact.Action) error {
	argv := make([]string, len(act.Argv))
	copy(argv, act.Argv)
	env := make(map[string]string, len(act.Env))
	for k, v := range act.Env {
		env[k] = v
	}
	ctx, cancel := context.WithTimeout(context.Background(), policy.EvalTimeout)
	defer cancel()
	out, _, err := c.prg.ContextEval(ctx, map[string]any{"action": map[string]any{
		"argv": argv, "env": env, "path": act.Path, "sha256": act.SHA256, "cwd": act.Cwd,
		"interpreter": act.Interpreter, "interpreter_sha256": act.InterpreterSHA256,
	}})
	if err != nil {
		return fmt.Errorf("its when condition failed: %w", err)
	}
	if b, ok := out.Value().(bool); !ok || !b {
		return fmt.Errorf("its when condition is false")
	}
	return nil
}
