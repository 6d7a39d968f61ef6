// Package broker is the writ broker: it enrolls nodes by their TPMs,
// appraises their evidence, and issues their SPIFFE identities.
package broker

import (
	"bytes"
	"crypto/x509"
	"encoding/hex"
	"fmt"
	neturl "net/url"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"gopkg.in/yaml.v3"

	"github.com/writ-dev/writ/attest"
	"github.com/writ-dev/writ/broker/store"
	"github.com/writ-dev/writ/identity"
	"github.com/writ-dev/writ/policy"
)

// Config is the broker's configuration file (YAML).
type Config struct {
	TrustDomain  string `yaml:"trust_domain"`
	Listen       string `yaml:"listen"`        // gRPC API, TLS
	BundleListen string `yaml:"bundle_listen"` // HTTPS SPIFFE bundle endpoint
	// MetricsListen serves Prometheus metrics at /metrics, plain HTTP:
	// bind it to loopback or a private network. Empty: not served.
	MetricsListen string `yaml:"metrics_listen"`
	// OpsListen serves /healthz and /readyz (and /metrics when
	// MetricsListen is the same address), plain HTTP: bind it to loopback
	// or a private network. Empty: not served.
	OpsListen string `yaml:"ops_listen"`
	// OpsPprof serves Go's runtime profiles (net/http/pprof) at
	// /debug/pprof/ on the ops listener. Off by default.
	OpsPprof      bool          `yaml:"ops_pprof"`
	DataDir       string        `yaml:"data_dir"`
	SVIDTTL       time.Duration `yaml:"svid_ttl"`
	NonceTTL      time.Duration `yaml:"nonce_ttl"`
	EnrollmentTTL time.Duration `yaml:"enrollment_ttl"`
	EK            EKConfig      `yaml:"ek"`
	// Policy is the appraisal policy inline, or PolicyFile names a file
	// holding it (package policy documents the format).
	Policy      yaml.Node    `yaml:"policy"`
	PolicyFile  string       `yaml:"policy_file"`
	Writ        WritConfig   `yaml:"writ"`
	Audit       AuditConfig  `yaml:"audit"`
	Attestation AttestConfig `yaml:"attestation"`
	Events      EventsConfig `yaml:"events"`
	// Limits bound request sizes, pending state and the rate of
	// unauthenticated calls, and say how often old state is pruned.
	Limits LimitsConfig `yaml:"limits"`
	// Gateways may ask for writs on behalf of their callers and list the
	// tools a caller may call (docs/adr/0028).
	Gateways []GatewayConfig `yaml:"gateways"`
	// SPIRE is a SPIRE server run side by side (docs/adr/0037): the
	// agents of nodes out of standing are banned there, and SPIRE may mint
	// the SVIDs. Absent: no SPIRE.
	SPIRE *SPIREConfig `yaml:"spire"`
	// Federation lists the other trust domains whose workloads this
	// broker trusts (docs/adr/0033).
	Federation []FederationConfig `yaml:"federation"`
	// CA is the signing CA (docs/adr/0035). Absent: a self-signed root in
	// DATA_DIR, created when absent and rotated at half its life.
	CA CAConfig `yaml:"ca"`
	// Store is the broker's database (docs/adr/0038). Absent: SQLite in
	// DATA_DIR/broker.db.
	Store StoreConfig `yaml:"store"`
	// Replicas: how brokers on one database share their public keys
	// (docs/adr/0041).
	Replicas ReplicasConfig `yaml:"replicas"`
}

// StoreConfig is the database the broker keeps its state in.
type StoreConfig struct {
	// Driver is sqlite (the default) or postgres.
	Driver string `yaml:"driver"`
	// DSN is, for postgres, the connection string (postgres://… or
	// key=value pairs; the database must exist). It may carry a password:
	// it is never logged (String redacts it); prefer ${VAR} with
	// --expand-env, or a password file (PGPASSFILE). For sqlite: the
	// database file, default DATA_DIR/broker.db.
	DSN string `yaml:"dsn"`
}

