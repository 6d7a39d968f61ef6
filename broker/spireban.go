package broker

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	agentv1 "github.com/spiffe/spire-api-sdk/proto/spire/api/server/agent/v1"
	entryv1 "github.com/spiffe/spire-api-sdk/proto/spire/api/server/entry/v1"
	"github.com/spiffe/spire-api-sdk/proto/spire/api/types"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/writ-dev/writ/audit"
	"github.com/writ-dev/writ/broker/store"
)

// Reason codes of spire-ban audit entries.
const (
	// ReasonSPIREAgentUnknown: SPIRE has no agent for the node, so there
	// was nothing to ban.
	ReasonSPIREAgentUnknown = "spire_agent_unknown"
	// ReasonSPIREUnreachable: a ban failed (SPIRE unreachable, or it
	// refused the broker); it is retried with backoff.
	ReasonSPIREUnreachable = "spire_unreachable"
)

// spireBanQueue is how many bans wait; more are dropped, logged and
// counted (a restart bans again every node out of standing).
const spireBanQueue = 256

// banner bans, in SPIRE, the agents of writ nodes that left good standing
// (docs/adr/0037). writ's own decision never waits for it: setState only
// queues the ban; one goroutine works the queue, retrying each ban with
// exponential backoff until SPIRE takes it or the broker stops.
type banner struct {
	c       *spireClient
	states  map[store.NodeState]bool
	record  func(ctx context.Context, kind, subject, decision, reason string, refs map[string]string) error
	log     *slog.Logger
	backoff time.Duration // first retry delay; doubles up to maxDelay
	max     time.Duration
	bans    *prometheus.CounterVec

	queue   chan banJob
	dropped atomic.Uint64
}

type banJob struct {
	node   store.Node
	state  store.NodeState
	reason string
	// reconcile: a ban made again at start, audited only when it bans an
	// agent that was not banned yet.
	reconcile bool
}

func newBanner(c *spireClient, b *Broker) *banner {
	bans := prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "writ_broker_spire_bans_total",
		Help: "Bans of SPIRE agents of nodes out of standing, by outcome: banned and already_banned (agents), no_agent, error (each failed try), dropped (bans).",
	}, []string{"outcome"})
	b.metrics.reg.MustRegister(bans)
	return &banner{c: c, states: c.cfg.banStates(), record: b.record, log: b.log, backoff: 250 * time.Millisecond, max: 30 * time.Second,
		bans: bans, queue: make(chan banJob, spireBanQueue)}
}

// notify queues a ban when state is one the configuration bans on; it
// never blocks.
func (s *banner) notify(n store.Node, state store.NodeState, reason string) {
	if !s.states[state] {
		return
	}
	select {
	case s.queue <- banJob{node: n, state: state, reason: reason}:
	default:
		s.dropped.Add(1)
		s.bans.WithLabelValues("dropped").Inc()
		s.log.Error("spire: ban queue full, ban dropped", logNode, n.SPIFFEID, "state", string(state))
	}
}

// reconcile bans again, one after the other, the agents of every node
// already out of standing in ban_on, so a ban lost to a restart or a full
// queue is made at the next start. It runs before the queue is worked.
func (s *banner) reconcile(ctx context.Context, st store.Store) {
	nodes, err := st.Nodes(ctx)
	if err != nil {
		s.log.Error("spire: list nodes to reconcile bans", "err", err)
		return
	}
	for _, n := range nodes {
		if s.states[n.State] && ctx.Err() == nil {
			s.ban(ctx, banJob{node: n, state: n.State, reason: n.StateReason, reconcile: true})
		}
	}
}

// run works the queue until ctx ends.
func (s *banner) run(ctx context.Context) {
	for {
		select {
		case <-ctx.Done():
			return
		case job := <-s.queue:
			s.ban(ctx, job)
		}
	}
}

