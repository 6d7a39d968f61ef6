#!/usr/bin/env bash
# make demo: the whole chain on one machine, on loopback, in a temporary
# directory: a software TPM, a broker, an agent, governed commands, the
# audit log. Every step checks that it behaved as described; any surprise
# stops the demo with a non-zero exit status.
set -uo pipefail
cd "$(dirname "$0")/.."
writ=$PWD/bin/writ
writ_exec=$PWD/bin/writ-exec
mcpdemo=$PWD/bin/mcpdemo # the demo's MCP server and client (deploy/mcpdemo), not part of writ
work=$(mktemp -d /tmp/writ-demo.XXXXXX)
chmod 711 "$work" # others may reach the agent's sockets in it; the agent's data directory stays 0700
pids=()
cleanup() {
  for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null; done
  [ -f "$work/tpm/swtpm.pid" ] && kill "$(cat "$work/tpm/swtpm.pid")" 2>/dev/null
  wait 2>/dev/null
  rm -rf "$work"
}
trap cleanup EXIT

step=0
say()  { step=$((step + 1)); printf '\n\033[1m%d. %s\033[0m\n' "$step" "$*"; }
ok()   { printf '   \033[32mok\033[0m: %s\n' "$*"; }
fail() { printf '   \033[31mUNEXPECTED\033[0m: %s\n' "$*"; exit 1; }
listening() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }
# Ports below the kernel's ephemeral range, so no outgoing connection holds one.
low=$(cut -f1 /proc/sys/net/ipv4/ip_local_port_range 2>/dev/null || echo 32768)
taken=" "
pick_port() { # VAR: a free port p (p+1 free too), distinct from those picked before
  local p
  while :; do
    p=$((10000 + RANDOM % (low - 10002)))
    case $taken in *" $p "* | *" $((p + 1)) "*) continue ;; esac
    listening "$p" || listening $((p + 1)) || { taken="$taken$p $((p + 1)) "; printf -v "$1" '%s' "$p"; return; }
  done
}
wait_port() { for _ in $(seq 100); do listening "$1" && return 0; sleep 0.1; done; return 1; }

pick_port api; pick_port bundle
pick_port tpmport # and tpmport+1, swtpm's control port
pick_port mcpport; pick_port gwport # the demo's MCP server, the MCP gateway
tpm=swtpm://127.0.0.1:$tpmport
shim=(--broker "127.0.0.1:$api" --tpm "$tpm" --data-dir "$work/agent")

say "Provision a software TPM like a real one: an endorsement key certified by its own manufacturer CA."
deploy/swtpm/start.sh "$work/tpm" "$tpmport" >/dev/null || fail "swtpm did not start"
ok "swtpm serves on 127.0.0.1:$tpmport; its EK certificate chains to $work/tpm/ca"

say "Measure a boot into the TPM (firmware, boot loader, kernel), so the node has a state to prove."
for m in "firmware 1.0" "bootloader" "vmlinuz-6.1" "initrd"; do "$writ" tpm extend --tpm "$tpm" 4 "$m" || fail "extend"; done
policy=$("$writ" tpm pcrs --tpm "$tpm" 0 4 7 | sed 's/^/  /') || fail "read PCRs"
ok "PCR 4 now holds the boot's measurements; the broker's policy will allow exactly these values"

say "Start the broker: it verifies TPM evidence, issues SPIFFE identities and writs."
sh_digest=$(sha256sum "$(readlink -f /bin/sh)" | cut -d' ' -f1)
printf '#!/bin/sh\necho "deployed $1" > proof\n' >"$work/deploy.sh"
chmod 755 "$work/deploy.sh"
deploy_digest=$(sha256sum "$work/deploy.sh" | cut -d' ' -f1)
cat >"$work/broker.yaml" <<YAML
trust_domain: demo.writ
listen: 127.0.0.1:$api
bundle_listen: 127.0.0.1:$bundle
data_dir: $work/broker
audit:
  signer: file
ek:
  roots: [$work/tpm/ca/swtpm-localca-rootca-cert.pem]
  intermediates: [$work/tpm/ca/issuercert.pem]
policy:
  id: demo-boot
  version: 1