// String names the store without its password.
func (s StoreConfig) String() string {
	if s.Driver == "postgres" {
		return "postgres " + store.Redact(s.DSN)
	}
	return "sqlite " + s.DSN
}

func (s *StoreConfig) check() error {
	switch s.Driver {
	case "sqlite":
	case "postgres":
		if s.DSN == "" {
			return fmt.Errorf("store.dsn: the postgres driver needs a DSN")
		}
	default:
		return fmt.Errorf("store.driver: %q: want sqlite or postgres", s.Driver)
	}
	return nil
}

// CAConfig is where the broker's signing CA comes from: itself (the
// default: a self-signed root), an operator's certificate (Cert, Key,
// Chain, Roots; never rotated by the broker), or an upstream that signs
// the broker's intermediates (Upstream).
type CAConfig struct {
	// Cert is an operator's CA certificate (PEM), a CA for the trust
	// domain: URI SAN spiffe://<trust-domain> or none.
	Cert string `yaml:"cert"`
	// Key is Cert's key, PKCS#8 PEM, mode 0600.
	Key string `yaml:"key"`
	// Chain holds the intermediates between Cert and the root (PEM);
	// optional.
	Chain string `yaml:"chain"`
	// Roots are the trust anchors (PEM) Cert chains to; the bundle
	// publishes them.
	Roots string `yaml:"roots"`
	// KeyStore is where the keys of the CAs the broker makes live: "file"
	// (the default: PKCS#8 PEM in DATA_DIR, mode 0600) or "tpm" (made in
	// the TPM named by TPM, never leaving it; DATA_DIR holds their
	// TPM-wrapped blobs). An operator's CA (Cert) takes a key file.
	KeyStore string `yaml:"key_store"`
	// TPM is the broker host's TPM for a tpm key store: a device path or
	// swtpm://host:port. A swtpm serves one connection: it cannot be the
	// writ signer's TPM too.
	TPM string `yaml:"tpm"`
	// Lifetime of a root the broker creates (default 10 years) or of an
	// intermediate it asks the upstream for (default 24h).
	Lifetime time.Duration `yaml:"lifetime"`
	// RotateAt is the fraction of the CA's lifetime after which its
	// successor is prepared and published; it signs from halfway between
	// then and the end. Default 0.5.
	RotateAt float64 `yaml:"rotate_at"`
	// Upstream signs the broker's intermediates.
	Upstream *UpstreamConfig `yaml:"upstream"`
}

// UpstreamConfig is a step-ca that signs the broker's intermediate CA
// certificates through a JWK provisioner whose template makes CA
// certificates for the trust domain (deploy/step-ca).
type UpstreamConfig struct {
	// StepCA is the step-ca's URL, https://host:port.
	StepCA string `yaml:"step_ca"`
	// Root is the step-ca's root certificate (PEM): what TLS to it and
	// every intermediate it signs must chain to, and what the bundle
	// publishes. Never fetched from the step-ca itself.
	Root string `yaml:"root"`
	// Provisioner is the provisioner's name: a JWK provisioner (give
	// ProvisionerKey) or an X5C provisioner (give ProvisionerCert and
	// ProvisionerCertKey).
	Provisioner string `yaml:"provisioner"`
	// ProvisionerKey is a JWK provisioner's private key as a JWK (JSON,
	// with its kid), mode 0600: `step crypto jwe decrypt` of the
	// provisioner's encryptedKey gives it.
	ProvisionerKey string `yaml:"provisioner_key"`
	// ProvisionerCert is, for an X5C provisioner, a certificate chain
	// (PEM, leaf first) to one of its roots, with digitalSignature;
	// ProvisionerCertKey the leaf's key, PKCS#8 PEM, mode 0600.
	ProvisionerCert    string `yaml:"provisioner_cert"`
	ProvisionerCertKey string `yaml:"provisioner_cert_key"`
}

