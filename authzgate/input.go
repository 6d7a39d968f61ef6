package authzgate

import (
	"crypto/sha256"
	"crypto/x509"
	"encoding/base64"
	"encoding/hex"
	"encoding/pem"
	"errors"
	"fmt"
	"net/http"
	"net/url"
	"slices"
	"strconv"
	"strings"

	authv3 "github.com/envoyproxy/go-control-plane/envoy/service/auth/v3"

	"github.com/writ-dev/writ/artifact"
)

// Header names the gateway reads. WritHeader carries the writ (as at the
// MCP gateway); PartialBodyHeader is Envoy's mark of a body cut at
// max_request_bytes.
const (
	WritHeader        = "writ"
	PartialBodyHeader = "x-envoy-auth-partial-body"
	// Forward-auth: what the proxy tells about the original request.
	ForwardedMethod = "X-Forwarded-Method"
	ForwardedURI    = "X-Forwarded-Uri"
	ForwardedHost   = "X-Forwarded-Host"
	ForwardedProto  = "X-Forwarded-Proto"
	// DefaultCertHeader and DefaultBodyHeader are the headers in which a
	// forward-auth proxy passes the caller's leaf certificate (base64 DER)
	// and the request body (base64); the proxy must set them, overwriting
	// whatever the caller sent.
	DefaultCertHeader = "X-Writ-Client-Cert"
	DefaultBodyHeader = "X-Writ-Body"
	// DefaultMaxBody bounds the body the gateway hashes.
	DefaultMaxBody = 1 << 20
)

// ParseOptions say how a request is read into an http action.
type ParseOptions struct {
	// BindHeaders are the header names writs bind (lower-case): each
	// with its values in order, none binding absence.
	BindHeaders []string
	MaxBody     int    // zero: DefaultMaxBody
	CertHeader  string // forward-auth; zero: DefaultCertHeader
	BodyHeader  string // forward-auth; zero: DefaultBodyHeader
}

func (o ParseOptions) withDefaults() ParseOptions {
	if o.MaxBody == 0 {
		o.MaxBody = DefaultMaxBody
	}
	if o.CertHeader == "" {
		o.CertHeader = DefaultCertHeader
	}
	if o.BodyHeader == "" {
		o.BodyHeader = DefaultBodyHeader
	}
	return o
}

// unbindable are header names a writ cannot bind: the writ itself, what
// the proxy adds or rewrites (forwarded-*, the certificate and body
// headers), what the action binds otherwise (host) and hop-by-hop fields
// a proxy removes.
var unbindable = []string{WritHeader, "host", "content-length", "transfer-encoding", "connection", "keep-alive",
	"proxy-connection", "te", "trailer", "upgrade", PartialBodyHeader}

// CheckBindHeaders refuses a list of bound header names that cannot mean
// anything: not a lower-case token, listed twice, or unbindable.
func (o ParseOptions) CheckBindHeaders() error {
	o = o.withDefaults()
	seen := map[string]bool{}
	for _, n := range o.BindHeaders {
		switch {
		case n == "" || strings.ToLower(n) != n || strings.ContainsFunc(n, func(r rune) bool { return r > 0x7e || r <= ' ' || strings.ContainsRune("\"(),/:;<=>?@[\\]{}", r) }):
			return fmt.Errorf("bound header %q is not a lower-case token", n)
		case seen[n]:
			return fmt.Errorf("bound header %q is listed twice", n)
		case slices.Contains(unbindable, n) || strings.HasPrefix(n, "x-forwarded-") || strings.HasPrefix(n, "x-envoy-") ||
			n == strings.ToLower(o.CertHeader) || n == strings.ToLower(o.BodyHeader):
			return fmt.Errorf("header %q cannot be bound: the proxy sets or removes it, or the action binds it otherwise", n)
		}
		seen[n] = true
	}
	return nil
}

// Input is one request as the proxy described it, parsed but not checked:
// decide checks it in order. Each part carries its own refusal.
type Input struct {
	// Principal is Envoy's source.principal; RequirePrincipal says it
	// must name the caller's certificate (gRPC).
	Principal        string
	RequirePrincipal bool
	// Cert is the caller's certificate as the proxy passed it: Envoy's
	// URL-encoded PEM (CertPEM) or a forward-auth proxy's base64 DER; ""
	// for none. CertBad says the proxy passed it more than once.
	Cert    string
	CertPEM bool
	CertBad bool
	Writ    string
	WritOK  bool
	// Action is the request's http action. ActionReason (request_invalid,
	// body_incomplete, body_unverifiable) says why it cannot be checked;
	// Action then holds what was read (for the audit entry), or nil.
	Action       *artifact.HTTPRequest
	ActionReason string
	ActionDetail string
}

func (in *Input) refuseAction(reason, format string, args ...any) *Input {
	in.ActionReason, in.ActionDetail = reason, fmt.Sprintf(format, args...)
	return in
}

// header is one request header line, name lower-cased.
type header struct{ name, value string }