$policy
writ:
  ttl: 3s
  rules:
    - subject: spiffe://demo.writ/node/*
      kind: exec
      executables: ["sha256:$sh_digest"]
    - subject: spiffe://demo.writ/node/*
      kind: exec
      executables: ["sha256:$deploy_digest"]   # a #! script: its digest, and its interpreter's
      interpreters: ["sha256:$sh_digest"]
      argv:
        prefix: [./deploy.sh]
    - subject: spiffe://demo.writ/node/*
      kind: mcp
      when: 'action.server == "spiffe://demo.writ/mcp/echo" && action.tool == "echo" && action.arguments.text.size() < 64'
      audiences: [spiffe://demo.writ/gateway]
gateways: # may ask for writs on behalf of their SVID-authenticated callers, and filter tools/list
  - id: spiffe://demo.writ/gateway
    kinds: [mcp]
YAML
"$writ" broker run --config "$work/broker.yaml" >"$work/broker.log" 2>&1 &
pids+=($!)
wait_port "$api" || { cat "$work/broker.log"; fail "the broker did not start"; }
ok "broker on 127.0.0.1:$api; it allows nodes to run /bin/sh (sha256 ${sh_digest:0:16}…) and deploy.sh through it, and to call the MCP tool echo with a text under 64 characters, and nothing else"

say "Start the node agent: it enrolls the TPM (EK check, credential activation), attests, and gets the node's SVID."
"$writ" agent run --broker "127.0.0.1:$api" --trust-domain demo.writ --bundle "$work/broker/bundle.json" \
  --tpm "$tpm" --data-dir "$work/agent" --interval 30s --workload-socket "$work/workload.sock" \
  --node-socket "$work/node.sock" >"$work/agent.log" 2>&1 &
pids+=($!)
for _ in $(seq 100); do [ -s "$work/agent/svid.pem" ] && break; sleep 0.1; done
[ -s "$work/agent/svid.pem" ] || { cat "$work/agent.log"; fail "the agent got no SVID"; }
for _ in $(seq 50); do [ -S "$work/node.sock" ] && break; sleep 0.1; done
ok "node SVID $(grep -o 'spiffe://[^"]*' "$work/agent/node.json" | head -c 64)…, its key inside the TPM; governed execs ask it on $work/node.sock"
agent=(--agent "$work/node.sock")

cd "$work"
expect_denied() { # reason, then writ exec arguments
  local reason=$1; shift
  rm -f "$work/proof"
  out=$("$writ" exec "$@" 2>&1)
  code=$?
  [ "$code" = 126 ] || fail "writ exec exited $code, not 126: $out"
  [ -e "$work/proof" ] && fail "the command ran although writ exec failed"
  [[ $out == "writ: denied: $reason: "* ]] || fail "denied, but not for $reason: $out"
  ok "refused with $reason, exit status $code, the command never ran"
  printf '      %s\n' "$out"
}

say "Run a governed command: writ exec hands the open executable to the agent, which seals a copy, gets a writ for exactly this command, reads the PCRs, records and measures the decision; writ exec checks the copy and the writ itself, then runs it."
rm -f proof
"$writ" exec "${agent[@]}" -- /bin/sh -c 'echo "hello from a governed shell" > proof' || fail "the governed command was refused"
[ -s proof ] || fail "the command did not run"
ok "it ran: $(cat proof)"

say "The same as an unprivileged user (nobody) with writ-exec, the small shim (no gRPC, no TPM code): it needs neither the TPM nor the agent's data directory, which it cannot open."
out=$(cd / && setpriv --reuid 65534 --regid 65534 --clear-groups "$writ_exec" "${agent[@]}" -- /bin/sh -c 'echo "ran as uid $(id -u)"' 2>&1) || fail "writ-exec as nobody was refused: $out"
[ "$out" = "ran as uid 65534" ] || fail "unexpected output: $out"
direct=$(cd / && setpriv --reuid 65534 --regid 65534 --clear-groups "$writ" exec --direct "${shim[@]}" -- /bin/sh -c true 2>&1) && fail "the direct path worked for nobody"
grep -q '"caller_uid":"65534"' "$work/agent/audit/entries.jsonl" || fail "the agent's audit entry does not name the caller"
ok "$out; the agent's audit entry names caller_uid 65534; the direct path for nobody: ${direct#writ: denied: }"

say "Run a governed script: the script and its interpreter are each run from a sealed copy, both digests bound into the writ."
rm -f proof
"$writ" exec "${agent[@]}" -- ./deploy.sh prod || fail "the governed script was refused"
[ "$(cat proof)" = "deployed prod" ] || fail "the script did not run"
ok "it ran: $(cat proof)"

say "Refused: a loader or interpreter variable (here BASH_ENV) is never passed by default, although /bin/sh is allowed."
BASH_ENV=$work/evil.sh expect_denied env_dangerous "${agent[@]}" --env BASH_ENV -- /bin/sh -c 'echo evil > proof'