// GatewayConfig is a gateway the broker trusts to relay its callers'
// X.509-SVID chains as it received them in its TLS handshakes.
type GatewayConfig struct {
	// ID is the gateway's SPIFFE ID (of this trust domain), as its SVID names it.
	ID string `yaml:"id"`
	// Kinds are the action kinds it may ask writs for: mcp, http.
	Kinds []string `yaml:"kinds"`
}

// AttestConfig is continuous attestation.
type AttestConfig struct {
	// Interval is how often agents re-attest (they are told nothing: set
	// the agents' --interval to match). Default 30s.
	Interval time.Duration `yaml:"interval"`
	// StaleAfter: a node whose latest pass is older is marked stale, its
	// writs refused and subscribers told. Default 3 intervals.
	StaleAfter time.Duration `yaml:"stale_after"`
}

// EventsConfig says where node events go besides Subscribe streams.
type EventsConfig struct {
	// Webhooks receive each event as a POST whose body is a JWS signed by
	// the writ key (typ writ-event+jwt), in order, retried with backoff.
	// Each is a URL, or {url, audience}.
	Webhooks []WebhookConfig `yaml:"webhooks"`
}

// WebhookConfig is one webhook receiver.
type WebhookConfig struct {
	URL string `yaml:"url"`
	// Audience is the aud of the events it gets; default: the URL.
	Audience string `yaml:"audience"`
}

// UnmarshalYAML takes a URL alone, or a mapping.
func (w *WebhookConfig) UnmarshalYAML(n *yaml.Node) error {
	if n.Kind == yaml.ScalarNode {
		return n.Decode(&w.URL)
	}
	if n.Kind != yaml.MappingNode {
		return fmt.Errorf("line %d: a webhook is a URL or {url, audience}", n.Line)
	}
	for i := 0; i+1 < len(n.Content); i += 2 {
		if k := n.Content[i].Value; k != "url" && k != "audience" {
			return fmt.Errorf("line %d: webhook: unknown field %q", n.Content[i].Line, k)
		}
	}
	type plain WebhookConfig
	return n.Decode((*plain)(w))
}

// AuditConfig is the broker's own audit log.
type AuditConfig struct {
	// Dir holds the log (default DATA_DIR/audit).
	Dir string `yaml:"dir"`
	// Signer of checkpoints. Required, and today only "file": a software
	// P-256 key in DATA_DIR/audit.key (mode 0600), which every checkpoint
	// names (key: file) and writ audit verify reports. Say so explicitly.
	Signer string `yaml:"signer"`
}

// WritConfig governs writ issuance.
type WritConfig struct {
	// Signer is where the writ signing key lives: "file" (the default) or
	// "tpm" (created in the TPM named by TPM, never leaving it).
	Signer string `yaml:"signer"`
	// Key is the writ signing key file: PKCS#8 PEM (mode 0600) for a file
	// signer, the TPM-wrapped blob for a tpm signer; created when absent.
	// Default DATA_DIR/writ.key or DATA_DIR/writ.key.blob. Distinct from the
	// CA key.
	Key string `yaml:"key"`
	// TPM is the broker host's TPM for a tpm signer: a device path or
	// swtpm://host:port. The broker holds it while it runs.
	TPM string `yaml:"tpm"`
	// TTL is a writ's lifetime; at most 5m.
	TTL time.Duration `yaml:"ttl"`
	// MaxAttestationAge is how old the node's latest passing attestation
	// may be when a writ is issued.
	MaxAttestationAge time.Duration `yaml:"max_attestation_age"`
	// Rules allow actions; anything no rule allows is denied.
	Rules []RuleConfig `yaml:"rules"`
	// MaxApprovalWait caps how long a writ request may wait at the broker
	// for a person's approval (WritRequest.approval_wait_seconds).
	// Default 2m, at most 10m.
	MaxApprovalWait time.Duration `yaml:"max_approval_wait"`
	// MaxDepth is how deep a lineage may go: a writ whose chain of
	// parents is longer is refused (lineage_too_deep). Default 8.
	MaxDepth int `yaml:"max_depth"`
	// LineageRetention is how long after its expiry an issued writ is
	// kept: until then a governed process that outlived its writ may
	// still be named its parent by the node agent (docs/adr/0031), and a
	// revoked one stays refused. Default 1h, at most 7 days.
	LineageRetention time.Duration `yaml:"lineage_retention"`
}