// ParseCheckRequest reads an ext_authz CheckRequest. The caller is
// source.principal and source.certificate (URL-encoded PEM; Envoy sends
// it with include_peer_certificate). Headers come from header_map (Envoy's
// encode_raw_headers: each line on its own) or else the headers map
// (repeated lines merged: each bound value then binds as one line). The
// path attribute holds the query: split at the first "?". The body must
// be raw_body (pack_as_bytes), complete (no partial mark, its length the
// Content-Length) and at most MaxBody bytes.
func ParseCheckRequest(req *authv3.CheckRequest, o ParseOptions) *Input {
	o = o.withDefaults()
	in := &Input{RequirePrincipal: true}
	attrs := req.GetAttributes()
	src := attrs.GetSource()
	in.Principal = src.GetPrincipal()
	in.Cert, in.CertPEM = src.GetCertificate(), true
	h := attrs.GetRequest().GetHttp()
	var lines []header
	if hm := h.GetHeaderMap(); len(hm.GetHeaders()) > 0 {
		for _, hv := range hm.GetHeaders() {
			v := hv.GetValue()
			if len(hv.GetRawValue()) > 0 {
				v = string(hv.GetRawValue())
			}
			lines = append(lines, header{strings.ToLower(hv.GetKey()), v})
		}
	} else {
		for k, v := range h.GetHeaders() {
			lines = append(lines, header{strings.ToLower(k), v})
		}
		// A map has no order; only one value per name, so order within a
		// name cannot differ. Sort for determinism of what follows.
		slices.SortFunc(lines, func(a, b header) int { return strings.Compare(a.name, b.name) })
	}
	values := func(name string) []string {
		var vs []string
		for _, l := range lines {
			if l.name == name {
				vs = append(vs, l.value)
			}
		}
		return vs
	}
	in.Writ, in.WritOK = single(values(WritHeader))

	method := first(h.GetMethod(), values(":method"))
	target := first(h.GetPath(), values(":path"))
	scheme := first(h.GetScheme(), values(":scheme"))
	authority := first(h.GetHost(), values(":authority"))
	in.Action = &artifact.HTTPRequest{Method: method, Scheme: scheme, Authority: lowerASCII(authority)}
	if !strings.HasPrefix(target, "/") {
		return in.refuseAction(ReasonRequestInvalid, "request target %q is not origin-form", target)
	}
	in.Action.Path, in.Action.Query, _ = strings.Cut(target, "?")
	in.Action.Headers = bound(o.BindHeaders, values)

	for _, v := range values(PartialBodyHeader) {
		if strings.EqualFold(strings.TrimSpace(v), "true") {
			return in.refuseAction(ReasonBodyIncomplete, "envoy sent part of the body (allow_partial_message)")
		}
	}
	if h.GetBody() != "" && len(h.GetRawBody()) == 0 {
		return in.refuseAction(ReasonBodyUnverifiable, "the body came as a string, not as bytes: set pack_as_bytes")
	}
	body := h.GetRawBody()
	if len(body) > o.MaxBody {
		return in.refuseAction(ReasonBodyIncomplete, "body of %d bytes is larger than %d", len(body), o.MaxBody)
	}
	cl := values("content-length")
	switch {
	case len(cl) > 1:
		return in.refuseAction(ReasonRequestInvalid, "%d content-length headers", len(cl))
	case len(cl) == 1:
		n, err := strconv.ParseUint(cl[0], 10, 63)
		if err != nil || n != uint64(len(body)) {
			return in.refuseAction(ReasonBodyIncomplete, "content-length %q but %d body bytes: is with_request_body set?", cl[0], len(body))
		}
	case len(values("transfer-encoding")) > 0 && len(body) == 0:
		return in.refuseAction(ReasonBodyIncomplete, "a transfer-coded body but no body bytes: is with_request_body set?")
	}
	if s := h.GetSize(); s > 0 && s != int64(len(body)) {
		return in.refuseAction(ReasonBodyIncomplete, "request size %d but %d body bytes", s, len(body))
	}
	in.Action.BodySHA256 = hexSHA256(body)
	return in
}

