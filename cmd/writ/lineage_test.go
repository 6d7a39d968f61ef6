package main

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"flag"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/writ-dev/writ/audit"
	"github.com/writ-dev/writ/identity"
)

var updateGolden = flag.Bool("update", false, "rewrite the golden files")

var lineageT0 = time.Date(2026, 12, 2, 4, 0, 0, 0, time.UTC)

const (
	lineageNode1 = "spiffe://example.org/node/n1"
	lineageNode2 = "spiffe://example.org/node/n2"
)

func writIssue(sec int, jti, parent string) audit.Entry {
	return audit.Entry{Kind: "writ-issue", Time: lineageT0.Add(time.Duration(sec) * time.Second), Subject: lineageNode1, Decision: "allow",
		Refs: map[string]string{"jti": jti, "parent": parent, "action": "sha256:" + jti, "result": "r1"}}
}

func execEntry(sec int, kind, node, jti, parent, path string) audit.Entry {
	e := audit.Entry{Kind: kind, Time: lineageT0.Add(time.Duration(sec) * time.Second), Subject: node, Decision: "allow",
		Refs: map[string]string{"jti": jti, "path": path, "sha256": "ab" + jti, "action": "sha256:" + jti}}
	if parent != "" {
		e.Refs["parent"] = parent
	}
	if kind != "exec-allow" {
		e.Decision, e.Reason = "deny", "executable_mismatch"
	}
	return e
}

// writeLog writes entries into a new audit log, written and checkpointed
// by the audit package itself with a file key, and returns its directory
// and the key's PEM file.
func writeLog(t *testing.T, name string, entries ...audit.Entry) (dir, pub string) {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	dir = filepath.Join(t.TempDir(), name)
	l, err := audit.Create(dir, key, audit.KeyInfo{Kind: audit.KeyFile}, audit.Options{Origin: "writ.test/audit/" + name})
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range entries {
		if _, err := l.Append(context.Background(), e); err != nil {
			t.Fatal(err)
		}
	}
	if err := l.Close(); err != nil { // signs a checkpoint over them
		t.Fatal(err)
	}
	pub = filepath.Join(t.TempDir(), name+".pub")
	if err := identity.WritePublicKey(pub, key.Public()); err != nil {
		t.Fatal(err)
	}
	return dir, pub
}

// lineageFamily is a broker's log and two nodes' logs: a shell (root) ran
// make (child-a) on n1, whose child was refused on n2, and cc (child-b).
func lineageFamily(t *testing.T) (logs, keys []string) {
	t.Helper()
	for _, l := range []struct {
		name    string
		entries []audit.Entry
	}{
		{"broker", []audit.Entry{writIssue(0, "root", ""), writIssue(1, "child-a", "root"), writIssue(2, "grand", "child-a"),
			writIssue(3, "child-b", "root"), writIssue(4, "stranger", "")}},
		{"n1", []audit.Entry{execEntry(0, "exec-allow", lineageNode1, "root", "", "/usr/bin/bash"),
			execEntry(1, "exec-allow", lineageNode1, "child-a", "root", "/usr/bin/make"),
			execEntry(3, "exec-allow", lineageNode1, "child-b", "root", "/usr/bin/cc")}},
		{"n2", []audit.Entry{execEntry(2, "exec-deny", lineageNode2, "grand", "child-a", "/usr/bin/curl")}},
	} {
		dir, pub := writeLog(t, l.name, l.entries...)
		logs, keys = append(logs, dir), append(keys, pub)
	}
	return logs, keys
}

func runLineage(t *testing.T, args ...string) (stdout, stderr string, code int) {
	t.Helper()
	var out, errOut bytes.Buffer
	err := newApp(&out, &errOut).Run(append([]string{"writ", "lineage"}, args...))
	if err == nil {
		return out.String(), errOut.String(), 0
	}
	errOut.WriteString(err.Error())
	return out.String(), errOut.String(), exitCode(err)
}

func lineageArgs(logs, keys []string, extra ...string) []string {
	var args []string
	for _, l := range logs {
		args = append(args, "--log", l)
	}
	for _, k := range keys {
		args = append(args, "--key", k)
	}
	return append(append(args, "--allow-file-key"), extra...)
}

// TestLineageGolden: writ lineage of a grandchild, from three verified
// logs, in each format.
func TestLineageGolden(t *testing.T) {
	logs, keys := lineageFamily(t)
	for _, format := range []string{"text", "dot", "mermaid", "json"} {
		out, stderr, code := runLineage(t, lineageArgs(logs, keys, "--format", format, "grand")...)
		if code != 0 {
			t.Fatalf("%s: exit %d: %s", format, code, stderr)
		}
		path := filepath.Join("testdata", "lineage", "family."+format)
		if *updateGolden {
			if err := os.WriteFile(path, []byte(out), 0o644); err != nil {
				t.Fatal(err)
			}
		}
		want, err := os.ReadFile(path)
		if err != nil {
			t.Fatal(err)
		}
		if out != string(want) {
			t.Errorf("%s:\ngot\n%s\nwant\n%s", format, out, want)
		}
	}
}

// TestLineageRefusals: a log is read only once it verifies against a key
// or evidence given, or with --unverified, which warns.
func TestLineageRefusals(t *testing.T) {
	logs, keys := lineageFamily(t)
	// Tamper with the node n2's entry: it no longer verifies.
	entries := filepath.Join(logs[2], "entries.jsonl")
	raw, err := os.ReadFile(entries)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(entries, bytes.Replace(raw, []byte("exec-deny"), []byte("exec-allo"), 1), 0o600); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name string
		args []string
		code int
		want string
	}{
		{"tampered log", lineageArgs(logs, keys, "grand"), 1, "does not verify against any --key or --evidence"},
		{"key of another log", lineageArgs(logs[:1], keys[1:2], "grand"), 1, "does not verify"},
		{"no key", []string{"--log", logs[0], "grand"}, 1, "or --unverified"},
		{"no log", []string{"--unverified", "grand"}, 1, "give at least one --log"},
		{"unverified and a key", lineageArgs(logs, keys, "--unverified", "grand"), 1, "choose one"},
		{"unverified", []string{"--unverified", "--log", logs[0], "--log", logs[2], "grand"}, 0, "warning: --unverified"},
		{"unknown jti", lineageArgs(logs[:2], keys[:2], "nope"), 1, "no log records this writ"},
		{"unknown format", lineageArgs(logs[:2], keys[:2], "--format", "svg", "root"), 1, `format "svg"`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			out, stderr, code := runLineage(t, tc.args...)
			if code != tc.code || !strings.Contains(stderr, tc.want) {
				t.Fatalf("exit %d, stderr %q, stdout %q; want exit %d and %q", code, stderr, out, tc.code, tc.want)
			}
		})
	}
}

// TestLineageProblems: a cycle and a dangling parent in verified logs are
// printed and exit with status 1.
func TestLineageProblems(t *testing.T) {
	dir, pub := writeLog(t, "broker", writIssue(0, "a", "b"), writIssue(1, "b", "a"), writIssue(2, "c", "gone"))
	for jti, want := range map[string]string{"a": "problem: lineage_cycle", "c": "problem: lineage_dangling_parent"} {
		out, stderr, code := runLineage(t, "--log", dir, "--key", pub, "--allow-file-key", jti)
		if code != 1 || !strings.Contains(out, want) || !strings.Contains(stderr, "problem") {
			t.Fatalf("%s: exit %d, stdout %q, stderr %q; want exit 1 and %q", jti, code, out, stderr, want)
		}
	}
}
