// Package policy appraises a node's claims against an appraisal policy: reference
// values kept as data (YAML) plus conditions written in CEL. It denies by
// default, evaluates every rule (it does not stop at the first failure) and
// explains each failure with the rule, a stable reason code and the claim
// values the rule looked at. DryRun evaluates a candidate policy over the
// stored claims of many nodes without changing anything and reports the nodes
// it would lock out.
//
// The package is pure: it reads no TPM, store or network. Quote signatures,
// nonces and event log replay stay in package attest (attest.Appraise, fed
// with PCRValues); this package appraises what that replay established.
//
// # Policy file
//
// A policy is one YAML document. Unknown fields, duplicate keys and a second
// document are refused. Example:
//
//	id: fleet-boot
//	version: 3
//	pcrs:
//	  0: ["sha256:3d45…", "sha256:9ae1…"]
//	  7: ["sha256:b2c0…"]
//	require_event_log: true
//	secure_boot: required
//	boot_components:
//	  bootloader: ["sha256:…"]
//	  kernel: ["sha256:…"]
//	runtime_events:
//	  exec: ["sha256:…"]
//	conditions:
//	  - name: lockdown
//	    expr: 'claims.boot.secure_boot.enabled && claims.boot.kernel_cmdline.contains("lockdown=")'
//
// Fields:
//
//   - id (required): the policy's name: letters, digits, '.', '_' and '-',
//     starting with a letter or digit, at most 128 characters. Results record
//     the policy as "id@version" (Policy.Ref).
//   - version (required): an integer >= 1. Bump it on every change.
//   - pcrs (required, at least one PCR): for each PCR index (0-23) the list of
//     allowed sha256 values. The PCRs listed are the selection a node quotes
//     (Policy.Selection); each must hold one of its listed values. PCRs 16 and
//     23 are refused: they can be reset at locality 0 and prove nothing. A PCR
//     with an empty list is refused (it would deny every node).
//   - require_event_log (default false): the claims must include a replayed
//     boot event log ("event_log").
//   - secure_boot: "required" or "optional" (the default). Required means
//     boot.secure_boot.enabled must be true.
//   - boot_components (optional): for each component kind (firmware,
//     bootloader, kernel, initrd, …) the list of allowed sha256 digests. When
//     the section is present, every component in the claims must be of a
//     listed kind and have one of that kind's digests (a kind the policy does
//     not list is denied), and every listed kind must appear at least once.
//   - runtime_events (optional): for each runtime event kind (exec, …) the
//     list of allowed sha256 digests. When the section is present, every event
//     of the runtime log must be of a listed kind with one of its digests; any
//     other event is denied. An empty runtime log passes.
//   - conditions (optional): a list of {name, expr}. Names are letters,
//     digits, '_' and '-', unique within the policy. Each expr is a CEL
//     expression over the variable claims (type map(string, dyn)) that must
//     have type bool (compare a dyn value explicitly: claims.x == true); it is
//     parsed and type checked when the policy loads. A condition passes only
//     when it evaluates to true; false is condition_false and an evaluation
//     error is condition_error, never a pass. A condition that reads a claim
//     the document does not hold fails with claims_missing: a claim the
//     evidence did not establish is absent, never an empty string or false.
//
// Digests are written "sha256:" followed by 64 hex digits (the prefix may be
// left out; case does not matter). Lists of allowed values may not be empty.
//
// What a policy does not check, it does not check: a policy with no
// boot_components section accepts any boot components, one with no
// runtime_events section accepts any runtime log. Policy.Rules lists what a
// policy checks.
//
// # CEL conditions
//
// Conditions run in a sandboxed CEL environment: the standard library and
// macros (has, all, exists, exists_one, map, filter), cross-type numeric
// comparison (JSON numbers are doubles, so claims.event_log.events > 10
// works), and the CEL string extensions except replace and format, whose
// output can grow without bound. Expressions are at most 16384 characters.
// Each evaluation has a cost limit (CostLimit) and is interrupted when its
// context ends; an expression whose minimum cost already exceeds the limit is
// refused when the policy loads. Examples:
//
//	claims.boot.secure_boot.enabled && claims.boot.kernel_cmdline.contains("lockdown=")
//	!claims.boot.kernel_cmdline.contains("init=")
//	claims.runtime.events.all(e, e.kind != "exec" || e.argv_digest != "")
//	has(claims.event_log) && claims.event_log.events_by_pcr["4"] >= 2
//
// # Claims document
//
// A policy is evaluated over a claims document: the JSON form of the claims an
// appraisal established (attest.Claims through ClaimsDocument, or a stored
// result decoded with encoding/json into map[string]any). The rules read:
//
//	{
//	  "pcrs": {"0": "<hex sha256>", "7": "<hex sha256>"},
//	  "event_log": {"events": 42, "events_by_pcr": {"0": 10, "7": 5}},
//	  "boot": {
//	    "secure_boot": {"enabled": true},
//	    "components": [{"kind": "kernel", "digest": "<hex sha256>"}],
//	    "kernel_cmdline": "ro quiet lockdown=integrity"
//	  },
//	  "runtime": {
//	    "events": [{"kind": "exec", "digest": "<hex sha256>", "argv_digest": "<hex sha256>"}]
//	  }
//	}
//
// Digests in claims may carry a "sha256:" prefix. Nested objects are
// map[string]any and arrays []any (or []map[string]any), as encoding/json
// produces. Other fields are ignored by the data rules and visible to
// conditions. A section a rule needs that is absent or has the wrong type
// fails that rule with reason claims_missing (fail closed): pcrs for the PCR
// rules, event_log for require_event_log, boot.secure_boot.enabled for
// secure_boot: required, boot.components for boot_components, and
// runtime.events for runtime_events. A claim the evidence did not establish
// (a kernel command line no measured event carries, say) is absent from the
// document, never an empty string, so a condition that reads it fails with
// claims_missing.
//
// # Findings
//
// Each failure is a Finding with a Rule ("pcrs.7", "require_event_log",
// "secure_boot", "boot_components.kernel", "runtime_events.exec",
// "conditions.lockdown"), a stable Reason (policy_denied,
// secure_boot_required, boot_component_denied, runtime_event_denied,
// condition_false, condition_error, claims_missing), the PCR it concerns (or
// NoPCR), detail a user may read, and the claim values the rule looked at,
// keyed by their path in the claims document ("pcrs.7",
// "boot.components[2].digest", "boot.kernel_cmdline").
package policy