// ParseForwardAuth reads a forward-auth request (Caddy's forward_auth,
// Traefik's ForwardAuth): the original method, target, host and scheme in
// the X-Forwarded-* headers, the original headers as they are, the
// caller's leaf certificate (base64 DER) in CertHeader and the body
// (base64, empty for none) in BodyHeader, both set by the proxy. A
// request without BodyHeader is refused body_unverifiable: the proxy's
// subrequest carries neither the body nor its length.
func ParseForwardAuth(r *http.Request, o ParseOptions) *Input {
	o = o.withDefaults()
	in := &Input{}
	certs := r.Header.Values(o.CertHeader)
	in.Cert, _ = single(certs)
	in.CertBad = len(certs) > 1
	in.Writ, in.WritOK = single(r.Header.Values(WritHeader))

	method, ok1 := single(r.Header.Values(ForwardedMethod))
	target, ok2 := single(r.Header.Values(ForwardedURI))
	host, ok3 := single(r.Header.Values(ForwardedHost))
	scheme, ok4 := single(r.Header.Values(ForwardedProto))
	if !ok1 || !ok2 || !ok3 || !ok4 {
		return in.refuseAction(ReasonRequestInvalid, "one each of %s, %s, %s and %s is required", ForwardedMethod, ForwardedURI, ForwardedHost, ForwardedProto)
	}
	if !strings.HasPrefix(target, "/") {
		return in.refuseAction(ReasonRequestInvalid, "request target %q is not origin-form", target)
	}
	in.Action = &artifact.HTTPRequest{Method: method, Scheme: scheme, Authority: lowerASCII(host)}
	in.Action.Path, in.Action.Query, _ = strings.Cut(target, "?")
	in.Action.Headers = bound(o.BindHeaders, func(name string) []string { return r.Header.Values(name) })

	bodies := r.Header.Values(o.BodyHeader)
	switch {
	case len(bodies) == 0:
		return in.refuseAction(ReasonBodyUnverifiable, "the proxy did not pass the body (%s): a forward-auth request cannot show it", o.BodyHeader)
	case len(bodies) > 1:
		return in.refuseAction(ReasonRequestInvalid, "%d %s headers", len(bodies), o.BodyHeader)
	case base64.StdEncoding.DecodedLen(len(bodies[0])) > o.MaxBody+2:
		return in.refuseAction(ReasonBodyIncomplete, "body larger than %d bytes", o.MaxBody)
	}
	body, err := base64.StdEncoding.DecodeString(bodies[0])
	switch {
	case err != nil:
		return in.refuseAction(ReasonRequestInvalid, "%s: %v", o.BodyHeader, err)
	case len(body) > o.MaxBody:
		return in.refuseAction(ReasonBodyIncomplete, "body of %d bytes is larger than %d", len(body), o.MaxBody)
	}
	in.Action.BodySHA256 = hexSHA256(body)
	return in
}

// bound collects the bound headers: each name with its values in order,
// an empty list for none.
func bound(names []string, values func(string) []string) map[string][]string {
	if len(names) == 0 {
		return nil
	}
	m := make(map[string][]string, len(names))
	for _, n := range names {
		m[n] = append([]string{}, values(n)...)
	}
	return m
}

// single returns the one non-empty value of vs.
func single(vs []string) (string, bool) {
	if len(vs) != 1 || vs[0] == "" {
		return "", false
	}
	return vs[0], true
}

// first returns attr, or else the one value of vs (a pseudo-header).
func first(attr string, vs []string) string {
	if attr != "" {
		return attr
	}
	v, _ := single(vs)
	return v
}

// lowerASCII lower-cases ASCII letters only (docs/writ-format.md §4.2).
func lowerASCII(s string) string {
	b := []byte(s)
	for i, c := range b {
		if c >= 'A' && c <= 'Z' {
			b[i] = c + 'a' - 'A'
		}
	}
	return string(b)
}

func hexSHA256(b []byte) string {
	sum := sha256.Sum256(b)
	return hex.EncodeToString(sum[:])
}

// maxChain bounds the certificates read from a proxy's header.
const maxChain = 8

// parseChain reads the caller's certificate chain as the proxy passed it.
func parseChain(raw string, isPEM bool) ([]*x509.Certificate, error) {
	if isPEM {
		return parsePEMChain(raw)
	}
	return parseDERBase64(raw)
}

// parsePEMChain reads Envoy's URL-encoded PEM certificate(s), leaf first.
func parsePEMChain(s string) ([]*x509.Certificate, error) {
	raw, err := url.QueryUnescape(s)
	if err != nil {
		return nil, fmt.Errorf("certificate: %w", err)
	}
	rest := []byte(raw)
	var chain []*x509.Certificate
	for {
		var b *pem.Block
		b, rest = pem.Decode(rest)
		if b == nil {
			break
		}
		if b.Type != "CERTIFICATE" || len(chain) == maxChain {
			return nil, errors.New("certificate: a PEM block that is not one of at most 8 certificates")
		}
		c, err := x509.ParseCertificate(b.Bytes)
		if err != nil {
			return nil, fmt.Errorf("certificate: %w", err)
		}
		chain = append(chain, c)
	}
	if len(chain) == 0 || strings.TrimSpace(string(rest)) != "" {
		return nil, errors.New("certificate: not PEM certificates")
	}
	return chain, nil
}

// parseDERBase64 reads a base64 DER leaf (Caddy's
// {http.request.tls.client.certificate_der_base64}).
func parseDERBase64(s string) ([]*x509.Certificate, error) {
	der, err := base64.StdEncoding.DecodeString(s)
	if err != nil {
		return nil, fmt.Errorf("certificate: %w", err)
	}
	c, err := x509.ParseCertificate(der)
	if err != nil {
		return nil, fmt.Errorf("certificate: %w", err)
	}
	return []*x509.Certificate{c}, nil
}
