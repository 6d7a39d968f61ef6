package policy

import (
	"bytes"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"os"
	"regexp"
	"slices"
	"strconv"
	"strings"

	"gopkg.in/yaml.v3"
)

// MaxFileSize is the largest policy file Load reads.
const MaxFileSize = 16 << 20

// Secure boot settings.
const (
	SecureBootOptional = "optional"
	SecureBootRequired = "required"
)

// Policy is a parsed and compiled appraisal policy. Only Parse and Load make
// a usable one (Evaluate denies everything under any other). It is safe for
// concurrent use; its exported fields are for reading.
type Policy struct {
	ID              string
	Version         int
	RequireEventLog bool
	SecureBoot      string // SecureBootRequired or SecureBootOptional

	pcrs       map[int]digestSet
	sel        []int                // the keys of pcrs, ascending
	components map[string]digestSet // nil: not checked
	runtime    map[string]digestSet // nil: not checked
	conditions []*condition
}

// digestSet is a list of allowed sha256 digests, in file order, as lower-case
// hex.
type digestSet struct {
	list []string
	set  map[string]struct{}
}

func (d digestSet) has(hexDigest string) bool {
	_, ok := d.set[hexDigest]
	return ok
}

// file is the YAML form of a policy.
type file struct {
	ID              string              `yaml:"id"`
	Version         int                 `yaml:"version"`
	PCRs            map[int][]string    `yaml:"pcrs"`
	RequireEventLog bool                `yaml:"require_event_log"`
	SecureBoot      string              `yaml:"secure_boot"`
	BootComponents  map[string][]string `yaml:"boot_components"`
	RuntimeEvents   map[string][]string `yaml:"runtime_events"`
	Conditions      []conditionFile     `yaml:"conditions"`
}

type conditionFile struct {
	Name string `yaml:"name"`
	Expr string `yaml:"expr"`
}

