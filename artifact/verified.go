package artifact

import (
	"crypto/ecdsa"
	"slices"
	"strings"
	"sync"
)

// maxVerified bounds the cache of verified writs: at most this many
// tokens (each at most MaxTokenSize bytes) are kept.
const maxVerified = 1024

// verified caches the outcome of steps 1 and 2 of Verify (the token
// parses, and the key its kid names signed it) for writs that passed
// them, so that a multi-use writ presented again, as on a gateway's warm
// connection, is neither parsed nor its signature verified a second time.
//
// It is sound because both steps are a pure function of the exact token
// text and the key: an entry is found only for the identical token (the
// map compares the whole text), and used only when the key set passed now
// maps the entry's kid to a key equal to the one that verified it (the same
// curve and point); anything else is verified anew. Failures are never
// cached. Every later check (time, audience, subject, cnf, action, PCRs,
// single use) runs on every call, on a copy of the claims.
var verified = verifiedCache{m: map[string]verifiedWrit{}}

type verifiedCache struct {
	mu sync.Mutex
	m  map[string]verifiedWrit // token → its verified claims
}

type verifiedWrit struct {
	kid    string
	pub    *ecdsa.PublicKey // a copy of the key, which the caller may change
	claims *Claims          // never handed out: callers get copies
}

// get returns a copy of the claims of token if it is in the cache and
// keys maps its kid to the key that verified it. With anyKey it only
// looks the token up: for ParseUnverified, which checks no key and whose
// result is the same function of the text.
func (v *verifiedCache) get(token string, keys KeySet, anyKey bool) (*Claims, bool) {
	v.mu.Lock()
	e, ok := v.m[token]
	v.mu.Unlock()
	if !ok {
		return nil, false
	}
	if !anyKey {
		if pub := keys[e.kid]; pub == nil || !pub.Equal(e.pub) {
			return nil, false
		}
	}
	c := *e.claims
	c.Att.Sel = slices.Clone(c.Att.Sel)
	return &c, true
}

// add records that pub, the key set's key for kid, verified token, whose
// claims are c; full, it first drops an arbitrary entry.
func (v *verifiedCache) add(token, kid string, pub *ecdsa.PublicKey, c *Claims) {
	point, err := pub.Bytes()
	if err != nil {
		return
	}
	key, err := ecdsa.ParseUncompressedPublicKey(pub.Curve, point)
	if err != nil {
		return
	}
	kept := *c
	kept.Att.Sel = slices.Clone(c.Att.Sel)
	e := verifiedWrit{kid: kid, pub: key, claims: &kept}
	token = strings.Clone(token) // not a slice of a caller's larger string
	v.mu.Lock()
	defer v.mu.Unlock()
	if _, ok := v.m[token]; ok {
		return
	}
	if len(v.m) >= maxVerified {
		for k := range v.m {
			delete(v.m, k)
			break
		}
	}
	v.m[token] = e
}

func (v *verifiedCache) len() int {
	v.mu.Lock()
	defer v.mu.Unlock()
	return len(v.m)
}
