package policy

import (
	"context"
	"fmt"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/google/cel-go/cel"
	"github.com/google/cel-go/checker"
	celast "github.com/google/cel-go/common/ast"
	"github.com/google/cel-go/common/types"
	"github.com/google/cel-go/ext"
	"github.com/google/cel-go/interpreter"
)

// Limits on CEL conditions.
const (
	// CostLimit bounds the work one condition may do in one evaluation, in
	// CEL cost units (about one per operation, string bytes / 10 for string
	// work). Past it the evaluation stops with condition_error.
	CostLimit = 1_000_000
	// MaxExprLen bounds a condition's length, in characters.
	MaxExprLen = 16384
	// EvalTimeout bounds one Evaluate's conditions, all together, as a
	// backstop to CostLimit.
	EvalTimeout = time.Second
	// interruptEvery is how many comprehension iterations run between checks
	// of the evaluation's context.
	interruptEvery = 100
)

// deniedFunctions are CEL string extensions whose output can outgrow their
// input many times over in one call, before the cost limit can stop them.
var deniedFunctions = map[string]bool{"replace": true, "format": true}

// DeniedCall returns the first function ast calls that conditions may not
// use (deniedFunctions), or "". Every CEL condition writ compiles (policy
// conditions, action rules' when) is checked with it.
func DeniedCall(ast *cel.Ast) string {
	var denied string
	celast.PreOrderVisit(ast.NativeRep().Expr(), celast.NewExprVisitor(func(e celast.Expr) {
		if e.Kind() == celast.CallKind && deniedFunctions[e.AsCall().FunctionName()] && denied == "" {
			denied = e.AsCall().FunctionName()
		}
	}))
	return denied
}

var celEnv = sync.OnceValues(func() (*cel.Env, error) {
	return cel.NewEnv(
		cel.Variable("claims", cel.MapType(cel.StringType, cel.DynType)),
		ext.Strings(),
		cel.CrossTypeNumericComparisons(true),
		cel.ParserExpressionSizeLimit(MaxExprLen),
	)
})

// condition is one compiled CEL condition.
type condition struct {
	name  string
	expr  string
	prg   cel.Program
	paths [][]string // claim paths the expression reads, for explanations
}

func compileCondition(name, expr string) (*condition, error) {
	env, err := celEnv()
	if err != nil {
		return nil, fmt.Errorf("CEL environment: %w", err)
	}
	if strings.TrimSpace(expr) == "" {
		return nil, fmt.Errorf("expr is empty")
	}
	if n := len([]rune(expr)); n > MaxExprLen {
		return nil, fmt.Errorf("expr is %d characters long; at most %d", n, MaxExprLen)
	}
	ast, iss := env.Compile(expr)
	if iss.Err() != nil {
		return nil, fmt.Errorf("expr does not compile: %w", iss.Err())
	}
	if t := ast.OutputType(); !t.IsExactType(cel.BoolType) {
		return nil, fmt.Errorf("expr has type %s; a condition must have type bool (compare dyn values explicitly, e.g. x == true)", t)
	}
	native := ast.NativeRep()
	if denied := DeniedCall(ast); denied != "" {
		return nil, fmt.Errorf("expr calls %s, which policies may not use: its output can grow without bound", denied)
	}
	est, err := env.EstimateCost(ast, noSizeEstimates{})
	if err == nil && est.Min > CostLimit {
		return nil, fmt.Errorf("expr costs at least %d to evaluate; the limit is %d", est.Min, CostLimit)
	}
	prg, err := env.Program(ast,
		cel.CostLimit(CostLimit),
		cel.InterruptCheckFrequency(interruptEvery),
		cel.EvalOptions(cel.OptOptimize),
	)
	if err != nil {
		return nil, fmt.Errorf("expr: %w", err)
	}
	return &condition{name: name, expr: expr, prg: prg, paths: claimPaths(native)}, nil
}

// noSizeEstimates tells the cost estimator nothing about input sizes, so its
// minimum is what the expression costs on any input.
type noSizeEstimates struct{}

func (noSizeEstimates) EstimateSize(checker.AstNode) *checker.SizeEstimate { return nil }
func (noSizeEstimates) EstimateCallCost(string, string, *checker.AstNode, []checker.AstNode) *checker.CallEstimate {
	return nil
}

