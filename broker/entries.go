package broker

import (
	"context"
	"errors"
	"fmt"
	"path"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/google/uuid"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"google.golang.org/grpc/codes"

	brokerv1 "github.com/writ-dev/writ/api/broker/v1"
	"github.com/writ-dev/writ/broker/store"
	"github.com/writ-dev/writ/identity"
)

// Reason codes of registration entries.
const (
	ReasonEntryUnknown         = "entry_unknown"
	ReasonEntrySPIFFEIDInvalid = "entry_spiffe_id_invalid"
	ReasonEntryParentInvalid   = "entry_parent_invalid"
	ReasonEntrySelectorInvalid = "entry_selector_invalid"
	ReasonEntryTTLInvalid      = "entry_ttl_invalid"
	ReasonEntryDNSNameInvalid  = "entry_dns_name_invalid"
	ReasonEntryActionInvalid   = "entry_action_invalid"
)

// Bounds of an entry.
const (
	minEntryTTL       = time.Minute
	maxEntryTTL       = 24 * time.Hour
	maxEntrySelectors = 32
	maxEntryDNSNames  = 32
	maxEntryActions   = 256
)

// entryError is an invalid entry: its reason code and what is wrong.
type entryError struct{ reason, detail string }

func (e *entryError) Error() string { return e.detail }

func invalid(reason, format string, args ...any) error {
	return &entryError{reason: reason, detail: fmt.Sprintf(format, args...)}
}

var (
	hex64       = regexp.MustCompile(`^[0-9a-f]{64}$`)
	policyIDRe  = regexp.MustCompile(`^[A-Za-z0-9._-]+(@[0-9]+)?$`)
	claimNameRe = regexp.MustCompile(`^[a-z0-9_]+(\.[a-z0-9_]+)*$`)
	unitRe      = regexp.MustCompile(`^[A-Za-z0-9:_.\\@-]{1,255}$`)
	dnsLabelRe  = regexp.MustCompile(`^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$`)
)

// checkEntry validates an entry to be created, in order, each failure with
// its reason code:
//
//  1. the SPIFFE ID parses, is in the broker's trust domain, has a path,
//     and is not the broker's, the admin's or under /node/: entry_spiffe_id_invalid;
//  2. the parent is a node SPIFFE ID of the trust domain
//     (spiffe://<td>/node/<id>), "policy:<id>" or "policy:<id>@<version>",
//     or "claim:<name>=<value>" with a dotted lower-case name: entry_parent_invalid;
//  3. there are 1 to 32 selectors, none repeated, each of a known form:
//     unix:uid:<N>, unix:gid:<N>, unix:path:<clean absolute path>,
//     unix:sha256:<64 lower hex>, systemd:unit:<unit name>,
//     cgroup:<clean absolute path>: entry_selector_invalid;
//  4. the TTL is 0 (the broker's svid_ttl) or within [1m, 24h]: entry_ttl_invalid;
//  5. at most 32 DNS names, each lower-case LDH labels, at most 253 bytes: entry_dns_name_invalid;
//  6. at most 256 actions, each "exec:sha256:<64 lower hex>": entry_action_invalid.
func checkEntry(td spiffeid.TrustDomain, e store.Entry) error {
	checks := []func() error{
		func() error { return checkEntryID(td, e.SPIFFEID) },
		func() error { return checkParent(td, e.Parent) },
		func() error { return checkSelectors(e.Selectors) },
		func() error {
			if e.TTL != 0 && (e.TTL < minEntryTTL || e.TTL > maxEntryTTL) {
				return invalid(ReasonEntryTTLInvalid, "the TTL must be 0 (the broker's default) or between %s and %s", minEntryTTL, maxEntryTTL)
			}
			return nil
		},
		func() error { return checkDNSNames(e.DNSNames) },
		func() error { return checkActions(e.Actions) },
	}
	for _, c := range checks {
		if err := c(); err != nil {
			return err
		}
	}
	return nil
}

