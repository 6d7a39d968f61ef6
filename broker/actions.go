package broker

import (
	"fmt"
	"maps"
	"regexp"
	"slices"
	"strings"

	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/writ-dev/writ/artifact"
	"github.com/writ-dev/writ/attest"
)

// ReasonEnvDangerous refuses an action that passes a loader or interpreter
// variable (artifact.DangerousEnv) that no rule names.
const ReasonEnvDangerous = "env_dangerous"

// ReasonInterpreterNotGoverned refuses a #! script asked for from a
// governed cgroup (WritRequest.governed_cgroup) whose interpreter the
// rule lists in interpreters but not in governed_interpreters
// (docs/adr/0043).
const ReasonInterpreterNotGoverned = "interpreter_not_governed"

// actionPolicy is the list of rules allowing actions; deny by default.
type actionPolicy []rule

type rule struct {
	name         string   // "" for an unnamed rule
	children     []string // nil: descendants under any rule; else only under these (docs/adr/0031)
	subject      string   // exact SPIFFE ID, or prefix when prefix is set
	prefix       bool
	kind         string
	any          bool
	executables  map[string]bool // hex sha256
	interpreters map[string]bool // hex sha256 of allowed script interpreters
	governed     map[string]bool // of those, the ones allowed in a governed cgroup
	argvExact    []string
	argvPrefix   []string
	envNames     map[string]bool           // nil: any name not refused by default
	envValues    map[string]*regexp.Regexp // full-match patterns by name
	when         *actionCondition
	approval     *approvalRule // nil: no approval needed
}

func (c *Config) actionPolicy() (actionPolicy, error) {
	var p actionPolicy
	for i, rc := range c.Writ.Rules {
		r, err := compileRule(rc)
		// A config without a trust domain never passes check (which
		// names it first); only tests compile such rules alone.
		if err == nil && c.TrustDomain != "" {
			if id, _ := spiffeid.FromString(r.subject); !c.knownTrustDomain(id.TrustDomain()) {
				err = fmt.Errorf("subject %s: trust domain %s is neither this broker's nor federated", rc.Subject, id.TrustDomain().Name())
			}
		}
		if err == nil && rc.Approval != nil {
			r.approval, err = compileApproval(rc.Approval, c.TrustDomain)
		}
		if err != nil {
			return nil, fmt.Errorf("writ.rules[%d]: %w", i, err)
		}
		p = append(p, r)
	}
	if err := p.checkNames(); err != nil {
		return nil, err
	}
	return p, nil
}

// checkNames refuses a name given to two rules, and children naming no
// rule.
func (p actionPolicy) checkNames() error {
	names := map[string]int{}
	for i, r := range p {
		if r.name == "" {
			continue
		}
		if j, dup := names[r.name]; dup {
			return fmt.Errorf("writ.rules[%d]: name %q is also the name of writ.rules[%d]", i, r.name, j)
		}
		names[r.name] = i
	}
	for i, r := range p {
		for _, c := range r.children {
			if _, ok := names[c]; !ok {
				return fmt.Errorf("writ.rules[%d]: children: no rule is named %q", i, c)
			}
		}
	}
	return nil
}

// narrow is the scope of a writ issued under r whose parent's scope is
// parent: nil (any rule) narrowed by r's children (nil: any).
func narrow(parent []string, r *rule) []string {
	switch {
	case r.children == nil:
		return parent
	case parent == nil:
		return slices.Clone(r.children)
	}
	out := []string{}
	for _, c := range r.children {
		if slices.Contains(parent, c) {
			out = append(out, c)
		}
	}
	return out
}

func compileRule(rc RuleConfig) (rule, error) {
	r := rule{name: rc.Name, kind: rc.Kind, executables: map[string]bool{}, interpreters: map[string]bool{}, governed: map[string]bool{}}
	if rc.Children != nil {
		r.children = append([]string{}, (*rc.Children)...)
	}
	subject, prefix := strings.CutSuffix(rc.Subject, "/*")
	if _, err := spiffeid.FromString(subject); err != nil {
		return r, fmt.Errorf("subject: %w", err)
	}
	r.subject, r.prefix = subject, prefix
	switch r.kind {
	case artifact.KindExec:
	case artifact.KindHTTP, artifact.KindMCP:
		return r, r.compileRequest(rc)
	default:
		return r, fmt.Errorf("kind %q: not exec, http or mcp", rc.Kind)
	}
	if len(rc.Executables) == 0 {
		return r, fmt.Errorf("no executables: name digests or [any]")
	}
	for _, e := range rc.Executables {
		if e == "any" {
			r.any = true
			continue
		}
		d, err := attest.ParseDigest(e)
		if err != nil {
			return r, fmt.Errorf("executables: %w", err)
		}
		r.executables[fmt.Sprintf("%x", d)] = true
	}
	for _, e := range rc.Interpreters {
		d, err := attest.ParseDigest(e)
		if err != nil {
			return r, fmt.Errorf("interpreters: %w", err)
		}
		r.interpreters[fmt.Sprintf("%x", d)] = true
	}
	for _, e := range rc.GovernedInterpreters {
		d, err := attest.ParseDigest(e)
		if err != nil {
			return r, fmt.Errorf("governed_interpreters: %w", err)
		}
		if !r.interpreters[fmt.Sprintf("%x", d)] {
			return r, fmt.Errorf("governed_interpreters: %s is not in interpreters", e)
		}
		r.governed[fmt.Sprintf("%x", d)] = true
	}
	if err := r.compileArgv(rc.Argv); err != nil {
		return r, err
	}
	if err := r.compileEnv(rc.Env); err != nil {
		return r, err
	}
	if rc.When != "" {
		cond, err := compileActionCondition(rc.When)
		if err != nil {
			return r, fmt.Errorf("when: %w", err)
		}
		r.when = cond
	}
	return r, nil
}

