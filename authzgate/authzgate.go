// Package authzgate is writ's HTTP authorization gateway: Envoy's external
// authorization service (envoy.service.auth.v3.Authorization, gRPC) and a
// forward-auth endpoint (Caddy forward_auth, Traefik ForwardAuth). A proxy
// asks it about each request; it answers allow only for a request that
// carries a writ bound to exactly that request and to the caller the
// proxy authenticated (docs/adr/0029).
package authzgate

import (
	"context"
	"errors"
	"log/slog"
	"strconv"
	"strings"
	"time"
	"unicode/utf8"

	"github.com/spiffe/go-spiffe/v2/bundle/x509bundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/writ-dev/writ/artifact"
	"github.com/writ-dev/writ/audit"
	"github.com/writ-dev/writ/enforce/gateway"
)

// Reason codes of the gateway's own refusals; every other refusal carries
// the artifact reason code of the failed check (writ_expired,
// action_mismatch, cnf_mismatch, writ_replayed, ...) or the node's
// standing (node_revoked, ...).
const (
	ReasonCallerNoSVID      = "caller_no_svid"      // the proxy passed no caller certificate
	ReasonCallerSVIDInvalid = "caller_svid_invalid" // the caller certificate does not verify against the bundle
	ReasonCallerMismatch    = "caller_mismatch"     // source.principal is not the certificate's SPIFFE ID
	ReasonWritMissing       = "writ_missing"        // no Writ header, an empty one, or two
	ReasonRequestInvalid    = "request_invalid"     // the request has no http encoding
	ReasonBodyIncomplete    = "body_incomplete"     // the body is partial, larger than the maximum, or not all there
	ReasonBodyUnverifiable  = "body_unverifiable"   // the proxy cannot show the body
	ReasonAuditFailed       = "audit_failed"        // the decision could not be recorded: refused
)

// ReasonHeader is the response header of a refusal that carries its
// reason code; the body is {"reason": "<code>"}.
const ReasonHeader = "Writ-Reason"

// Consumer spends a single-use writ at its issuer (the broker's
// ConsumeWrit, over mTLS with the gateway's SVID).
type Consumer interface {
	Consume(ctx context.Context, token string) error
}

var _ Consumer = (*gateway.BrokerConsumer)(nil)

// Standing is the broker's node events as the gateway reads them
// (gateway.Standing); *enforce.Watcher is one.
type Standing = gateway.Standing

// Config is one gateway.
type Config struct {
	Audience spiffeid.ID       // the gateway's SPIFFE ID: the writ's aud
	Bundle   x509bundle.Source // caller certificates must chain to it
	Keys     artifact.KeySet
	Parse    ParseOptions
	Consumer Consumer
	Nodes    Standing           // the broker's node events; required
	Reasons  func(error) string // the reason code of a Standing error
	Audit    *audit.Log
	Log      *slog.Logger
	Now      func() time.Time // zero: time.Now
	// RetryEntries bounds the retry cache; zero: gateway.DefaultRetryEntries.
	RetryEntries int
}

// Gateway decides HTTP requests.
type Gateway struct {
	cfg     Config
	retry   *gateway.RetryCache
	callers *callerCache
}