// RuleConfig allows subjects to run executables.
type RuleConfig struct {
	// Subject is a SPIFFE ID, or a prefix ending in "/*" such as
	// spiffe://example.org/node/*.
	Subject string `yaml:"subject"`
	// Kind of action: exec, http or mcp. Executables, Interpreters, Argv
	// and Env are for exec only; a rule of kind http or mcp is its When
	// condition, which it must have.
	Kind string `yaml:"kind"`
	// Executables are the allowed sha256 digests of executables ("sha256:…"),
	// or ["any"]. For a #! script, the script's digest.
	Executables []string `yaml:"executables"`
	// Interpreters are the allowed sha256 digests of the interpreters of
	// #! scripts; a rule without them allows no script.
	Interpreters []string `yaml:"interpreters"`
	// GovernedInterpreters are those of Interpreters a script may name
	// when the process asking is in a governed cgroup (the node agent
	// says so, docs/adr/0043); absent: no script runs governed under
	// this rule (interpreter_not_governed).
	GovernedInterpreters []string `yaml:"governed_interpreters"`
	// Argv constrains the whole argv, argv[0] included; absent: any argv.
	Argv *ArgvConfig `yaml:"argv"`
	// Env constrains the variables bound into the action. Loader and
	// interpreter variables (LD_*, BASH_ENV, PYTHON*, …: see
	// artifact.DangerousEnv) are refused unless Env.Names names them.
	Env *EnvConfig `yaml:"env"`
	// When is a CEL condition that must hold, over action.kind and, for
	// exec, action.argv, action.env, action.path, action.sha256,
	// action.interpreter, action.interpreter_sha256 and action.cwd; for
	// http, action.method, .scheme, .authority, .path, .query, .headers
	// and .body_sha256; for mcp, action.server, .method, .tool,
	// .arguments (the parsed tool arguments) and .arguments_sha256.
	When string `yaml:"when"`
	// Name names the rule, for Children; unique. Optional.
	Name string `yaml:"name"`
	// Children are the names of the rules under which the descendants of
	// a writ issued under this rule may be issued: absent, any rule; [],
	// no descendants. A writ's scope is its parent's scope narrowed by its
	// rule's children (docs/adr/0031).
	Children *[]string `yaml:"children"`
	// Audiences are where writs this rule allows may be enforced besides
	// the caller's own node (the default): SPIFFE IDs, or prefixes ending
	// in "/*" such as spiffe://example.org/gateway/*.
	Audiences []string `yaml:"audiences"`
	// Approval, when present, makes every writ this rule allows wait for
	// a person's approval of exactly that action (writ approve ID).
	// Absent: no approval needed.
	Approval *ApprovalConfig `yaml:"approval"`
}

// ApprovalConfig is who may approve the actions a rule allows, and for
// how long an approval stands.
type ApprovalConfig struct {
	// Approvers are SPIFFE IDs of the trust domain, or prefixes ending in
	// "/*" such as spiffe://example.org/person/*; never a node's (under
	// /node/) or the broker's. Default: the broker's admin
	// (spiffe://<trust-domain>/admin).
	Approvers []string `yaml:"approvers"`
	// TTL is how long an approval may wait to be decided and, approved,
	// to be used: default 10m, at most 24h.
	TTL time.Duration `yaml:"ttl"`
}

// ArgvConfig constrains argv: exactly one of Exact and Prefix.
type ArgvConfig struct {
	Exact  []string `yaml:"exact"`  // argv must be this list
	Prefix []string `yaml:"prefix"` // argv must start with this list
}

