package broker

import (
	"context"
	"errors"
	"fmt"
	"reflect"

	"gopkg.in/yaml.v3"

	"github.com/writ-dev/writ/identity"
)

// ReasonReloadInvalid refuses a reload whose configuration does not load:
// the policy and rules in force stay (docs/adr/0039).
const ReasonReloadInvalid = "reload_invalid"

// AuditKindReload is the audit entry of a reload, applied (allow) or
// refused (deny, ReasonReloadInvalid).
const AuditKindReload = "config-reload"

// ruleset is what the broker judges by: the appraisal policy and the writ
// rules, with what is derived from them. It is swapped whole (Reload),
// never changed in place, so a check reads one consistent ruleset.
type ruleset struct {
	appr    *appraiser
	actions actionPolicy
	aud     audiencePolicy
	// rulesVersion is what approvals are bound to (approval.go);
	// anyApproval says whether any rule requires one.
	rulesVersion string
	anyApproval  bool
}

// ruleset builds the policy and rules c configures.
func (c *Config) ruleset() (*ruleset, error) {
	pol, err := c.policy()
	if err != nil {
		return nil, fmt.Errorf("broker: %w", err)
	}
	appr, err := newAppraiser(pol)
	if err != nil {
		return nil, fmt.Errorf("broker: policy: %w", err)
	}
	actions, err := c.actionPolicy()
	if err != nil {
		return nil, fmt.Errorf("broker: %w", err)
	}
	aud, err := c.audiencePolicy(actions)
	if err != nil {
		return nil, fmt.Errorf("broker: %w", err)
	}
	version, err := c.rulesVersion()
	if err != nil {
		return nil, err
	}
	r := &ruleset{appr: appr, actions: actions, aud: aud, rulesVersion: version}
	for _, a := range actions {
		r.anyApproval = r.anyApproval || a.approval != nil
	}
	return r, nil
}

// rules returns the policy and rules in force. A caller that reads them
// more than once for one decision keeps what rules returned.
func (b *Broker) rules() *ruleset { return b.judge.Load() }

// PolicyRef returns the appraisal policy in force, as id@version.
func (b *Broker) PolicyRef() string { return b.rules().appr.Policy().Ref() }

// RulesVersion returns the version of the writ rules in force
// ("sha256:…" of their canonical form).
func (b *Broker) RulesVersion() string { return b.rules().rulesVersion }

// Reload reads the configuration file at path again (as LoadConfig does)
// and puts its policy and writ rules in force; they apply to every check
// that starts afterwards. Other settings take effect only at a restart:
// changes to them are logged and audited as ignored. When the file, the
// policy or the rules do not load, nothing changes: the refusal is logged,
// counted (writ_broker_refusals_total{op="reload"}) and audited, and the
// error returned. Every reload is audited (AuditKindReload), applied or
// refused; a reload that cannot be audited is not applied.
func (b *Broker) Reload(ctx context.Context, path string, expandEnv bool) error {
	b.reloadMu.Lock()
	defer b.reloadMu.Unlock()
	old := b.rules()
	refs := map[string]string{"policy": old.appr.Policy().Ref(), "rules": old.rulesVersion, "file": path}
	cfg, err := LoadConfig(path, expandEnv)
	var next *ruleset
	if err == nil {
		next, err = cfg.ruleset()
	}
	if err != nil {
		b.metrics.refusals.WithLabelValues("reload", ReasonReloadInvalid).Inc()
		b.log.Error("reload refused: the policy and rules in force stay", logReason, ReasonReloadInvalid, logPolicy, old.appr.Policy().Ref(), "rules", old.rulesVersion, "err", err)
		refs["error"] = err.Error()
		return errors.Join(fmt.Errorf("broker: reload refused (%s): %w", ReasonReloadInvalid, err),
			b.record(ctx, AuditKindReload, b.subject(), "deny", ReasonReloadInvalid, refs))
	}
	refs = map[string]string{"policy": next.appr.Policy().Ref(), "rules": next.rulesVersion, "file": path,
		"previous_policy": old.appr.Policy().Ref(), "previous_rules": old.rulesVersion}
	ignored := restartOnly(b.cfg, cfg)
	if len(ignored) > 0 {
		refs["ignored"] = fmt.Sprint(ignored)
		b.log.Warn("reload: these settings changed and take effect only at a restart", "settings", ignored)
	}
	if err := b.record(ctx, AuditKindReload, b.subject(), "allow", "", refs); err != nil {
		return fmt.Errorf("broker: reload not applied: %w", err)
	}
	b.judge.Store(next)
	b.log.Info("reloaded policy and rules", logPolicy, next.appr.Policy().Ref(), "rules", next.rulesVersion,
		"previous_policy", old.appr.Policy().Ref(), "previous_rules", old.rulesVersion)
	return nil
}

func (b *Broker) subject() string { return identity.BrokerID(b.td).String() }

// restartOnly names the top-level settings (YAML keys) that differ between
// the running configuration and a reloaded one, besides the policy and
// the writ rules, which a reload applies.
func restartOnly(running, loaded *Config) []string {
	a, c := *running, *loaded
	a.Policy, c.Policy = yaml.Node{}, yaml.Node{}
	a.PolicyFile, c.PolicyFile = "", ""
	a.Writ.Rules, c.Writ.Rules = nil, nil
	var names []string
	ta := reflect.TypeFor[Config]()
	va, vc := reflect.ValueOf(a), reflect.ValueOf(c)
	for i := range ta.NumField() {
		if !reflect.DeepEqual(va.Field(i).Interface(), vc.Field(i).Interface()) {
			names = append(names, ta.Field(i).Tag.Get("yaml"))
		}
	}
	return names
}
