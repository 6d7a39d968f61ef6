package broker

import (
	"context"
	"errors"
	"strings"
	"testing"

	"github.com/spiffe/go-spiffe/v2/spiffeid"

	brokerv1 "github.com/writ-dev/writ/api/broker/v1"
	"github.com/writ-dev/writ/audit"
	"github.com/writ-dev/writ/identity"
)

// adminCtx is a context whose mTLS caller is the broker's admin.
func (b *testBroker) adminCtx(t *testing.T) context.Context {
	t.Helper()
	return b.as(t, identity.AdminID(b.td))
}

// goodEntry is a valid entry for node n1 of writ.test.
func goodEntry() *brokerv1.Entry {
	return &brokerv1.Entry{
		SpiffeId:   "spiffe://writ.test/app/web",
		Parent:     "spiffe://writ.test/node/n1",
		Selectors:  []*brokerv1.Selector{{Type: "unix", Value: "uid:1000"}, {Type: "unix", Value: "sha256:" + strings.Repeat("ab", 32)}},
		TtlSeconds: 600,
		DnsNames:   []string{"web.example.internal"},
		Actions:    []string{"exec:sha256:" + strings.Repeat("cd", 32)},
	}
}

// auditKinds returns the kinds and subjects of the broker's audit entries.
func (b *testBroker) auditEntries(t *testing.T) []audit.Entry {
	t.Helper()
	es, err := audit.Read(b.cfg.Audit.Dir)
	if err != nil {
		t.Fatal(err)
	}
	return es
}

