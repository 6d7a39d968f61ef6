#!/usr/bin/env bash
# bench/load.sh NODES [DURATION] [OUT]: `writ bench load` against a
# `writ broker run` of its own, both on this machine (docs/adr/0051).
# The broker's store and audit log live in a temporary directory on disk
# (WRIT_LOAD_DIR to choose it: tmpfs measures without fsync cost), or the
# store on PostgreSQL with WRIT_LOAD_PG=1 (the audit log stays on disk). The
# summary goes to stdout, the JSON report to OUT (default
# bench/load-NODES.json), and the figures are appended to bench/load.out
# (WRIT_LOAD_BENCH) in the benchmark format that make bench's table reads. Each process's
# peak RSS and CPU time are printed at the end. WRIT_LOAD_PPROF=FILE takes a
# CPU profile of the broker over the measured phase's first
# WRIT_LOAD_PPROF_SECONDS (default 20) into FILE (go tool pprof FILE).
# WRIT_LOAD_ARGS: more flags for writ bench load (e.g. --cpuprofile FILE).
# WRIT_LOAD_LIMITS adds keys to the broker's limits section (below).
set -euo pipefail
nodes=${1:?usage: bench/load.sh NODES [DURATION] [OUT]}
duration=${2:-60s}
out=${3:-bench/load-$nodes.json}
interval=${WRIT_LOAD_INTERVAL:-5s}
go=${GO:-go}
listen=${WRIT_LOAD_LISTEN:-127.0.0.1:18443}

dir=$(mktemp -d "${WRIT_LOAD_DIR:-${TMPDIR:-/tmp}}/writ-load.XXXXXX")
broker_pid=
watcher=
cleanup() {
	if [ -n "$watcher" ]; then kill "$watcher" 2>/dev/null || true; fi
	if [ -n "$broker_pid" ]; then kill -TERM "$broker_pid" 2>/dev/null || true; wait "$broker_pid" 2>/dev/null || true; fi
	rm -rf "$dir"
	if [ -n "${pgdb:-}" ]; then psql -h 127.0.0.1 -U postgres -d postgres -qc "DROP DATABASE IF EXISTS $pgdb WITH (FORCE)" || true; fi
}
trap cleanup EXIT

"$go" build -o "$dir/writ" ./cmd/writ
"$dir/writ" bench setup --ek-ca "$dir/ek-ca" > "$dir/sections.yaml"
# WRIT_LOAD_LIMITS="max_attestations_in_flight: 64; attest_queue_wait: 200ms"
# adds those keys to the broker's limits section (docs/adr/0054).
if [ -n "${WRIT_LOAD_LIMITS:-}" ]; then
	IFS=';' read -ra kvs <<< "$WRIT_LOAD_LIMITS"
	for kv in "${kvs[@]}"; do
		printf '  %s\n' "$(echo "$kv" | sed 's/^ *//')" >> "$dir/limits.yaml"
	done
	sed -i "/^limits:/r $dir/limits.yaml" "$dir/sections.yaml"
fi
cat > "$dir/broker.yaml" <<YAML
trust_domain: writ.test
listen: $listen
bundle_listen: 127.0.0.1:0
data_dir: $dir/data
svid_ttl: 1h
audit:
  signer: file
YAML
cat "$dir/sections.yaml" >> "$dir/broker.yaml"
# WRIT_LOAD_PG=1: the broker's store on PostgreSQL (127.0.0.1:5432, trust
# auth as in make postgres), in a database of its own, dropped at the end.
if [ -n "${WRIT_LOAD_PPROF:-}" ]; then
	ops=${WRIT_LOAD_OPS:-127.0.0.1:18445}
	printf 'ops_listen: %s\nops_pprof: true\n' "$ops" >> "$dir/broker.yaml"
