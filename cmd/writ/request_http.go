package main

import (
	"fmt"
	"strings"

	brokerv1 "github.com/writ-dev/writ/api/broker/v1"
)

// httpActionOf is the http action of method, rawURL (kept as written:
// nothing decoded or cleaned, the authority's ASCII letters lower-cased)
// and the --header flags: "NAME: VALUE" adds a value, "NAME" alone binds
// the header's absence. The broker checks the rest of the format.
func httpActionOf(method, rawURL string, headers []string) (*brokerv1.HTTPAction, error) {
	scheme, rest, ok := strings.Cut(rawURL, "://")
	if !ok || (scheme != "http" && scheme != "https") {
		return nil, fmt.Errorf("--http-url %q: not an http:// or https:// URL", rawURL)
	}
	if strings.Contains(rest, "#") {
		return nil, fmt.Errorf("--http-url %q: a fragment is never sent", rawURL)
	}
	end := strings.IndexAny(rest, "/?")
	if end < 0 {
		end = len(rest)
	}
	authority, target := rest[:end], rest[end:]
	if authority == "" || strings.Contains(authority, "@") {
		return nil, fmt.Errorf("--http-url %q: no host, or user information", rawURL)
	}
	path, query, _ := strings.Cut(target, "?")
	if path == "" {
		path = "/"
	}
	act := &brokerv1.HTTPAction{Method: method, Scheme: scheme, Authority: strings.Map(func(r rune) rune {
		if r >= 'A' && r <= 'Z' {
			return r + 'a' - 'A'
		}
		return r
	}, authority), Path: path, Query: query}
	index := map[string]*brokerv1.HTTPHeader{}
	for _, h := range headers {
		name, value, hasValue := strings.Cut(h, ":")
		name = strings.ToLower(strings.TrimSpace(name))
		if name == "" {
			return nil, fmt.Errorf("--header %q: no name", h)
		}
		hd, seen := index[name]
		if !seen {
			hd = &brokerv1.HTTPHeader{Name: name}
			index[name] = hd
			act.Headers = append(act.Headers, hd)
		}
		switch {
		case hasValue:
			if seen && len(hd.Values) == 0 {
				return nil, fmt.Errorf("--header %s: bound as absent and with a value", name)
			}
			hd.Values = append(hd.Values, strings.Trim(value, " \t"))
		case seen:
			return nil, fmt.Errorf("--header %s: bound as absent and with a value, or twice as absent", name)
		}
	}
	return act, nil
}