func checkEntryID(td spiffeid.TrustDomain, s string) error {
	id, err := spiffeid.FromString(s)
	switch {
	case err != nil:
		return invalid(ReasonEntrySPIFFEIDInvalid, "%q is not a SPIFFE ID: %v", s, err)
	case id.TrustDomain() != td:
		return invalid(ReasonEntrySPIFFEIDInvalid, "%s is not in trust domain %s", id, td)
	case id.Path() == "":
		return invalid(ReasonEntrySPIFFEIDInvalid, "%s names the trust domain, not a workload", id)
	case reservedPath(id.Path()):
		return invalid(ReasonEntrySPIFFEIDInvalid, "%s is reserved for the broker, its admin or nodes", id)
	}
	return nil
}

// reservedPath is a SPIFFE ID path the broker issues itself.
func reservedPath(p string) bool {
	for _, r := range []string{"/node", "/admin", "/broker"} {
		if p == r || strings.HasPrefix(p, r+"/") {
			return true
		}
	}
	return false
}

func checkParent(td spiffeid.TrustDomain, p string) error {
	if v, ok := strings.CutPrefix(p, "policy:"); ok {
		if !policyIDRe.MatchString(v) {
			return invalid(ReasonEntryParentInvalid, "%q: a policy parent is policy:<id> or policy:<id>@<version>", p)
		}
		return nil
	}
	if v, ok := strings.CutPrefix(p, "claim:"); ok {
		name, _, found := strings.Cut(v, "=")
		if !found || !claimNameRe.MatchString(name) {
			return invalid(ReasonEntryParentInvalid, "%q: a claim parent is claim:<name>=<value>, the name dotted lower-case (boot.secureboot.enabled)", p)
		}
		return nil
	}
	id, err := spiffeid.FromString(p)
	if err != nil {
		return invalid(ReasonEntryParentInvalid, "%q is not a node SPIFFE ID, policy:<id> or claim:<name>=<value>", p)
	}
	fp, ok := strings.CutPrefix(id.Path(), "/node/")
	if id.TrustDomain() != td || !ok || fp == "" || strings.Contains(fp, "/") {
		return invalid(ReasonEntryParentInvalid, "%s is not a node SPIFFE ID of trust domain %s", id, td)
	}
	return nil
}

func checkSelectors(sels []string) error {
	if len(sels) == 0 || len(sels) > maxEntrySelectors {
		return invalid(ReasonEntrySelectorInvalid, "an entry has 1 to %d selectors (none would match every process on the node)", maxEntrySelectors)
	}
	for i, s := range sels {
		if err := checkSelector(s); err != nil {
			return err
		}
		if slices.Contains(sels[:i], s) {
			return invalid(ReasonEntrySelectorInvalid, "selector %q is repeated", s)
		}
	}
	return nil
}

// checkSelector checks one selector, "type:value".
func checkSelector(s string) error {
	typ, v, _ := strings.Cut(s, ":")
	ok := false
	switch typ {
	case "unix":
		k, val, _ := strings.Cut(v, ":")
		switch k {
		case "uid", "gid":
			n, err := strconv.ParseUint(val, 10, 32)
			ok = err == nil && val == strconv.FormatUint(n, 10) // no sign, no leading zeros
		case "path":
			ok = cleanAbs(val)
		case "sha256":
			ok = hex64.MatchString(val)
		}
	case "systemd":
		unit, found := strings.CutPrefix(v, "unit:")
		ok = found && unitRe.MatchString(unit)
	case "cgroup":
		ok = cleanAbs(v)
	}
	if !ok {
		return invalid(ReasonEntrySelectorInvalid, "%q is not a selector: unix:uid:<N>, unix:gid:<N>, unix:path:</abs>, unix:sha256:<hex>, systemd:unit:<name> or cgroup:</path>", s)
	}
	return nil
}