// EnvConfig constrains the environment bound into an action.
type EnvConfig struct {
	// Names are the variables allowed; absent: any name but a loader or
	// interpreter variable. Naming such a variable here is the only way to
	// allow it.
	Names []string `yaml:"names"`
	// Values are RE2 patterns a variable's value must match in full.
	Values map[string]string `yaml:"values"`
}

// EKConfig says which endorsement keys are trusted.
type EKConfig struct {
	Roots         []string `yaml:"roots"`         // PEM files of manufacturer roots
	Intermediates []string `yaml:"intermediates"` // PEM files of manufacturer intermediates
	AllowedKeys   []string `yaml:"allowed_keys"`  // hex sha256 of EK public keys (PKIX DER)
	RequireBoth   bool     `yaml:"require_both"`  // trusted certificate and listed key
}

// Defaults for settings a configuration leaves out.
const (
	DefaultListen         = "127.0.0.1:8443"
	DefaultBundleListen   = "127.0.0.1:8444"
	DefaultAttestInterval = 30 * time.Second
	DefaultSVIDIntervals  = 4 // SVID lifetime, in attestation intervals
	DefaultNonceTTL       = 2 * time.Minute
	DefaultEnrollmentTTL  = 2 * time.Minute
	DefaultWritTTL        = time.Minute
	DefaultMaxAttestAge   = 10 * time.Minute
	DefaultMaxDepth       = 8
	DefaultLineageRetain  = time.Hour
	maxLineageRetain      = 7 * 24 * time.Hour
	WritKeyFile           = "writ.key"
)

// LoadConfig reads and checks a configuration file. Relative paths in it
// are taken from the file's directory. With expandEnv, $VAR and ${VAR} in
// the file are replaced by environment variables first.
func LoadConfig(path string, expandEnv bool) (*Config, error) {
	raw, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("broker: %w", err)
	}
	if expandEnv {
		raw = []byte(os.ExpandEnv(string(raw)))
	}
	dec := yaml.NewDecoder(bytes.NewReader(raw))
	dec.KnownFields(true)
	var c Config
	if err := dec.Decode(&c); err != nil {
		return nil, fmt.Errorf("broker: %s: %w", path, err)
	}
	c.resolve(filepath.Dir(path))
	if err := c.check(); err != nil {
		return nil, fmt.Errorf("broker: %s: %w", path, err)
	}
	return &c, nil
}

func (c *Config) resolve(base string) {
	abs := func(p string) string {
		if p == "" || filepath.IsAbs(p) {
			return p
		}
		return filepath.Join(base, p)
	}
	c.DataDir = abs(c.DataDir)
	c.PolicyFile = abs(c.PolicyFile)
	c.Writ.Key = abs(c.Writ.Key)
	c.Audit.Dir = abs(c.Audit.Dir)
	if c.Store.Driver == "" || c.Store.Driver == "sqlite" {
		c.Store.DSN = abs(c.Store.DSN)
	}
	c.SPIRE.resolve(abs)
	c.CA.Cert, c.CA.Key, c.CA.Chain, c.CA.Roots = abs(c.CA.Cert), abs(c.CA.Key), abs(c.CA.Chain), abs(c.CA.Roots)
	if u := c.CA.Upstream; u != nil {
		u.Root, u.ProvisionerKey = abs(u.Root), abs(u.ProvisionerKey)
		u.ProvisionerCert, u.ProvisionerCertKey = abs(u.ProvisionerCert), abs(u.ProvisionerCertKey)
	}
	for i := range c.EK.Roots {
		c.EK.Roots[i] = abs(c.EK.Roots[i])
	}
	for i := range c.EK.Intermediates {
		c.EK.Intermediates[i] = abs(c.EK.Intermediates[i])
	}
	for i := range c.Federation {
		c.Federation[i].BootstrapBundle = abs(c.Federation[i].BootstrapBundle)
		c.Federation[i].WebPKIRoots = abs(c.Federation[i].WebPKIRoots)
	}
}