// New returns a gateway for cfg.
func New(cfg Config) (*Gateway, error) {
	switch {
	case cfg.Audience.IsZero():
		return nil, errors.New("authzgate: the gateway's SPIFFE ID is required")
	case cfg.Bundle == nil || cfg.Consumer == nil || cfg.Audit == nil || cfg.Nodes == nil || cfg.Reasons == nil:
		return nil, errors.New("authzgate: bundle, consumer, node standing and audit log are required")
	}
	cfg.Parse = cfg.Parse.withDefaults()
	if err := cfg.Parse.CheckBindHeaders(); err != nil {
		return nil, errors.New("authzgate: " + err.Error())
	}
	if cfg.Log == nil {
		cfg.Log = slog.Default()
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	if cfg.RetryEntries == 0 {
		cfg.RetryEntries = gateway.DefaultRetryEntries
	}
	return &Gateway{cfg: cfg, retry: gateway.NewRetryCache(cfg.RetryEntries), callers: newCallerCache()}, nil
}

// Decision is what the gateway decided about one request; Reason is empty
// when it may pass.
type Decision struct {
	Reason, Detail string
	Caller         string
	JTI, Action    string
	Request        *artifact.HTTPRequest
}

// Decide checks one request, records the decision in the audit log and
// returns it; a decision that cannot be recorded is a refusal
// (audit_failed).
func (g *Gateway) Decide(ctx context.Context, in *Input) *Decision {
	d := g.decide(ctx, in)
	if err := g.record(ctx, d); err != nil {
		g.cfg.Log.Error("gateway audit append failed", "err", err)
		d.Reason, d.Detail = ReasonAuditFailed, err.Error()
	}
	if d.Reason != "" {
		g.cfg.Log.Info("request refused", "reason", d.Reason, "caller", d.Caller, "detail", d.Detail)
	}
	return d
}

// decide checks one request, in this order, stopping at the first
// failure. It has no side effect but the last step's.
//
//  1. the proxy passed the caller's certificate (caller_no_svid); it is
//     an X.509-SVID that chains to the bundle (caller_svid_invalid); for
//     Envoy, source.principal is its SPIFFE ID (caller_mismatch)
//  2. one Writ header (writ_missing)
//  3. the request has an http encoding: method, scheme, lower-cased
//     authority, path and query split at the first "?", the bound
//     headers, the sha256 of the complete body (request_invalid,
//     body_incomplete, body_unverifiable)
//  4. artifact.Verify with the bundle's writ keys, aud = the gateway's
//     SPIFFE ID, the caller's leaf (sub, cnf), kind http and the digest
//     of step 3; att.pcrs is the writ's own (docs/adr/0027): every reason
//     code of artifact.Verify
//  5. the broker still trusts the writ's node (node_failed, node_stale,
//     node_revoked, events_unavailable); checked before a single-use
//     writ is spent
//  6. (inside 4, last) a single-use writ is spent at the broker, unless
//     the same writ for the same digest was spent here before and has not
//     expired (a retry): writ_replayed
func (g *Gateway) decide(ctx context.Context, in *Input) *Decision {
	d := &Decision{Request: in.Action}
	now := g.cfg.Now()
	switch {
	case in.CertBad:
		return d.deny(ReasonCallerSVIDInvalid, "the proxy passed more than one caller certificate")
	case in.Cert == "":
		return d.deny(ReasonCallerNoSVID, "the proxy passed no caller certificate")
	}
	id, leaf, err := g.callers.verify(in.Cert, in.CertPEM, g.cfg.Bundle, now)
	if err != nil {
		return d.deny(ReasonCallerSVIDInvalid, err.Error())
	}
	d.Caller = id.String()
	if in.RequirePrincipal && in.Principal != d.Caller {
		return d.deny(ReasonCallerMismatch, "source.principal "+in.Principal+" is not the certificate's "+d.Caller)
	}
	if !in.WritOK {
		return d.deny(ReasonWritMissing, "no Writ header, an empty one, or more than one")
	}
	unverified, _ := artifact.ParseUnverified(in.Writ) // a lookup for a writ verified before
	if unverified != nil {
		d.JTI = unverified.ID
	}
	if in.ActionReason != "" {
		return d.deny(in.ActionReason, in.ActionDetail)
	}
	act := &artifact.Action{Kind: artifact.KindHTTP, HTTP: in.Action}
	if d.Action, err = act.Digest(); err != nil {
		return d.deny(ReasonRequestInvalid, err.Error())
	}
	standing, err := gateway.VerifyWrit(in.Writ, unverified, artifact.VerifyOptions{
		Keys: g.cfg.Keys, Audience: g.cfg.Audience.String(), SVID: leaf, Action: d.Action, Kind: artifact.KindHTTP, Now: now,
	}, g.cfg.Nodes, func(jti string, exp time.Time) error {
		return g.retry.Spend(ctx, g.cfg.Consumer, in.Writ, jti, d.Action, exp, g.cfg.Now())
	})
	if standing != nil {
		return d.deny(g.cfg.Reasons(standing), standing.Error())
	}
	if err != nil {
		return d.deny(string(artifact.ReasonOf(err)), err.Error())
	}
	return d
}

func (d *Decision) deny(reason, detail string) *Decision {
	d.Reason, d.Detail = reason, detail
	return d
}

// EntryKind is the kind of the gateway's audit entries: one per request
// decision, subject the caller, refs jti, action (the digest), method,
// authority and path.
const EntryKind = "http-request"

// record appends the decision to the gateway's audit log.
func (g *Gateway) record(ctx context.Context, d *Decision) error {
	e := audit.Entry{Kind: EntryKind, Subject: d.Caller, Decision: audit.DecisionAllow, Reason: d.Reason, Refs: map[string]string{}}
	if d.Reason != "" {
		e.Decision = audit.DecisionDeny
	}
	for k, v := range map[string]string{"jti": d.JTI, "action": d.Action} {
		if v != "" {
			e.Refs[k] = v
		}
	}
	if r := d.Request; r != nil {
		for k, v := range map[string]string{"method": r.Method, "authority": r.Authority, "path": r.Path} {
			if v != "" {
				e.Refs[k] = clip(v)
			}
		}
	}
	_, err := g.cfg.Audit.Append(ctx, e)
	return err
}

// maxRef bounds what a request field takes in an audit entry: the digest
// binds the whole field, the entry shows enough to read it.
const maxRef = 1024

// clip makes a field of a request, which may be refused for being
// malformed, fit an audit entry: quoted when it is not UTF-8, cut at
// maxRef bytes (marked with "…").
func clip(s string) string {
	if !utf8.ValidString(s) {
		s = strconv.QuoteToASCII(s)
	}
	if len(s) > maxRef {
		s = strings.ToValidUTF8(s[:maxRef], "") + "…"
	}
	return s
}
