package audit

import (
	"encoding/json"
	"testing"
)

// FuzzParseEvidence: untrusted evidence documents never panic, and one that
// parses has what Verify relies on.
func FuzzParseEvidence(f *testing.F) {
	f.Add([]byte(`{"node":"spiffe://t/node/a","ak_public":"AAEC","audit_keys":[{"public_key":"AQ==","nonce":"Ag==","pcrs":[0],"pcr_values":{"0":"` +
		"00000000000000000000000000000000000000000000000000000000000000aa" + `"}}],"audit_anchor":"x\n1\n"}`))
	f.Add([]byte(`{"ak_public":"AAEC","audit_keys":[{"pcr_values":{"0":"zz"}}]}`))
	f.Add([]byte(`null`))
	f.Fuzz(func(t *testing.T, b []byte) {
		ev, err := ParseEvidence(b)
		if err != nil {
			return
		}
		if len(ev.AKPublic) == 0 {
			t.Fatal("parsed evidence without an AK")
		}
		for _, k := range ev.AuditKeys {
			if _, err := k.pcrValues(); err != nil {
				t.Fatalf("parsed evidence with bad PCR values: %v", err)
			}
		}
	})
}

// FuzzParseKeyHistory: a fuzzed keys.jsonl after a valid key.json never
// panics, and a history that parses has one origin and no key twice.
func FuzzParseKeyHistory(f *testing.F) {
	key := newKey(f)
	info := KeyInfo{Kind: KeyFile, Origin: testOrigin, PublicKey: mustSPKI(f, key)}
	keyJSON, err := info.marshal()
	if err != nil {
		f.Fatal(err)
	}
	other := KeyInfo{Kind: KeyFile, Origin: testOrigin, PublicKey: mustSPKI(f, newKey(f))}
	line, _ := json.Marshal(&other)
	line = append(line, '\n')
	f.Add([]byte{})
	f.Add(line)
	f.Add(append(line, line...))
	f.Add([]byte("{}\n"))
	f.Fuzz(func(t *testing.T, keys []byte) {
		h, err := parseKeyHistory(keyJSON, keys)
		if err != nil {
			return
		}
		for i, k := range h {
			if k.Origin != testOrigin || h.index(k.PublicKey) != i {
				t.Fatalf("key %d: origin %q, or a key twice", i, k.Origin)
			}
		}
	})
}