func (c *Config) defaults() {
	if c.Listen == "" {
		c.Listen = DefaultListen
	}
	if c.BundleListen == "" {
		c.BundleListen = DefaultBundleListen
	}
	if c.Attestation.Interval == 0 {
		c.Attestation.Interval = DefaultAttestInterval
	}
	if c.Attestation.StaleAfter == 0 {
		c.Attestation.StaleAfter = 3 * c.Attestation.Interval
	}
	if c.SVIDTTL == 0 {
		// A small multiple of the interval: an SVID outlives its node's
		// good standing by at most that.
		c.SVIDTTL = DefaultSVIDIntervals * c.Attestation.Interval
	}
	if c.NonceTTL == 0 {
		c.NonceTTL = DefaultNonceTTL
	}
	if c.EnrollmentTTL == 0 {
		c.EnrollmentTTL = DefaultEnrollmentTTL
	}
	if c.Writ.Signer == "" {
		c.Writ.Signer = "file"
	}
	if c.Writ.Key == "" && c.DataDir != "" {
		c.Writ.Key = filepath.Join(c.DataDir, WritKeyFile)
		if c.Writ.Signer == "tpm" {
			c.Writ.Key += ".blob"
		}
	}
	if c.Audit.Dir == "" && c.DataDir != "" {
		c.Audit.Dir = filepath.Join(c.DataDir, "audit")
	}
	if c.Writ.TTL == 0 {
		c.Writ.TTL = DefaultWritTTL
	}
	if c.Writ.MaxDepth == 0 {
		c.Writ.MaxDepth = DefaultMaxDepth
	}
	if c.Writ.LineageRetention == 0 {
		c.Writ.LineageRetention = DefaultLineageRetain
	}
	if c.Writ.MaxAttestationAge == 0 {
		c.Writ.MaxAttestationAge = DefaultMaxAttestAge
	}
	if c.Writ.MaxApprovalWait == 0 {
		c.Writ.MaxApprovalWait = DefaultMaxApprovalWait
	}
	c.Limits.defaults()
	c.Replicas.defaults()
	if c.Store.Driver == "" {
		c.Store.Driver = "sqlite"
	}
	if c.Store.Driver == "sqlite" && c.Store.DSN == "" && c.DataDir != "" {
		c.Store.DSN = filepath.Join(c.DataDir, DBFile)
	}
}