func cleanAbs(p string) bool {
	return strings.HasPrefix(p, "/") && path.Clean(p) == p && !strings.ContainsRune(p, 0)
}

func checkDNSNames(names []string) error {
	if len(names) > maxEntryDNSNames {
		return invalid(ReasonEntryDNSNameInvalid, "at most %d DNS names", maxEntryDNSNames)
	}
	for _, n := range names {
		ok := n != "" && len(n) <= 253
		for l := range strings.SplitSeq(n, ".") {
			ok = ok && dnsLabelRe.MatchString(l)
		}
		if !ok {
			return invalid(ReasonEntryDNSNameInvalid, "%q is not a DNS name (lower-case letters, digits and hyphens, in dot-separated labels)", n)
		}
	}
	return nil
}

// mcpToolName is the tool of an mcp:<tool> entry action: an MCP tool name
// (letters, digits, _ - . /, 1 to 128), or * for any tool.
var mcpToolName = regexp.MustCompile(`\A(?:\*|[A-Za-z0-9_./-]{1,128})\z`)

func checkActions(acts []string) error {
	if len(acts) > maxEntryActions {
		return invalid(ReasonEntryActionInvalid, "at most %d actions", maxEntryActions)
	}
	for _, a := range acts {
		if tool, ok := strings.CutPrefix(a, "mcp:"); ok && mcpToolName.MatchString(tool) {
			continue // mcp:<tool> or mcp:*: a gateway's writ for a call of that tool (docs/adr/0028)
		}
		if h, ok := strings.CutPrefix(a, "exec:sha256:"); !ok || !hex64.MatchString(h) {
			return invalid(ReasonEntryActionInvalid, "%q is not an action: exec:sha256:<64 lower-case hex>, mcp:<tool> or mcp:*", a)
		}
	}
	return nil
}

// entryFromProto is the entry an operator asks for, id and time not set.
func entryFromProto(e *brokerv1.Entry) store.Entry {
	out := store.Entry{SPIFFEID: e.GetSpiffeId(), Parent: e.GetParent(), TTL: time.Duration(e.GetTtlSeconds()) * time.Second,
		DNSNames: e.GetDnsNames(), Actions: e.GetActions()}
	if e.GetTtlSeconds() < 0 || e.GetTtlSeconds() > int64(maxEntryTTL/time.Second) {
		out.TTL = -1 // out of bounds, without overflowing
	}
	for _, s := range e.GetSelectors() {
		out.Selectors = append(out.Selectors, s.GetType()+":"+s.GetValue())
	}
	return out
}

// entryProto is the API form of a stored entry.
func entryProto(e store.Entry) *brokerv1.Entry {
	out := &brokerv1.Entry{Id: e.ID, SpiffeId: e.SPIFFEID, Parent: e.Parent, TtlSeconds: int64(e.TTL / time.Second),
		DnsNames: e.DNSNames, Actions: e.Actions, CreatedUnix: e.CreatedAt.Unix()}
	for _, s := range e.Selectors {
		typ, v, _ := strings.Cut(s, ":")
		out.Selectors = append(out.Selectors, &brokerv1.Selector{Type: typ, Value: v})
	}
	return out
}