// ban bans the node's SPIRE agents, retrying until SPIRE answers. The
// outcome is audited (kind spire-ban, decision info): refs.agents the
// agents banned now and refs.already_banned those SPIRE had banned
// before, or reason spire_agent_unknown; the first failure is audited too
// (decision fail, spire_unreachable), and every failure is logged and
// counted. A reconciling ban is audited only when it bans an agent.
func (s *banner) ban(ctx context.Context, job banJob) {
	refs := map[string]string{"state": string(job.state)}
	if job.reason != "" {
		refs["explanation"] = job.reason
	}
	delay := s.backoff
	for attempt := 1; ; attempt++ {
		banned, already, err := s.banOnce(ctx, job.node.ID)
		if err == nil {
			s.bans.WithLabelValues("banned").Add(float64(len(banned)))
			s.bans.WithLabelValues("already_banned").Add(float64(len(already)))
			switch {
			case len(banned) == 0 && len(already) == 0:
				s.bans.WithLabelValues("no_agent").Inc()
				if !job.reconcile {
					s.log.Warn("spire: no SPIRE agent for the node; nothing banned", logNode, job.node.SPIFFEID)
					_ = s.record(ctx, "spire-ban", job.node.SPIFFEID, audit.DecisionInfo, ReasonSPIREAgentUnknown, refs)
				}
			case len(banned) == 0 && job.reconcile:
			default:
				if len(banned) > 0 {
					refs["agents"] = strings.Join(banned, " ")
				}
				if len(already) > 0 {
					refs["already_banned"] = strings.Join(already, " ")
				}
				s.log.Info("spire: agents banned", logNode, job.node.SPIFFEID, "agents", refs["agents"], "already_banned", refs["already_banned"], "state", string(job.state))
				_ = s.record(ctx, "spire-ban", job.node.SPIFFEID, audit.DecisionInfo, "", refs)
			}
			return
		}
		s.bans.WithLabelValues("error").Inc()
		s.log.Warn("spire: ban failed; retrying", logNode, job.node.SPIFFEID, "attempt", attempt, "err", err)
		if attempt == 1 {
			errRefs := map[string]string{"state": string(job.state), "error": err.Error()}
			_ = s.record(ctx, "spire-ban", job.node.SPIFFEID, audit.DecisionFail, ReasonSPIREUnreachable, errRefs)
		}
		select {
		case <-ctx.Done():
			return
		case <-time.After(delay):
		}
		delay = min(2*delay, s.max)
	}
}

// banOnce finds the SPIRE agents of the node and bans each. The node's
// agents are:
//
//  1. the agent spiffe://<td>/spire/agent/writ/<node id> (AgentID), as
//     the writ SPIRE plugin names the agents it attests;
//  2. the agents that hold the node alias spiffe://<td>/node/<node id>
//     (AliasID) in SPIRE: the parent of an entry of that SPIFFE ID when the
//     parent is an agent (what `spire-server token generate -spiffeID
//     <alias>` makes for a join-token agent), and, for an entry whose
//     parent is the SPIRE server (`entry create -node`), every agent whose
//     selectors include all the entry's selectors, as SPIRE maps them. An
//     alias entry without selectors is ignored: it would name every agent.
//
// An agent SPIRE has banned already is not banned again; one that
// disappears between the lookup and the ban is skipped.
func (s *banner) banOnce(ctx context.Context, nodeID string) (banned, already []string, err error) {
	agents, err := s.c.agentsOf(ctx, nodeID)
	if err != nil {
		return nil, nil, err
	}
	for _, a := range agents {
		if a.banned {
			already = append(already, a.id.String())
			continue
		}
		cctx, cancel := context.WithTimeout(ctx, s.c.cfg.Timeout)
		_, err := s.c.agents.BanAgent(cctx, &agentv1.BanAgentRequest{Id: protoID(a.id)})
		cancel()
		if status.Code(err) == codes.NotFound {
			continue
		}
		if err != nil {
			return nil, nil, fmt.Errorf("broker: spire: ban %s: %w", a.id, err)
		}
		banned = append(banned, a.id.String())
	}
	return banned, already, nil
}

// spireAgent is a SPIRE agent and whether SPIRE has banned it.
type spireAgent struct {
	id     spiffeid.ID
	banned bool
}