var (
	idPattern   = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$`)
	namePattern = regexp.MustCompile(`^[A-Za-z0-9_-]{1,64}$`)
)

// Load reads and parses the policy file at path.
func Load(path string) (*Policy, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, fmt.Errorf("policy: %w", err)
	}
	defer f.Close()
	raw, err := io.ReadAll(io.LimitReader(f, MaxFileSize+1))
	if err != nil {
		return nil, fmt.Errorf("policy: %s: %w", path, err)
	}
	if len(raw) > MaxFileSize {
		return nil, fmt.Errorf("policy: %s: larger than %d bytes", path, MaxFileSize)
	}
	p, err := Parse(raw)
	if err != nil {
		return nil, fmt.Errorf("%w (in %s)", err, path)
	}
	return p, nil
}

// Parse parses and compiles a policy file. It is strict: unknown fields,
// malformed digests, PCRs out of range or resettable at locality 0 (16, 23),
// an empty PCR selection, empty lists of allowed values, and CEL conditions
// that do not compile to a bool are all refused.
func Parse(yamlBytes []byte) (*Policy, error) {
	dec := yaml.NewDecoder(bytes.NewReader(yamlBytes))
	dec.KnownFields(true)
	var f file
	if err := dec.Decode(&f); err != nil {
		if errors.Is(err, io.EOF) {
			return nil, fmt.Errorf("policy: empty policy file")
		}
		return nil, fmt.Errorf("policy: %w", err)
	}
	var extra yaml.Node
	if err := dec.Decode(&extra); !errors.Is(err, io.EOF) {
		return nil, fmt.Errorf("policy: a policy file holds exactly one YAML document")
	}
	p, err := f.compile()
	if err != nil {
		return nil, fmt.Errorf("policy: %w", err)
	}
	return p, nil
}

func (f *file) compile() (*Policy, error) {
	if !idPattern.MatchString(f.ID) {
		return nil, fmt.Errorf("id: %q: want 1-128 letters, digits, '.', '_' or '-', starting with a letter or digit", f.ID)
	}
	if f.Version < 1 {
		return nil, fmt.Errorf("version: want an integer >= 1")
	}
	p := &Policy{ID: f.ID, Version: f.Version, RequireEventLog: f.RequireEventLog, pcrs: map[int]digestSet{}}

	switch f.SecureBoot {
	case "", SecureBootOptional:
		p.SecureBoot = SecureBootOptional
	case SecureBootRequired:
		p.SecureBoot = SecureBootRequired
	default:
		return nil, fmt.Errorf("secure_boot: %q: want required or optional", f.SecureBoot)
	}

	if len(f.PCRs) == 0 {
		return nil, fmt.Errorf("pcrs: a policy must select at least one PCR: with none it would check nothing")
	}
	for pcr, values := range f.PCRs {
		if pcr < 0 || pcr > 23 {
			return nil, fmt.Errorf("pcrs: PCR %d out of range 0-23", pcr)
		}
		if pcr == 16 || pcr == 23 {
			return nil, fmt.Errorf("pcrs: PCR %d can be reset at locality 0 and proves nothing", pcr)
		}
		set, err := parseDigests(values)
		if err != nil {
			return nil, fmt.Errorf("pcrs: PCR %d: %w", pcr, err)
		}
		p.pcrs[pcr] = set
		p.sel = append(p.sel, pcr)
	}
	slices.Sort(p.sel)

	var err error
	if p.components, err = parseKinds("boot_components", f.BootComponents); err != nil {
		return nil, err
	}
	if p.runtime, err = parseKinds("runtime_events", f.RuntimeEvents); err != nil {
		return nil, err
	}

	seen := map[string]bool{}
	for i, c := range f.Conditions {
		if !namePattern.MatchString(c.Name) {
			return nil, fmt.Errorf("conditions[%d]: name %q: want 1-64 letters, digits, '_' or '-'", i, c.Name)
		}
		if seen[c.Name] {
			return nil, fmt.Errorf("conditions[%d]: name %q used twice", i, c.Name)
		}
		seen[c.Name] = true
		cond, err := compileCondition(c.Name, c.Expr)
		if err != nil {
			return nil, fmt.Errorf("conditions.%s: %w", c.Name, err)
		}
		p.conditions = append(p.conditions, cond)
	}
	return p, nil
}

// parseKinds parses a map of kind → allowed digests. An absent (or null)
// section is nil: not checked. A present but empty section is refused, as it
// would deny every component or event while looking like it allows some.
func parseKinds(section string, in map[string][]string) (map[string]digestSet, error) {
	if in == nil {
		return nil, nil
	}
	if len(in) == 0 {
		return nil, fmt.Errorf("%s: empty: leave the section out to not check it", section)
	}
	out := make(map[string]digestSet, len(in))
	for kind, values := range in {
		if !namePattern.MatchString(kind) {
			return nil, fmt.Errorf("%s: kind %q: want 1-64 letters, digits, '_' or '-'", section, kind)
		}
		set, err := parseDigests(values)
		if err != nil {
			return nil, fmt.Errorf("%s.%s: %w", section, kind, err)
		}
		out[kind] = set
	}
	return out, nil
}

func parseDigests(values []string) (digestSet, error) {
	if len(values) == 0 {
		return digestSet{}, fmt.Errorf("no allowed value: an empty list would deny every node")
	}
	d := digestSet{set: make(map[string]struct{}, len(values))}
	for _, v := range values {
		h, err := parseDigest(v)
		if err != nil {
			return digestSet{}, err
		}
		if _, dup := d.set[h]; dup {
			continue
		}
		d.set[h] = struct{}{}
		d.list = append(d.list, h)
	}
	return d, nil
}

// parseDigest parses "sha256:<64 hex>" (prefix optional, any case) into
// lower-case hex.
func parseDigest(s string) (string, error) {
	h := strings.TrimPrefix(strings.ToLower(s), "sha256:")
	if len(h) != 64 {
		return "", fmt.Errorf("%q is not a sha256 digest (want sha256: and 64 hex digits)", s)
	}
	if _, err := hex.DecodeString(h); err != nil {
		return "", fmt.Errorf("%q is not a sha256 digest (want sha256: and 64 hex digits)", s)
	}
	return h, nil
}

// normDigest puts a digest seen in claims in the form policies hold: lower
// case, no "sha256:" prefix. It does not validate: a malformed digest simply
// matches nothing.
func normDigest(s string) string {
	for i := 0; i < len(s); i++ {
		if c := s[i]; c >= 'A' && c <= 'Z' {
			s = strings.ToLower(s)
			break
		}
	}
	return strings.TrimPrefix(s, "sha256:")
}

// Ref names the policy as id@version, as results record it.
func (p *Policy) Ref() string { return p.ID + "@" + strconv.Itoa(p.Version) }

// Selection returns the selected PCRs in ascending order.
func (p *Policy) Selection() []int { return slices.Clone(p.sel) }

// PCRValues returns the allowed sha256 values of each selected PCR, for the
// quote and log checks of attest.Appraise. The result is a fresh copy.
func (p *Policy) PCRValues() map[int][][]byte {
	out := make(map[int][][]byte, len(p.pcrs))
	for pcr, set := range p.pcrs {
		vals := make([][]byte, 0, len(set.list))
		for _, h := range set.list {
			b, _ := hex.DecodeString(h) // validated by parseDigest
			vals = append(vals, b)
		}
		out[pcr] = vals
	}
	return out
}

// Rules lists the rules the policy checks, in the order Evaluate reports
// them: "pcrs.N" for each selected PCR, then "require_event_log",
// "secure_boot", "boot_components", "runtime_events" when set, then
// "conditions.NAME". Anything not listed is not checked.
func (p *Policy) Rules() []string {
	var out []string
	for _, pcr := range p.sel {
		out = append(out, rulePCRs+"."+strconv.Itoa(pcr))
	}
	if p.RequireEventLog {
		out = append(out, ruleEventLog)
	}
	if p.SecureBoot == SecureBootRequired {
		out = append(out, ruleSecureBoot)
	}
	if p.components != nil {
		out = append(out, ruleComponents)
	}
	if p.runtime != nil {
		out = append(out, ruleRuntime)
	}
	for _, c := range p.conditions {
		out = append(out, ruleConditions+"."+c.name)
	}
	return out
}