func (c *Config) check() error {
	c.defaults()
	if _, err := spiffeid.TrustDomainFromString(c.TrustDomain); err != nil {
		return fmt.Errorf("trust_domain: %w", err)
	}
	if c.DataDir == "" {
		return fmt.Errorf("data_dir is required")
	}
	if c.Attestation.Interval < time.Second || c.Attestation.StaleAfter < c.Attestation.Interval {
		return fmt.Errorf("attestation.interval must be at least 1s and stale_after at least one interval")
	}
	if c.SVIDTTL < c.Attestation.Interval || c.NonceTTL <= 0 || c.EnrollmentTTL <= 0 {
		return fmt.Errorf("svid_ttl must be at least one attestation interval, nonce_ttl and enrollment_ttl positive")
	}
	if len(c.EK.Roots) == 0 && len(c.EK.AllowedKeys) == 0 {
		return fmt.Errorf("ek: configure roots or allowed_keys: with neither, no node can enroll")
	}
	if c.Audit.Signer != "file" {
		return fmt.Errorf("audit.signer must be set; a broker without a TPM signs checkpoints with a file key only when configured so explicitly: signer: file")
	}
	switch {
	case c.Writ.Signer == "tpm" && c.Writ.TPM == "":
		return fmt.Errorf("writ.tpm: a tpm signer needs the TPM (a device path or swtpm://host:port)")
	case c.Writ.Signer != "file" && c.Writ.Signer != "tpm":
		return fmt.Errorf("writ.signer: %q: want file or tpm", c.Writ.Signer)
	}
	if c.Writ.TTL < time.Second || c.Writ.TTL > 5*time.Minute {
		return fmt.Errorf("writ.ttl must be between 1s and 5m")
	}
	if c.Writ.MaxAttestationAge <= 0 {
		return fmt.Errorf("writ.max_attestation_age must be positive")
	}
	if c.Writ.MaxApprovalWait < 0 || c.Writ.MaxApprovalWait > MaxApprovalWait {
		return fmt.Errorf("writ.max_approval_wait must be between 0 and %s", MaxApprovalWait)
	}
	if c.Writ.MaxDepth < 0 {
		return fmt.Errorf("writ.max_depth must be positive")
	}
	if c.Writ.LineageRetention < 0 || c.Writ.LineageRetention > maxLineageRetain {
		return fmt.Errorf("writ.lineage_retention must be between 0 (the default, %s) and %s", DefaultLineageRetain, maxLineageRetain)
	}
	if err := c.CA.check(); err != nil {
		return err
	}
	if err := c.Store.check(); err != nil {
		return err
	}
	if c.CA.KeyStore == "tpm" && c.Writ.Signer == "tpm" && c.CA.TPM == c.Writ.TPM && strings.HasPrefix(c.CA.TPM, "swtpm://") {
		return fmt.Errorf("ca.tpm: %s is the writ signer's swtpm, which serves one connection: give the CA another TPM", c.CA.TPM)
	}
	if err := c.Replicas.check(); err != nil {
		return err
	}
	if err := c.Events.check(); err != nil {
		return err
	}
	if err := c.checkGateways(); err != nil {
		return err
	}
	if err := c.SPIRE.check(c.TrustDomain); err != nil {
		return err
	}
	if err := c.checkFederation(); err != nil {
		return err
	}
	if err := c.Limits.check(); err != nil {
		return err
	}
	if _, err := c.ekPolicy(); err != nil {
		return err
	}
	actions, err := c.actionPolicy()
	if err != nil {
		return err
	}
	if _, err := c.audiencePolicy(actions); err != nil {
		return err
	}
	_, err = c.policy()
	return err
}

// knownTrustDomain reports whether a rule may name subjects of td: the
// broker's own trust domain or a federated one.
func (c *Config) knownTrustDomain(td spiffeid.TrustDomain) bool {
	if td.Name() == c.TrustDomain {
		return true
	}
	for _, f := range c.Federation {
		if f.TrustDomain == td.Name() {
			return true
		}
	}
	return false
}

func (c *Config) trustDomain() spiffeid.TrustDomain {
	return spiffeid.RequireTrustDomainFromString(c.TrustDomain)
}

func (c *Config) ekPolicy() (*attest.EKPolicy, error) {
	p := &attest.EKPolicy{AllowedKeys: map[string]bool{}, RequireBoth: c.EK.RequireBoth}
	load := func(paths []string) (*x509.CertPool, error) {
		if len(paths) == 0 {
			return nil, nil
		}
		pool := x509.NewCertPool()
		for _, path := range paths {
			certs, err := identity.LoadCerts(path)
			if err != nil {
				return nil, fmt.Errorf("ek: %w", err)
			}
			for _, cert := range certs {
				pool.AddCert(cert)
			}
		}
		return pool, nil
	}
	var err error
	if p.Roots, err = load(c.EK.Roots); err != nil {
		return nil, err
	}
	if p.Intermediates, err = load(c.EK.Intermediates); err != nil {
		return nil, err
	}
	for _, k := range c.EK.AllowedKeys {
		d, err := attest.ParseDigest(k)
		if err != nil {
			return nil, fmt.Errorf("ek: allowed_keys: %w", err)
		}
		p.AllowedKeys[hex.EncodeToString(d)] = true
	}
	return p, nil
}

