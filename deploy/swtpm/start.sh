#!/usr/bin/env bash
# Provision a software TPM like a real one (RSA EK with a certificate from a
# local CA of its own, platform certificate, locked NV) and run it on loopback.
#
#   deploy/swtpm/start.sh DIR [PORT]
#
# DIR receives the CA (DIR/ca: root and intermediate certificates for the
# broker's ek.roots and ek.intermediates), the TPM state (DIR/state) and
# swtpm's pid file. The TPM serves commands on 127.0.0.1:PORT (default 2321)
# and its control channel on PORT+1. Stop it with: kill "$(cat DIR/swtpm.pid)"
set -euo pipefail
dir=${1:?usage: $0 DIR [PORT]}
port=${2:-2321}
for tool in swtpm swtpm_setup swtpm_localca; do
  command -v "$tool" >/dev/null || { echo "$0: $tool is missing: run make deps" >&2; exit 1; }
done
mkdir -p "$dir/ca" "$dir/state"
dir=$(cd "$dir" && pwd)
ca=$dir/ca
if [ ! -e "$dir/state/tpm2-00.permall" ]; then
  cat >"$ca/swtpm_setup.conf" <<CONF
create_certs_tool = $(command -v swtpm_localca)
create_certs_tool_config = $ca/swtpm-localca.conf
create_certs_tool_options = $ca/swtpm-localca.options
active_pcr_banks = sha256
CONF
  cat >"$ca/swtpm-localca.conf" <<CONF
statedir = $ca
signingkey = $ca/signkey.pem
issuercert = $ca/issuercert.pem
certserial = $ca/certserial
CONF
  printf -- '--platform-manufacturer writ\n--platform-version 2.1\n--platform-model swtpm\n' >"$ca/swtpm-localca.options"
  swtpm_setup --tpm2 --tpmstate "$dir/state" --create-ek-cert --create-platform-cert --lock-nvram \
    --config "$ca/swtpm_setup.conf" --overwrite >"$dir/swtpm_setup.log" 2>&1 ||
    { cat "$dir/swtpm_setup.log" >&2; exit 1; }
fi
swtpm socket --tpm2 --tpmstate dir="$dir/state" \
  --server type=tcp,port="$port",bindaddr=127.0.0.1 --ctrl type=tcp,port=$((port + 1)),bindaddr=127.0.0.1 \
  --flags not-need-init,startup-clear --daemon --pid file="$dir/swtpm.pid" --log file="$dir/swtpm.log"
echo "swtpm serving on 127.0.0.1:$port (pid $(cat "$dir/swtpm.pid"))"
echo "EK root CA:         $ca/swtpm-localca-rootca-cert.pem"
echo "EK intermediate CA: $ca/issuercert.pem"