// compileRequest compiles a rule of kind http or mcp: its when condition
// is what constrains the request, so it is required (a rule allowing any
// request of its kind says when: "true"); the exec fields are refused.
func (r *rule) compileRequest(rc RuleConfig) error {
	if len(rc.Executables) > 0 || len(rc.Interpreters) > 0 || len(rc.GovernedInterpreters) > 0 || rc.Argv != nil || rc.Env != nil {
		return fmt.Errorf("kind %s: executables, interpreters, governed_interpreters, argv and env are for kind exec", r.kind)
	}
	if rc.When == "" {
		return fmt.Errorf("kind %s: no when condition: state one (\"true\" allows any %s action)", r.kind, r.kind)
	}
	cond, err := compileActionCondition(rc.When)
	if err != nil {
		return fmt.Errorf("when: %w", err)
	}
	r.when = cond
	return nil
}

func (r *rule) compileArgv(a *ArgvConfig) error {
	if a == nil {
		return nil
	}
	switch {
	case a.Exact != nil && a.Prefix != nil:
		return fmt.Errorf("argv: exact and prefix exclude each other")
	case a.Exact == nil && a.Prefix == nil:
		return fmt.Errorf("argv: name exact or prefix")
	case a.Exact != nil && len(a.Exact) == 0:
		return fmt.Errorf("argv: exact is empty; argv holds argv[0] at least")
	}
	r.argvExact, r.argvPrefix = a.Exact, a.Prefix
	return nil
}

func (r *rule) compileEnv(e *EnvConfig) error {
	if e == nil {
		return nil
	}
	if e.Names != nil {
		r.envNames = map[string]bool{}
		for _, n := range e.Names {
			if n == "" || strings.ContainsAny(n, "=\x00*") {
				return fmt.Errorf("env.names: %q is not a variable name", n)
			}
			r.envNames[n] = true
		}
	}
	r.envValues = map[string]*regexp.Regexp{}
	for name, pattern := range e.Values {
		if r.envNames != nil && !r.envNames[name] {
			return fmt.Errorf("env.values: %s is not in env.names", name)
		}
		re, err := regexp.Compile(`\A(?:` + pattern + `)\z`)
		if err != nil {
			return fmt.Errorf("env.values[%s]: %w", name, err)
		}
		r.envValues[name] = re
	}
	return nil
}

// allows reports whether a rule lets subject perform act.
func (p actionPolicy) allows(subject spiffeid.ID, act *artifact.Action) bool {
	return p.check(subject, act) == nil
}

// check returns nil when a rule lets subject perform act, or the refusal
// (checkWithin with every rule).
func (p actionPolicy) check(subject spiffeid.ID, act *artifact.Action) *actionRefusal {
	_, r := p.checkWithin(subject, act, false, nil)
	return r
}

// actionRefusal is why no rule allows an action.
type actionRefusal struct {
	reason string
	detail string
}

func (r *actionRefusal) Error() string { return r.reason + ": " + r.detail }