say "Refused: a writ for one command cannot run another (argv differs)."
"$writ" request "${shim[@]}" -- /bin/sh -c 'echo harmless' >writ-harmless.jws || fail "writ request"
expect_denied action_mismatch --direct "${shim[@]}" --writ writ-harmless.jws -- /bin/sh -c 'echo other > proof'

say "Refused: a writ expires (this broker issues them for 3 s)."
"$writ" request "${shim[@]}" -- /bin/sh -c 'echo late > proof' >writ-late.jws || fail "writ request"
sleep 4
expect_denied writ_expired --direct "${shim[@]}" --skew 0s --writ writ-late.jws -- /bin/sh -c 'echo late > proof'

say "Start an MCP server (the official Go SDK, one tool: echo) and writ gateway mcp in front of it; the gateway gets its SVID (spiffe://demo.writ/gateway) from the node agent's Workload API, through a registration entry for the writ binary run as this user."
"$mcpdemo" upstream "127.0.0.1:$mcpport" "$work/mcp-calls" >"$work/mcp.log" 2>&1 &
pids+=($!)
node_id=$(grep -o 'spiffe://[^"]*' "$work/agent/node.json")
"$writ" entry create --config "$work/broker.yaml" --spiffe-id spiffe://demo.writ/gateway --parent "$node_id" \
  --selector "unix:uid:$(id -u)" --selector "unix:sha256:$(sha256sum "$writ" | cut -d' ' -f1)" >"$work/gateway-entry.txt" || fail "the gateway's registration entry"
"$writ" gateway mcp --listen "127.0.0.1:$gwport" --upstream "http://127.0.0.1:$mcpport/" --server-id spiffe://demo.writ/mcp/echo \
  --broker "127.0.0.1:$api" --trust-domain demo.writ --bundle "$work/broker/bundle.json" \
  --workload-api "unix://$work/workload.sock" --data-dir "$work/gateway" >"$work/gateway.log" 2>&1 &