// policy parses the appraisal policy: the inline policy section, or the
// file policy_file names (see package policy for the format).
func (c *Config) policy() (*policy.Policy, error) {
	var (
		p   *policy.Policy
		err error
	)
	switch {
	case c.PolicyFile != "" && !c.Policy.IsZero():
		return nil, fmt.Errorf("policy and policy_file: give one")
	case c.PolicyFile != "":
		p, err = policy.Load(c.PolicyFile)
	case c.Policy.IsZero():
		return nil, fmt.Errorf("no policy: give a policy section or policy_file (deny by default)")
	default:
		var raw []byte
		if raw, err = yaml.Marshal(&c.Policy); err == nil {
			p, err = policy.Parse(raw)
		}
	}
	if err != nil {
		return nil, err // already "policy: …"
	}
	return p, nil
}

// checkGateways checks each gateway names a SPIFFE ID of the trust domain,
// once, and only the kinds mcp and http.
func (c *Config) checkGateways() error {
	seen := map[string]bool{}
	for i, g := range c.Gateways {
		id, err := spiffeid.FromString(g.ID)
		if err != nil || id.String() != g.ID || id.TrustDomain().Name() != c.TrustDomain {
			return fmt.Errorf("gateways[%d]: id %q is not a SPIFFE ID of trust domain %s", i, g.ID, c.TrustDomain)
		}
		if seen[g.ID] {
			return fmt.Errorf("gateways[%d]: %s is listed twice", i, g.ID)
		}
		seen[g.ID] = true
		if len(g.Kinds) == 0 {
			return fmt.Errorf("gateways[%d]: no kinds: name mcp, http or both", i)
		}
		for _, k := range g.Kinds {
			if k != "mcp" && k != "http" {
				return fmt.Errorf("gateways[%d]: kind %q: want mcp or http", i, k)
			}
		}
	}
	return nil
}

func (c *CAConfig) check() error {
	static := c.Cert != "" || c.Key != "" || c.Chain != "" || c.Roots != ""
	switch {
	case static && c.Upstream != nil:
		return fmt.Errorf("ca: give cert, key and roots, or upstream, not both")
	case static && (c.Cert == "" || c.Key == "" || c.Roots == ""):
		return fmt.Errorf("ca: an operator's CA needs cert, key and roots (chain is optional)")
	case static && (c.Lifetime != 0 || c.RotateAt != 0):
		return fmt.Errorf("ca: lifetime and rotate_at apply to a CA the broker makes; an operator's CA is rotated by the operator")
	case c.KeyStore != "" && c.KeyStore != "file" && c.KeyStore != "tpm":
		return fmt.Errorf("ca.key_store: %q: want file or tpm", c.KeyStore)
	case c.KeyStore == "tpm" && static:
		return fmt.Errorf("ca.key_store: tpm is for CAs the broker makes; an operator's CA takes a key file")
	case c.KeyStore == "tpm" && c.TPM == "":
		return fmt.Errorf("ca.tpm: a tpm key store needs the TPM (a device path or swtpm://host:port)")
	case c.Lifetime < 0:
		return fmt.Errorf("ca.lifetime must be positive")
	case c.RotateAt < 0 || c.RotateAt >= 1:
		return fmt.Errorf("ca.rotate_at must be a fraction between 0 and 1")
	}
	if u := c.Upstream; u != nil {
		if u.StepCA == "" || u.Root == "" || u.Provisioner == "" {
			return fmt.Errorf("ca.upstream: step_ca, root and provisioner are required")
		}
		jwk, x5c := u.ProvisionerKey != "", u.ProvisionerCert != "" || u.ProvisionerCertKey != ""
		switch {
		case jwk && x5c:
			return fmt.Errorf("ca.upstream: give provisioner_key (JWK) or provisioner_cert and provisioner_cert_key (X5C), not both")
		case !jwk && (u.ProvisionerCert == "" || u.ProvisionerCertKey == ""):
			return fmt.Errorf("ca.upstream: give provisioner_key (a JWK provisioner) or provisioner_cert and provisioner_cert_key (an X5C provisioner)")
		}
		if url, err := neturl.Parse(u.StepCA); err != nil || url.Scheme != "https" || url.Host == "" {
			return fmt.Errorf("ca.upstream.step_ca: %q: want https://host:port", u.StepCA)
		}
	}
	return nil
}