// TestCreateEntryValidation: every malformed entry is refused with its
// stable reason code, and nothing is stored.
func TestCreateEntryValidation(t *testing.T) {
	b := newTestBroker(t, t.TempDir(), 1, defaultRules)
	ctx := b.adminCtx(t)
	hex := strings.Repeat("ab", 32)
	cases := []struct {
		name   string
		edit   func(e *brokerv1.Entry)
		reason string
	}{
		{"not a SPIFFE ID", func(e *brokerv1.Entry) { e.SpiffeId = "web" }, ReasonEntrySPIFFEIDInvalid},
		{"other trust domain", func(e *brokerv1.Entry) { e.SpiffeId = "spiffe://evil.test/app" }, ReasonEntrySPIFFEIDInvalid},
		{"trust domain only", func(e *brokerv1.Entry) { e.SpiffeId = "spiffe://writ.test" }, ReasonEntrySPIFFEIDInvalid},
		{"a node ID", func(e *brokerv1.Entry) { e.SpiffeId = "spiffe://writ.test/node/n2" }, ReasonEntrySPIFFEIDInvalid},
		{"the admin", func(e *brokerv1.Entry) { e.SpiffeId = "spiffe://writ.test/admin" }, ReasonEntrySPIFFEIDInvalid},
		{"under admin", func(e *brokerv1.Entry) { e.SpiffeId = "spiffe://writ.test/admin/x" }, ReasonEntrySPIFFEIDInvalid},
		{"the broker", func(e *brokerv1.Entry) { e.SpiffeId = "spiffe://writ.test/broker" }, ReasonEntrySPIFFEIDInvalid},
		{"parent empty", func(e *brokerv1.Entry) { e.Parent = "" }, ReasonEntryParentInvalid},
		{"parent not a node", func(e *brokerv1.Entry) { e.Parent = "spiffe://writ.test/app/x" }, ReasonEntryParentInvalid},
		{"parent other domain", func(e *brokerv1.Entry) { e.Parent = "spiffe://evil.test/node/n1" }, ReasonEntryParentInvalid},
		{"parent bare /node/", func(e *brokerv1.Entry) { e.Parent = "spiffe://writ.test/node/" }, ReasonEntryParentInvalid},
		{"parent policy empty", func(e *brokerv1.Entry) { e.Parent = "policy:" }, ReasonEntryParentInvalid},
		{"parent claim no value", func(e *brokerv1.Entry) { e.Parent = "claim:boot.secureboot.enabled" }, ReasonEntryParentInvalid},
		{"parent claim bad name", func(e *brokerv1.Entry) { e.Parent = "claim:Boot..x=1" }, ReasonEntryParentInvalid},
		{"no selectors", func(e *brokerv1.Entry) { e.Selectors = nil }, ReasonEntrySelectorInvalid},
		{"unknown type", func(e *brokerv1.Entry) { e.Selectors[0] = &brokerv1.Selector{Type: "k8s", Value: "ns:x"} }, ReasonEntrySelectorInvalid},
		{"uid not a number", func(e *brokerv1.Entry) { e.Selectors[0].Value = "uid:root" }, ReasonEntrySelectorInvalid},
		{"uid signed", func(e *brokerv1.Entry) { e.Selectors[0].Value = "uid:+0" }, ReasonEntrySelectorInvalid},
		{"uid leading zero", func(e *brokerv1.Entry) { e.Selectors[0].Value = "uid:01000" }, ReasonEntrySelectorInvalid},
		{"gid too large", func(e *brokerv1.Entry) { e.Selectors[0].Value = "gid:4294967296" }, ReasonEntrySelectorInvalid},
		{"path relative", func(e *brokerv1.Entry) { e.Selectors[0].Value = "path:usr/bin/app" }, ReasonEntrySelectorInvalid},
		{"path not clean", func(e *brokerv1.Entry) { e.Selectors[0].Value = "path:/usr/../bin/app" }, ReasonEntrySelectorInvalid},
		{"sha256 short", func(e *brokerv1.Entry) { e.Selectors[0].Value = "sha256:abcd" }, ReasonEntrySelectorInvalid},
		{"sha256 upper", func(e *brokerv1.Entry) { e.Selectors[0].Value = "sha256:" + strings.ToUpper(hex) }, ReasonEntrySelectorInvalid},
		{"systemd not unit", func(e *brokerv1.Entry) { e.Selectors[0] = &brokerv1.Selector{Type: "systemd", Value: "app.service"} }, ReasonEntrySelectorInvalid},
		{"systemd unit slash", func(e *brokerv1.Entry) { e.Selectors[0] = &brokerv1.Selector{Type: "systemd", Value: "unit:a/b"} }, ReasonEntrySelectorInvalid},
		{"cgroup relative", func(e *brokerv1.Entry) { e.Selectors[0] = &brokerv1.Selector{Type: "cgroup", Value: "system.slice"} }, ReasonEntrySelectorInvalid},
		{"repeated selector", func(e *brokerv1.Entry) { e.Selectors[1] = e.Selectors[0] }, ReasonEntrySelectorInvalid},
		{"ttl negative", func(e *brokerv1.Entry) { e.TtlSeconds = -1 }, ReasonEntryTTLInvalid},
		{"ttl too short", func(e *brokerv1.Entry) { e.TtlSeconds = 5 }, ReasonEntryTTLInvalid},
		{"ttl too long", func(e *brokerv1.Entry) { e.TtlSeconds = 1 << 40 }, ReasonEntryTTLInvalid},
		{"dns upper", func(e *brokerv1.Entry) { e.DnsNames = []string{"Web.example"} }, ReasonEntryDNSNameInvalid},
		{"dns empty label", func(e *brokerv1.Entry) { e.DnsNames = []string{"web..example"} }, ReasonEntryDNSNameInvalid},
		{"dns wildcard", func(e *brokerv1.Entry) { e.DnsNames = []string{"*.example"} }, ReasonEntryDNSNameInvalid},
		{"dns hyphen end", func(e *brokerv1.Entry) { e.DnsNames = []string{"web-.example"} }, ReasonEntryDNSNameInvalid},
		{"action kind", func(e *brokerv1.Entry) { e.Actions = []string{"http:sha256:" + hex} }, ReasonEntryActionInvalid},
		{"action short", func(e *brokerv1.Entry) { e.Actions = []string{"exec:sha256:ab"} }, ReasonEntryActionInvalid},
		{"mcp no tool", func(e *brokerv1.Entry) { e.Actions = []string{"mcp:"} }, ReasonEntryActionInvalid},
		{"mcp tool with space", func(e *brokerv1.Entry) { e.Actions = []string{"mcp:read file"} }, ReasonEntryActionInvalid},
		{"mcp tool pattern", func(e *brokerv1.Entry) { e.Actions = []string{"mcp:read_*"} }, ReasonEntryActionInvalid},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			e := goodEntry()
			c.edit(e)
			_, err := (&admin{b: b.Broker}).CreateEntry(ctx, &brokerv1.CreateEntryRequest{Entry: e})
			wantRefused(t, c.name, err, c.reason)
		})
	}
	es, err := b.store.Entries(context.Background())
	if err != nil || len(es) != 0 {
		t.Fatalf("entries after refusals: %v, %v", es, err)
	}
}

