#!/usr/bin/env bash
# Registration entries against writ's selectors (README "SPIRE"). A node
# attested by writ is spiffe://<td>/spire/agent/writ/<EK fingerprint> and
# carries the selectors writ:ek_hash:…, writ:policy:<id>@<version>,
# writ:secureboot:true|false, writ:pcr:<n>:<hex>, writ:boot:<kind>:<hex>.
set -euo pipefail
sock=${SPIRE_SERVER_SOCKET:-/tmp/spire-server/private/api.sock}
td=${TRUST_DOMAIN:-example.org}

# A workload on one node, by that node's agent ID:
#   spire-server entry create -socketPath "$sock" \
#     -parentID spiffe://$td/spire/agent/writ/<EK fingerprint> \
#     -spiffeID spiffe://$td/billing -selector unix:uid:1000

# Every node that passed the policy with secure boot on (a node alias)...
spire-server entry create -socketPath "$sock" -node \
  -spiffeID "spiffe://$td/writ/secure-boot-nodes" \
  -selector writ:secureboot:true -selector writ:policy:spire-nodes@1
# ...and a workload on any of them.
spire-server entry create -socketPath "$sock" \
  -parentID "spiffe://$td/writ/secure-boot-nodes" \
  -spiffeID "spiffe://$td/payments" -selector unix:uid:1000
