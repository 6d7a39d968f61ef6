package artifact

import (
	"encoding/binary"
	"fmt"
	"maps"
	"slices"
	"strings"
)

// KindHTTP is the kind of an Action that sends one HTTP request.
const KindHTTP = "http"

// HTTPRequest is one HTTP request exactly as the enforcement point sees it
// (docs/writ-format.md, section 4). Nothing is decoded or cleaned: what is
// sent is what is bound.
type HTTPRequest struct {
	Method    string // the request method as sent, case-sensitive: GET, POST, …
	Scheme    string // "http" or "https"
	Authority string // host[:port] of the target (:authority, or Host), ASCII letters lower-cased
	Path      string // the target's path as sent (percent-encoding kept), starting with "/"
	Query     string // the target's query as sent, without the "?"; "" for none
	// Headers are the bound headers: the requester chooses which. Each
	// name is lower-case and maps to its values in the order they appear
	// in the request; a name with no values binds the header's absence.
	Headers map[string][]string
	// BodySHA256 is the lower-case hex sha256 of the exact body bytes (of
	// the empty string for no body).
	BodySHA256 string
}

func (h *HTTPRequest) validate() error {
	switch {
	case h == nil:
		return fmt.Errorf("artifact: http action without its request")
	case h.Method == "" || !isToken(h.Method):
		return fmt.Errorf("artifact: http method %q is not a token", h.Method)
	case h.Scheme != "http" && h.Scheme != "https":
		return fmt.Errorf("artifact: http scheme %q is not http or https", h.Scheme)
	case h.Authority == "" || strings.ContainsAny(h.Authority, "@/?#\\") || !isVisibleASCII(h.Authority) || strings.ToLower(h.Authority) != h.Authority:
		return fmt.Errorf("artifact: http authority %q is not a lower-case host[:port]", h.Authority)
	case !strings.HasPrefix(h.Path, "/") || strings.ContainsAny(h.Path, "?#") || !isVisibleASCII(h.Path):
		return fmt.Errorf("artifact: http path %q does not start with / or holds ?, # or a byte outside visible ASCII", h.Path)
	case strings.Contains(h.Query, "#") || !isVisibleASCII(h.Query):
		return fmt.Errorf("artifact: http query %q holds # or a byte outside visible ASCII", h.Query)
	case !isSHA256Hex(h.BodySHA256):
		return fmt.Errorf("artifact: http body sha256 %q is not 64 lower-case hex digits", h.BodySHA256)
	}
	for name, values := range h.Headers {
		if name == "" || !isToken(name) || strings.ToLower(name) != name {
			return fmt.Errorf("artifact: http header name %q is not a lower-case token", name)
		}
		for _, v := range values {
			if strings.ContainsAny(v, "\x00\r\n") || strings.TrimLeft(v, " \t") != v || strings.TrimRight(v, " \t") != v {
				return fmt.Errorf("artifact: http header %s: a value holds NUL, CR or LF, or leading or trailing whitespace", name)
			}
		}
	}
	return nil
}

// appendHTTP appends the fields of an http action after str(kind):
//
//	str(method) str(scheme) str(authority) str(path) str(query)
//	u32(len(headers)) then, by name (bytewise), str(name) u32(len(values)) str(value) …
//	str(body sha256)
func appendHTTP(b []byte, h *HTTPRequest) []byte {
	for _, s := range []string{h.Method, h.Scheme, h.Authority, h.Path, h.Query} {
		b = appendString(b, s)
	}
	names := slices.Sorted(maps.Keys(h.Headers))
	b = binary.BigEndian.AppendUint32(b, uint32(len(names)))
	for _, name := range names {
		b = appendString(b, name)
		b = binary.BigEndian.AppendUint32(b, uint32(len(h.Headers[name])))
		for _, v := range h.Headers[name] {
			b = appendString(b, v)
		}
	}
	return appendString(b, h.BodySHA256)
}

func (h *HTTPRequest) size() int {
	n := 4*8 + len(h.Method) + len(h.Scheme) + len(h.Authority) + len(h.Path) + len(h.Query) + len(h.BodySHA256)
	for name, values := range h.Headers {
		n += 8 + len(name)
		for _, v := range values {
			n += 4 + len(v)
		}
	}
	return n
}

// URL returns scheme://authority/path?query.
func (h *HTTPRequest) URL() string {
	u := h.Scheme + "://" + h.Authority + h.Path
	if h.Query != "" {
		u += "?" + h.Query
	}
	return u
}

// isToken reports whether s is an RFC 9110 token (tchar only).
func isToken(s string) bool {
	for i := 0; i < len(s); i++ {
		if !isTchar(s[i]) {
			return false
		}
	}
	return true
}

func isTchar(c byte) bool {
	return c >= '0' && c <= '9' || c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || strings.IndexByte("!#$%&'*+-.^_`|~", c) >= 0
}

// isVisibleASCII reports whether s holds only bytes 0x21–0x7e.
func isVisibleASCII(s string) bool {
	for i := 0; i < len(s); i++ {
		if s[i] <= ' ' || s[i] >= 0x7f {
			return false
		}
	}
	return true
}