// eval runs the condition. Anything but a bool true or false is an error.
func (c *condition) eval(ctx context.Context, act interpreter.Activation) (bool, error) {
	out, _, err := c.prg.ContextEval(ctx, act)
	if err != nil {
		return false, err
	}
	b, ok := out.Value().(bool)
	if !ok {
		return false, fmt.Errorf("evaluated to %s, not a bool", out.Type().TypeName())
	}
	return b, nil
}

// claimPaths lists the paths under claims that an expression selects
// (claims.a.b, claims["a"].b), dropping a path that is a prefix of another.
func claimPaths(a *celast.AST) [][]string {
	var paths [][]string
	celast.PreOrderVisit(a.Expr(), celast.NewExprVisitor(func(e celast.Expr) {
		if p, ok := selectPath(e); ok {
			paths = append(paths, p)
		}
	}))
	var out [][]string
	for i, p := range paths {
		keep := true
		for j, q := range paths {
			if i != j && len(q) > len(p) && slices.Equal(q[:len(p)], p) {
				keep = false
				break
			}
			if j < i && slices.Equal(p, q) {
				keep = false
				break
			}
		}
		if keep {
			out = append(out, p)
		}
	}
	return out
}

func selectPath(e celast.Expr) ([]string, bool) {
	var rev []string
	for {
		switch e.Kind() {
		case celast.SelectKind:
			s := e.AsSelect()
			rev = append(rev, s.FieldName())
			e = s.Operand()
		case celast.CallKind:
			c := e.AsCall()
			if c.FunctionName() != "_[_]" || len(c.Args()) != 2 || c.Args()[1].Kind() != celast.LiteralKind {
				return nil, false
			}
			key, ok := c.Args()[1].AsLiteral().(types.String)
			if !ok {
				return nil, false
			}
			rev = append(rev, string(key))
			e = c.Args()[0]
		case celast.IdentKind:
			if e.AsIdent() != "claims" || len(rev) == 0 {
				return nil, false
			}
			slices.Reverse(rev)
			return rev, true
		default:
			return nil, false
		}
	}
}

// pathString renders a claim path as it is written in findings: fields
// joined by '.', keys that are not identifiers as ["key"].
func pathString(p []string) string {
	var b strings.Builder
	for i, k := range p {
		if isIdent(k) {
			if i > 0 {
				b.WriteByte('.')
			}
			b.WriteString(k)
		} else {
			b.WriteString("[" + strconv.Quote(k) + "]")
		}
	}
	return b.String()
}

func isIdent(s string) bool {
	if s == "" {
		return false
	}
	for i, r := range s {
		switch {
		case r == '_', r >= 'a' && r <= 'z', r >= 'A' && r <= 'Z':
		case r >= '0' && r <= '9' && i > 0:
		default:
			return false
		}
	}
	return true
}

// explain looks up the condition's claim paths in the document: the values
// found (scalars as they are, lists and objects by size) and the paths absent.
func (c *condition) explain(claims map[string]any) (map[string]any, []string) {
	var found map[string]any
	var absent []string
	for _, p := range c.paths {
		v, ok := lookup(claims, p)
		if !ok {
			absent = append(absent, pathString(p))
			continue
		}
		if found == nil {
			found = map[string]any{}
		}
		found[pathString(p)] = summarize(v)
	}
	return found, absent
}

func lookup(doc map[string]any, path []string) (any, bool) {
	var cur any = doc
	for _, k := range path {
		m, ok := asMap(cur)
		if !ok {
			return nil, false
		}
		if cur, ok = m[k]; !ok {
			return nil, false
		}
	}
	return cur, true
}

// summarize keeps scalars and describes composites by size, so a finding
// never holds (or aliases) a large part of the claims.
func summarize(v any) any {
	switch v := v.(type) {
	case nil, bool, string, float64, int, int64, uint64:
		return v
	}
	if l, ok := asList(v); ok {
		return fmt.Sprintf("<list of %d>", len(l))
	}
	if m, ok := asMap(v); ok {
		return fmt.Sprintf("<object with %d keys>", len(m))
	}
	return fmt.Sprintf("<%T>", v)
}