fi
if [ "${WRIT_LOAD_PG:-}" = 1 ]; then
	pgdb=writ_load_$$
	psql -h 127.0.0.1 -U postgres -d postgres -qc "CREATE DATABASE $pgdb"
	printf 'store:\n  driver: postgres\n  dsn: postgres://postgres@127.0.0.1:5432/%s?sslmode=disable\n' "$pgdb" >> "$dir/broker.yaml"
fi

"$dir/writ" --log-level warn broker run --config "$dir/broker.yaml" 2> "$dir/broker.log" &
broker_pid=$!
addr=$listen
for _ in $(seq 1 300); do
	[ -s "$dir/data/bundle.json" ] && (: < "/dev/tcp/${addr%:*}/${addr##*:}") 2>/dev/null && break
	kill -0 "$broker_pid" 2>/dev/null || { echo "bench/load.sh: the broker did not start:" >&2; cat "$dir/broker.log" >&2; exit 1; }
	sleep 0.1
done

echo "== writ bench load --nodes $nodes --interval $interval --duration $duration (broker $addr; machine: $(nproc) CPUs, load average $(cut -d' ' -f1-3 /proc/loadavg))"
# CPU time (clock ticks, user + system) of a process.
ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }
# Once the measured phase starts (the progress line says so): both
# processes' CPU time, so that the CPU per attestation below leaves
# enrollment out, and with WRIT_LOAD_PPROF the broker's CPU profile.
(until grep -q measuring "$dir/progress" 2>/dev/null; do sleep 0.2; done
 echo "$(ticks "$broker_pid") $(ticks "$(pgrep -f "^$dir/writ bench load")")" > "$dir/cpu0"
 if [ -n "${WRIT_LOAD_PPROF:-}" ]; then
	if curl -sf -o "$WRIT_LOAD_PPROF" "http://$ops/debug/pprof/profile?seconds=${WRIT_LOAD_PPROF_SECONDS:-20}"; then
		echo "broker CPU profile: $WRIT_LOAD_PPROF" >&2
	else
		echo "bench/load.sh: no CPU profile" >&2
	fi
 fi) &
watcher=$!
/usr/bin/time -o "$dir/gen-time" -f 'load generator: peak RSS %M KiB, CPU %U s user %S s system; %e %U %S' \
	"$dir/writ" bench load --broker "$addr" --bundle "$dir/data/bundle.json" --ek-ca "$dir/ek-ca" \
	--nodes "$nodes" --interval "$interval" --duration "$duration" --json-out "$out" --bench-out "${WRIT_LOAD_BENCH:-bench/load.out}" ${WRIT_LOAD_ARGS:-} \
	2> >(tee "$dir/progress" >&2)
grep -q measuring "$dir/progress" || kill "$watcher" 2>/dev/null || true
wait "$watcher" || true
watcher=
# The broker's peak RSS and CPU time, read before it stops.
tck=$(getconf CLK_TCK)
read -r utime stime < <(cut -d' ' -f14,15 "/proc/$broker_pid/stat")
sed 's/;.*//' "$dir/gen-time"
echo "broker: peak RSS $(awk '/VmHWM/ {print $2}' "/proc/$broker_pid/status") KiB, CPU $((utime / tck)) s user $((stime / tck)) s system"
# CPU per attestation of the measured phase (its writs included), each process.
passed=$(grep -o '"attestations_passed":[0-9]*' "$out" | cut -d: -f2)
if [ -s "$dir/cpu0" ] && [ "${passed:-0}" -gt 0 ]; then
	read -r b0 g0 < "$dir/cpu0"
	gen_total=$(sed 's/.*; //' "$dir/gen-time" | awk '{print $2 + $3}')
	awk -v b=$((utime + stime - b0)) -v g0="$g0" -v gt="$gen_total" -v tck="$tck" -v n="$passed" 'BEGIN {
		printf "measured phase, CPU per attestation (its writs included): broker %.2f ms, load generator %.2f ms (%d attestations)\n",
			b / tck / n * 1000, (gt - g0 / tck) / n * 1000, n }'
fi
kill -TERM "$broker_pid"; wait "$broker_pid" || true; broker_pid=