// agentsOf returns the SPIRE agents of the writ node nodeID (banOnce).
func (c *spireClient) agentsOf(ctx context.Context, nodeID string) ([]spireAgent, error) {
	id, err := AgentID(c.td, nodeID)
	if err != nil {
		return nil, fmt.Errorf("broker: spire: node id %q: %w", nodeID, err)
	}
	alias, err := AliasID(c.td, nodeID)
	if err != nil {
		return nil, fmt.Errorf("broker: spire: node id %q: %w", nodeID, err)
	}
	ctx, cancel := context.WithTimeout(ctx, c.cfg.Timeout)
	defer cancel()
	found := agentSet{seen: map[spiffeid.ID]bool{}}
	if err := c.addAgent(ctx, id, &found); err != nil {
		return nil, err
	}
	server := spiffeid.RequireFromSegments(c.td, "spire", "server")
	req := &entryv1.ListEntriesRequest{Filter: &entryv1.ListEntriesRequest_Filter{BySpiffeId: protoID(alias)}}
	for {
		resp, err := c.entries.ListEntries(ctx, req)
		if err != nil {
			return nil, fmt.Errorf("broker: spire: list entries of %s: %w", alias, err)
		}
		for _, e := range resp.GetEntries() {
			parent, err := idFromProto(e.GetParentId())
			switch {
			case err != nil || parent.TrustDomain() != c.td:
			case parent == server:
				if len(e.GetSelectors()) == 0 {
					continue
				}
				if err := c.agentsWith(ctx, e.GetSelectors(), &found); err != nil {
					return nil, err
				}
			case strings.HasPrefix(parent.Path(), "/spire/agent/"):
				if err := c.addAgent(ctx, parent, &found); err != nil {
					return nil, err
				}
			}
		}
		if resp.GetNextPageToken() == "" {
			return found.agents, nil
		}
		req.PageToken = resp.GetNextPageToken()
	}
}

// addAgent adds the agent id, when SPIRE has it, with its ban.
func (c *spireClient) addAgent(ctx context.Context, id spiffeid.ID, found *agentSet) error {
	if found.seen[id] {
		return nil
	}
	a, err := c.agents.GetAgent(ctx, &agentv1.GetAgentRequest{Id: protoID(id), OutputMask: &types.AgentMask{Banned: true}})
	switch status.Code(err) {
	case codes.OK:
		found.add(spireAgent{id: id, banned: a.GetBanned()})
		return nil
	case codes.NotFound:
		return nil
	default:
		return fmt.Errorf("broker: spire: get agent %s: %w", id, err)
	}
}

// agentsWith adds the agents whose selectors include all of sel.
func (c *spireClient) agentsWith(ctx context.Context, sel []*types.Selector, found *agentSet) error {
	req := &agentv1.ListAgentsRequest{Filter: &agentv1.ListAgentsRequest_Filter{
		BySelectorMatch: &types.SelectorMatch{Selectors: sel, Match: types.SelectorMatch_MATCH_SUPERSET}},
		OutputMask: &types.AgentMask{Banned: true}}
	for {
		resp, err := c.agents.ListAgents(ctx, req)
		if err != nil {
			return fmt.Errorf("broker: spire: list agents: %w", err)
		}
		for _, a := range resp.GetAgents() {
			if id, err := idFromProto(a.GetId()); err == nil && id.TrustDomain() == c.td {
				found.add(spireAgent{id: id, banned: a.GetBanned()})
			}
		}
		if resp.GetNextPageToken() == "" {
			return nil
		}
		req.PageToken = resp.GetNextPageToken()
	}
}

type agentSet struct {
	seen   map[spiffeid.ID]bool
	agents []spireAgent
}

func (s *agentSet) add(a spireAgent) {
	if !s.seen[a.id] {
		s.seen[a.id] = true
		s.agents = append(s.agents, a)
	}
}

func protoID(id spiffeid.ID) *types.SPIFFEID {
	return &types.SPIFFEID{TrustDomain: id.TrustDomain().Name(), Path: id.Path()}
}

func idFromProto(p *types.SPIFFEID) (spiffeid.ID, error) {
	if p == nil {
		return spiffeid.ID{}, errors.New("no SPIFFE ID")
	}
	td, err := spiffeid.TrustDomainFromString(p.GetTrustDomain())
	if err != nil {
		return spiffeid.ID{}, err
	}
	return spiffeid.FromPath(td, p.GetPath())
}