// checkWithin returns the first rule that lets subject perform act and
// that within accepts (nil: any), or the refusal; governed says the
// process asking is in a governed cgroup. In order:
//  1. every loader or interpreter variable (artifact.DangerousEnv) in the
//     action's environment is named in env.names of a rule for this
//     subject and kind, or env_dangerous;
//  2. a rule for this subject and kind allows it, or action_denied
//     (the detail says what the closest rule refused). A rule allows an
//     action when, in order: the executable's digest is listed (or any);
//     for a script, the interpreter's digest is in interpreters and, when
//     governed, in governed_interpreters (else interpreter_not_governed
//     when no rule allows it); argv is
//     the exact list, or starts with the prefix; every variable is in
//     env.names (when given) and is not a loader or interpreter variable
//     it does not name; every variable with a pattern in env.values
//     matches it in full; the when condition holds.
//
// For kinds http and mcp only step 2 applies, and a rule allows an action
// when its when condition holds (actionCELEnv lists what it sees).
func (p actionPolicy) checkWithin(subject spiffeid.ID, act *artifact.Action, governed bool, within func(*rule) bool) (*rule, *actionRefusal) {
	var candidates []*rule
	for i := range p {
		if r := &p[i]; r.kind == act.Kind && r.matchesSubject(subject.String()) {
			candidates = append(candidates, r)
		}
	}
	if act.Kind != artifact.KindExec {
		return checkRequest(subject, act, candidates, within)
	}
	names := slices.Sorted(maps.Keys(act.Env))
	for _, name := range names {
		if artifact.DangerousEnv(name) && !slices.ContainsFunc(candidates, func(r *rule) bool { return r.envNames[name] }) {
			return nil, &actionRefusal{ReasonEnvDangerous, fmt.Sprintf("%s is a loader or interpreter variable and no rule for %s names it", name, subject)}
		}
	}
	why, reason := "", ReasonActionDenied
	for _, r := range candidates {
		if !r.any && !r.executables[act.SHA256] || within != nil && !within(r) {
			continue
		}
		if why, reason = r.refuses(act, names, governed); why == "" {
			return r, nil
		}
	}
	if why == "" {
		return nil, &actionRefusal{ReasonActionDenied, fmt.Sprintf("no rule allows %s to run %s (sha256 %s)", subject, act.Path, act.SHA256)}
	}
	return nil, &actionRefusal{reason, fmt.Sprintf("a rule allows %s to run %s but %s", subject, act.Path, why)}
}

func (r rule) matchesSubject(id string) bool {
	if r.prefix {
		return strings.HasPrefix(id, r.subject+"/")
	}
	return id == r.subject
}

// refuses says why r refuses act, whose executable it allows ("" when it
// allows it), with the reason code; names are act's environment names,
// sorted; governed: the process asking is in a governed cgroup.
func (r rule) refuses(act *artifact.Action, names []string, governed bool) (string, string) {
	if act.Interpreter != "" && !r.interpreters[act.InterpreterSHA256] {
		return fmt.Sprintf("not with the interpreter %s (sha256 %s)", act.Interpreter, act.InterpreterSHA256), ReasonActionDenied
	}
	if governed && act.Interpreter != "" && !r.governed[act.InterpreterSHA256] {
		return fmt.Sprintf("not in a governed cgroup with the interpreter %s (sha256 %s): governed_interpreters does not list it",
			act.Interpreter, act.InterpreterSHA256), ReasonInterpreterNotGoverned
	}
	why := r.refusesRest(act, names)
	return why, ReasonActionDenied
}

// refusesRest is refuses past the interpreter: argv, environment, when.
func (r rule) refusesRest(act *artifact.Action, names []string) string {
	if r.argvExact != nil && !slices.Equal(act.Argv, r.argvExact) {
		return "not with this argv"
	}
	if r.argvPrefix != nil && (len(act.Argv) < len(r.argvPrefix) || !slices.Equal(act.Argv[:len(r.argvPrefix)], r.argvPrefix)) {
		return "not with this argv"
	}
	for _, name := range names {
		if (r.envNames != nil || artifact.DangerousEnv(name)) && !r.envNames[name] {
			return "not with the environment variable " + name
		}
		if re := r.envValues[name]; re != nil && !re.MatchString(act.Env[name]) {
			return "not with this value of " + name
		}
	}
	if r.when != nil {
		if err := r.when.eval(act); err != nil {
			return err.Error()
		}
	}
	return ""
}

// checkRequest is check for kinds http and mcp: the first candidate rule
// whose when condition holds allows act.
func checkRequest(subject spiffeid.ID, act *artifact.Action, candidates []*rule, within func(*rule) bool) (*rule, *actionRefusal) {
	in, err := celInput(act)
	if err != nil {
		return nil, &actionRefusal{ReasonActionInvalid, err.Error()}
	}
	why := ""
	for _, r := range candidates {
		if within != nil && !within(r) {
			continue
		}
		err := r.when.evalInput(in)
		if err == nil {
			return r, nil
		}
		why = err.Error()
	}
	if why == "" {
		return nil, &actionRefusal{ReasonActionDenied, fmt.Sprintf("no %s rule for %s", act.Kind, subject)}
	}
	return nil, &actionRefusal{ReasonActionDenied, fmt.Sprintf("no rule allows %s to %s: the last one tried says %s", subject, act.Display(), why)}
}

// mayAllowTool reports whether some mcp rule for subject could allow a
// tools/call of tool on server: its when condition may hold with the
// arguments unknown (actionCondition.mayHold). Advisory, for listing
// tools: a call is decided by check, over its arguments.
func (p actionPolicy) mayAllowTool(subject spiffeid.ID, server, tool string) bool {
	in := map[string]any{"kind": artifact.KindMCP, "server": server, "method": "tools/call", "tool": tool,
		"arguments": map[string]any{}, "arguments_sha256": ""}
	for _, r := range p {
		if r.kind == artifact.KindMCP && r.matchesSubject(subject.String()) && r.when.mayHold(in, "arguments", "arguments_sha256") {
			return true
		}
	}
	return false
}