// TestEntryLifecycle: create, get, list and delete round-trip; creation
// and deletion are audited; an unknown id is entry_unknown; only the admin
// may call.
func TestEntryLifecycle(t *testing.T) {
	b := newTestBroker(t, t.TempDir(), 1, defaultRules)
	a := &admin{b: b.Broker}
	ctx := b.adminCtx(t)
	for _, parent := range []string{"policy:test", "policy:test@1", "claim:boot.secureboot.enabled=true"} {
		e := goodEntry()
		e.Parent = parent
		if _, err := a.CreateEntry(ctx, &brokerv1.CreateEntryRequest{Entry: e}); err != nil {
			t.Fatalf("parent %s: %v", parent, err)
		}
	}
	created, err := a.CreateEntry(ctx, &brokerv1.CreateEntryRequest{Entry: goodEntry()})
	if err != nil {
		t.Fatal(err)
	}
	if created.GetId() == "" || created.GetCreatedUnix() == 0 {
		t.Fatalf("created entry has no id or time: %v", created)
	}
	got, err := a.GetEntry(ctx, &brokerv1.GetEntryRequest{Id: created.GetId()})
	if err != nil {
		t.Fatal(err)
	}
	want := goodEntry()
	if got.GetSpiffeId() != want.GetSpiffeId() || got.GetParent() != want.GetParent() || got.GetTtlSeconds() != 600 ||
		len(got.GetSelectors()) != 2 || got.GetSelectors()[1].GetValue() != want.GetSelectors()[1].GetValue() ||
		got.GetDnsNames()[0] != want.GetDnsNames()[0] || got.GetActions()[0] != want.GetActions()[0] {
		t.Fatalf("got %v, want %v", got, want)
	}
	list, err := a.ListEntries(ctx, &brokerv1.ListEntriesRequest{})
	if err != nil || len(list.GetEntries()) != 4 {
		t.Fatalf("list: %v, %v", list, err)
	}
	if _, err := a.DeleteEntry(ctx, &brokerv1.DeleteEntryRequest{Id: created.GetId()}); err != nil {
		t.Fatal(err)
	}
	_, err = a.GetEntry(ctx, &brokerv1.GetEntryRequest{Id: created.GetId()})
	wantRefused(t, "get deleted", err, ReasonEntryUnknown)
	_, err = a.DeleteEntry(ctx, &brokerv1.DeleteEntryRequest{Id: created.GetId()})
	wantRefused(t, "delete twice", err, ReasonEntryUnknown)

	var creates, deletes int
	for _, e := range b.auditEntries(t) {
		switch {
		case e.Kind == "entry-create" && e.Refs["entry"] != "":
			creates++
		case e.Kind == "entry-delete" && e.Refs["entry"] == created.GetId():
			deletes++
		}
	}
	if creates != 4 || deletes != 1 {
		t.Fatalf("audited %d creations and %d deletions, want 4 and 1", creates, deletes)
	}

	// Not the admin: a node, and no caller at all.
	nodeCtx := b.as(t, spiffeid.RequireFromString("spiffe://writ.test/node/n1"))
	_, err = a.CreateEntry(nodeCtx, &brokerv1.CreateEntryRequest{Entry: goodEntry()})
	wantRefused(t, "node creates", err, ReasonNotAdmin)
	_, err = a.ListEntries(context.Background(), &brokerv1.ListEntriesRequest{})
	wantRefused(t, "anonymous lists", err, ReasonCallerUnauthenticated)
}

// TestCreateEntryUnaudited: when the audit log cannot record the
// creation, the entry is refused and not kept.
func TestCreateEntryUnaudited(t *testing.T) {
	b := newTestBroker(t, t.TempDir(), 1, defaultRules)
	ctx := b.adminCtx(t)
	if err := b.audit.Close(); err != nil {
		t.Fatal(err)
	}
	b.stopped = true // closed here, not by Stop
	t.Cleanup(func() {
		if err := errors.Join(b.store.Close(), b.writ.close()); err != nil {
			t.Error(err)
		}
	})
	_, err := (&admin{b: b.Broker}).CreateEntry(ctx, &brokerv1.CreateEntryRequest{Entry: goodEntry()})
	wantRefused(t, "create without audit", err, ReasonAuditFailed)
	es, err := b.store.Entries(context.Background())
	if err != nil || len(es) != 0 {
		t.Fatalf("entries kept without audit: %v, %v", es, err)
	}
}
