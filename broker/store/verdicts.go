package store

import (
	"slices"
	"sync"
)

// verdictCache keeps the decoded verdicts of results NodeStanding read, by
// result ID. A writ request reads its node's latest verdict every time and
// the verdict is JSON (findings, claims with the replayed runtime log,
// PCR selection): decoding it again was about as costly as the query
// (docs/adr/0047). A result is never changed once stored, and an entry is
// used only when the stored text it was decoded from is the text just
// read, so the cache answers exactly what decoding would.
type verdictCache struct {
	mu sync.Mutex
	m  map[string]cachedVerdict
}

// cachedVerdict is one result's verdict columns as read and as decoded.
type cachedVerdict struct {
	findings, claims, sel string
	r                     Result // Findings, Claims and Sel decoded
}

// maxCachedVerdicts bounds the cache (one entry per node that asks for
// writs, replaced when it attests again): past it, it starts again empty.
const maxCachedVerdicts = 4096

// decode fills r's Findings, Claims and Sel from their stored text. On a
// hit the Findings and Claims are those of an earlier decode, shared with
// its readers: NodeStanding's callers read them and never change them.
// Sel is copied: it is small and goes into writs.
func (c *verdictCache) decode(r *Result, findings, claims, sel string) error {
	c.mu.Lock()
	v, ok := c.m[r.ID]
	c.mu.Unlock()
	if ok && v.findings == findings && v.claims == claims && v.sel == sel {
		r.Findings, r.Claims, r.Sel = v.r.Findings, v.r.Claims, slices.Clone(v.r.Sel)
		return nil
	}
	if err := decodeVerdict(r, findings, claims, sel); err != nil {
		return err
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.m == nil || len(c.m) >= maxCachedVerdicts {
		c.m = make(map[string]cachedVerdict)
	}
	c.m[r.ID] = cachedVerdict{findings: findings, claims: claims, sel: sel,
		r: Result{Findings: r.Findings, Claims: r.Claims, Sel: slices.Clone(r.Sel)}}
	return nil
}