// CreateEntry validates an entry (checkEntry), stores it under a new id
// and audits its creation (kind entry-create).
func (a *admin) CreateEntry(ctx context.Context, req *brokerv1.CreateEntryRequest) (*brokerv1.Entry, error) {
	if err := a.authorize(ctx); err != nil {
		return nil, err
	}
	admin := identity.AdminID(a.b.td).String()
	e := entryFromProto(req.GetEntry())
	if err := checkEntry(a.b.td, e); err != nil {
		var ee *entryError
		if errors.As(err, &ee) {
			return nil, a.b.deny(ctx, "admin", admin, ee.reason, codes.InvalidArgument, ee.detail)
		}
		return nil, a.b.refuse(ctx, "admin", admin, err)
	}
	e.ID, e.CreatedAt = uuid.NewString(), time.Now().UTC().Truncate(time.Second)
	if err := a.b.store.PutEntry(ctx, e); err != nil {
		return nil, a.b.refuse(ctx, "admin", admin, err)
	}
	// An entry the audit log does not show must not stay.
	if err := a.b.record(ctx, "entry-create", admin, "allow", "", map[string]string{
		"entry": e.ID, "spiffe_id": e.SPIFFEID, "parent": e.Parent}); err != nil {
		if derr := a.b.store.DeleteEntry(ctx, e.ID); derr != nil {
			a.b.log.Error("unaudited entry not removed", "entry", e.ID, "err", derr)
		}
		return nil, brokerv1.Refuse(codes.Internal, ReasonAuditFailed, "the entry could not be recorded")
	}
	a.b.log.Info("entry created", "entry", e.ID, "spiffe_id", e.SPIFFEID, "parent", e.Parent)
	return entryProto(e), nil
}

// ListEntries returns all entries, oldest first.
func (a *admin) ListEntries(ctx context.Context, _ *brokerv1.ListEntriesRequest) (*brokerv1.ListEntriesResponse, error) {
	if err := a.authorize(ctx); err != nil {
		return nil, err
	}
	es, err := a.b.store.Entries(ctx)
	if err != nil {
		return nil, a.b.refuse(ctx, "admin", "", err)
	}
	resp := &brokerv1.ListEntriesResponse{}
	for _, e := range es {
		resp.Entries = append(resp.Entries, entryProto(e))
	}
	return resp, nil
}

// GetEntry returns one entry: entry_unknown when there is none.
func (a *admin) GetEntry(ctx context.Context, req *brokerv1.GetEntryRequest) (*brokerv1.Entry, error) {
	if err := a.authorize(ctx); err != nil {
		return nil, err
	}
	e, err := a.b.store.Entry(ctx, req.GetId())
	if errors.Is(err, store.ErrNotFound) {
		return nil, brokerv1.Refuse(codes.NotFound, ReasonEntryUnknown, "no such entry")
	}
	if err != nil {
		return nil, a.b.refuse(ctx, "admin", "", err)
	}
	return entryProto(e), nil
}

// DeleteEntry deletes one entry (entry_unknown when there is none) and
// audits it (kind entry-delete). SVIDs already issued for it live out
// their TTL; none is issued for it after.
func (a *admin) DeleteEntry(ctx context.Context, req *brokerv1.DeleteEntryRequest) (*brokerv1.DeleteEntryResponse, error) {
	if err := a.authorize(ctx); err != nil {
		return nil, err
	}
	admin := identity.AdminID(a.b.td).String()
	e, err := a.b.store.Entry(ctx, req.GetId())
	if errors.Is(err, store.ErrNotFound) {
		return nil, brokerv1.Refuse(codes.NotFound, ReasonEntryUnknown, "no such entry")
	}
	if err != nil {
		return nil, a.b.refuse(ctx, "admin", admin, err)
	}
	if err := a.b.store.DeleteEntry(ctx, e.ID); errors.Is(err, store.ErrNotFound) {
		return nil, brokerv1.Refuse(codes.NotFound, ReasonEntryUnknown, "no such entry")
	} else if err != nil {
		return nil, a.b.refuse(ctx, "admin", admin, err)
	}
	if err := a.b.record(ctx, "entry-delete", admin, "allow", "", map[string]string{
		"entry": e.ID, "spiffe_id": e.SPIFFEID, "parent": e.Parent}); err != nil {
		return nil, brokerv1.Refuse(codes.Internal, ReasonAuditFailed, "the deletion could not be recorded")
	}
	a.b.log.Info("entry deleted", "entry", e.ID, "spiffe_id", e.SPIFFEID)
	return &brokerv1.DeleteEntryResponse{}, nil
}
