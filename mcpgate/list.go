package mcpgate

import (
	"context"
	"crypto/sha256"
	"crypto/x509"
	"encoding/hex"
	"errors"
	"strings"
	"sync"
	"time"

	"github.com/modelcontextprotocol/go-sdk/jsonrpc"
	"github.com/modelcontextprotocol/go-sdk/mcp"

	"github.com/writ-dev/writ/artifact"
)

// listTTL is how long the broker's answer to which tools a caller may
// call is reused for the same caller (leaf) and the same upstream list;
// listEntries bounds the cache (full, it is emptied).
const (
	listTTL     = 5 * time.Second
	listEntries = 4096
)

// listCache remembers permitted tool names by caller leaf and upstream
// tool list.
type listCache struct {
	mu      sync.Mutex
	entries map[string]listEntry
}

type listEntry struct {
	permitted map[string]bool
	until     time.Time
}

func newListCache() *listCache { return &listCache{entries: map[string]listEntry{}} }

func (c *listCache) get(key string, now time.Time) (map[string]bool, bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	e, ok := c.entries[key]
	if !ok || !now.Before(e.until) {
		return nil, false
	}
	return e.permitted, true
}

func (c *listCache) put(key string, permitted map[string]bool, until time.Time) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if len(c.entries) >= listEntries {
		clear(c.entries)
	}
	c.entries[key] = listEntry{permitted: permitted, until: until}
}

// listTools forwards tools/list to the upstream and returns only the tools
// the broker says some rule could let the caller call (ToolLister). On any
// error it returns an error, never the upstream's full list (fail closed).
// Listing is advisory: every call is still checked.
func (g *Gateway) listTools(ctx context.Context, chain []*x509.Certificate, cursor string) (mcp.Result, error) {
	if len(chain) == 0 {
		return nil, refused(ReasonCallerNoSVID)
	}
	if g.cfg.Tools == nil {
		return nil, refused(ReasonToolsListFailed)
	}
	res, err := g.cfg.Upstream.ListTools(ctx, &mcp.ListToolsParams{Cursor: cursor})
	if err != nil {
		var we *jsonrpc.Error
		if errors.As(err, &we) {
			return nil, we
		}
		g.cfg.Log.Error("upstream tools/list failed", "err", err)
		return nil, refused(ReasonUpstreamFailed)
	}
	names := make([]string, 0, len(res.Tools))
	for _, t := range res.Tools {
		if t != nil {
			names = append(names, t.Name)
		}
	}
	h := sha256.Sum256([]byte(g.cfg.ServerID + "\x00" + strings.Join(names, "\x00")))
	key := artifact.Thumbprint(chain[0]) + "/" + hex.EncodeToString(h[:])
	now := g.cfg.Now()
	permitted, ok := g.lists.get(key, now)
	if !ok {
		list, err := g.cfg.Tools.PermittedTools(ctx, chain, g.cfg.ServerID, names)
		if err != nil {
			g.cfg.Log.Info("tools/list refused", "detail", err)
			var br *BrokerRefusal
			if errors.As(err, &br) {
				return nil, refusedWith(br.Reason, br.Detail)
			}
			return nil, refused(ReasonToolsListFailed)
		}
		permitted = make(map[string]bool, len(list))
		for _, n := range list {
			permitted[n] = true
		}
		g.lists.put(key, permitted, now.Add(listTTL))
	}
	out := &mcp.ListToolsResult{NextCursor: res.NextCursor}
	for _, t := range res.Tools {
		if t != nil && permitted[t.Name] {
			out.Tools = append(out.Tools, t)
		}
	}
	if out.Tools == nil {
		out.Tools = []*mcp.Tool{}
	}
	return out, nil
}