pids+=($!)
wait_port "$mcpport" || { cat "$work/mcp.log"; fail "the MCP server did not start"; }
wait_port "$gwport" || { cat "$work/gateway.log"; fail "the gateway did not start"; }
ok "MCP server on 127.0.0.1:$mcpport; gateway on https://127.0.0.1:$gwport/ (mTLS, SVIDs; no SVID files)"
mcp_writ=("$writ" request --direct "${shim[@]}" --once --mcp-server spiffe://demo.writ/mcp/echo --tool echo --audience spiffe://demo.writ/gateway)
mcp_call=("$mcpdemo" call --tpm "$tpm" --data-dir "$work/agent" --bundle "$work/broker/bundle.json"
  --trust-domain demo.writ --gateway "https://127.0.0.1:$gwport/" --tool echo)

say "A governed tool call: writ request --mcp-server gets a single-use writ for echo with exactly these arguments (the node's SVID, key in the TPM); the client sends it in params._meta; the gateway checks it, spends it at the broker, records the decision and forwards the call."
"${mcp_writ[@]}" --arguments '{"text":"hello from a governed tool call"}' >writ-mcp.jws || fail "writ request --mcp-server"
out=$("${mcp_call[@]}" --writ writ-mcp.jws --arguments '{"text":"hello from a governed tool call"}' 2>&1) || fail "the governed tool call was refused: $out"
[ "$out" = "hello from a governed tool call" ] || fail "unexpected result: $out"
[ "$(wc -l <"$work/mcp-calls")" = 1 ] || fail "the MCP server did not see exactly one call"
parent=$(sed -n '1s/.*\tparent=//p' "$work/mcp-calls")
[ -n "$parent" ] && grep -q "\"jti\":\"$parent\"" "$work/gateway/audit/entries.jsonl" || fail "the MCP server did not see the checked writ's jti as the parent: '$parent'"
ok "the server answered: $out; it saw the writ's jti as params._meta[dev.writ/parent]"

say "A tool call without a writ: the gateway asks the broker for a single-use writ bound to exactly this call, for the caller's SVID (the broker lists the gateway and checks the caller's node), then checks and spends it as any other."
out=$("${mcp_call[@]}" --arguments '{"text":"no writ at hand"}' 2>&1) || fail "the call without a writ was refused: $out"
[ "$out" = "no writ at hand" ] || fail "unexpected result: $out"
[ "$(wc -l <"$work/mcp-calls")" = 2 ] || fail "the MCP server did not see the second call"
out=$("${mcp_call[@]}" --arguments '{"text":"'"$(printf 'x%.0s' $(seq 80))"'"}' 2>&1)
[ "$out" = "refused: action_denied" ] || fail "a call no rule allows, without a writ: $out"
[ "$(wc -l <"$work/mcp-calls")" = 2 ] || fail "a refused call reached the MCP server"
ok "allowed; a text of 80 characters (the rule allows under 64) refused with action_denied by the broker, and the server never saw it"

say "Refused: a writ for one tool call cannot make another (same tool, other arguments); nothing reaches the MCP server."
"${mcp_writ[@]}" --arguments '{"text":"harmless"}' >writ-mcp-harmless.jws || fail "writ request --mcp-server"
out=$("${mcp_call[@]}" --writ writ-mcp-harmless.jws --arguments '{"text":"cat /etc/shadow"}' 2>&1)
code=$?
[ "$code" = 126 ] || fail "mcpdemo call exited $code, not 126: $out"
[ "$out" = "refused: action_mismatch" ] || fail "refused, but not for action_mismatch: $out"
[ "$(wc -l <"$work/mcp-calls")" = 2 ] || fail "a refused call reached the MCP server"
"$writ" audit verify --key "$work/gateway/audit.pub" --allow-file-key --allow-unsigned-tail "$work/gateway/audit" >"$work/gateway-verify.txt" 2>&1 || { cat "$work/gateway-verify.txt"; fail "the gateway's audit log does not verify"; }
ok "refused with action_mismatch, exit status 126; the MCP server still saw two calls; the gateway's audit log (every decision) verifies:"
"$writ" audit show "$work/gateway/audit" | sed 's/^/      /' 

say "Sign a checkpoint of the node's audit log: the agent does this in batches; here we ask for one now."
"$writ" audit checkpoint --tpm "$tpm" --data-dir "$work/agent" || fail "the node's audit key did not sign"
ok "signed by the node's TPM-resident key, usable only while the boot PCRs hold their attested values"

say "Refused: the node's state changed after the writ was issued (a PCR was extended)."
"$writ" request "${shim[@]}" -- /bin/sh -c 'echo changed > proof' >writ-changed.jws || fail "writ request"
"$writ" tpm extend --tpm "$tpm" 7 "SecureBoot=disabled" || fail "extend"
expect_denied attestation_mismatch --direct "${shim[@]}" --writ writ-changed.jws -- /bin/sh -c 'echo changed > proof'

say "The node's audit key now refuses to sign: it is bound to the boot PCRs, and PCR 7 changed."
if "$writ" audit checkpoint --tpm "$tpm" --data-dir "$work/agent" 2>"$work/checkpoint.err"; then fail "the audit key signed after the PCRs changed"; fi
ok "refused: $(head -c 120 "$work/checkpoint.err")"

say "Verify the node's audit log offline against what the broker attested (not the node's files): the AK it enrolled, the audit key it recorded with a passing attestation's PCR values and nonce, the checkpoint it anchored."
"$writ" node evidence --config "$work/broker.yaml" "$node_id" >"$work/evidence.json" || fail "writ node evidence"
"$writ" audit show "$work/agent/audit" | sed 's/^/      /'
"$writ" audit verify --evidence "$work/evidence.json" --allow-unsigned-tail "$work/agent/audit" | sed 's/^/      /'
[ "${PIPESTATUS[0]}" = 0 ] || fail "the node's audit log does not verify"
ok "verifies; the last decision waits for a checkpoint the node can sign again only in its attested state"

say "Tamper with one entry of a copy of the log: verification names it."
cp -r "$work/agent/audit" "$work/tampered"
sed -i '2s/"decision":"allow"/"decision":"deny"/' "$work/tampered/entries.jsonl"
if out=$("$writ" audit verify --evidence "$work/evidence.json" --allow-unsigned-tail "$work/tampered" 2>&1); then fail "a tampered log verified"; fi
ok "$(printf '%s\n' "$out" | tail -n 1)"

say "Verify the broker's audit log (signed with a file key, as configured: it says so)."
"$writ" audit verify --key "$work/broker/audit.pub" --allow-file-key --allow-unsigned-tail "$work/broker/audit" | sed 's/^/      /'
[ "${PIPESTATUS[0]}" = 0 ] || fail "the broker's audit log does not verify"
ok "every enrollment, attestation, SVID and writ decision of the broker is in it"

say "Tear down: stop the MCP gateway and server, the agent, the broker and the TPM; remove $work."
printf '\nThe demo behaved as described.\n'
