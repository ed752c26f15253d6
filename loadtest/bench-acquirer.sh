#!/usr/bin/env bash
# bench-acquirer.sh: payment creates per second on ONE payd core with
# acquirer.mode = "http", against the standalone simulator (payd acquirer-sim), at 0 ms
# and 20 ms of acquirer latency, over 256 client connections (issue 5), driven by
# payd-loadtest (closed loop, unique order ids: every create is authorised).
#
#   loadtest/bench-acquirer.sh
#   LATENCIES="20" POOL_SIZES="64 256" DURATION_S=10 loadtest/bench-acquirer.sh
#
# Knobs (environment): LATENCIES (ms, "0 20"), POOL_SIZES (acquirer.pool_size, "256"),
# CONNECTIONS (256), DURATION_S (10), DURABILITY ("fsync" or "none"), SERVER_CPU (0) for
# payd, LOAD_CPU (1) for the simulator and the load generator, SKIP_BUILD=1 to use the
# release binaries as they are.
#
# With 20 ms of acquirer latency one core's ceiling is pool_size / 20 ms (12,800/s at
# 256, 3,200/s at 64): the pool is the concurrency. A client that serialised its calls
# would stay near 50 creates/s per pooled connection, whatever the client connections.
# Everything listens on 127.0.0.1 only, and every process started here stops on exit.
set -euo pipefail

repository=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
latencies=${LATENCIES:-"0 20"}
pool_sizes=${POOL_SIZES:-256}
connections=${CONNECTIONS:-256}
duration_s=${DURATION_S:-10}
durability=${DURABILITY:-fsync}
server_cpu=${SERVER_CPU:-0}
load_cpu=${LOAD_CPU:-1}
ready_timeout_s=20
payd="$repository/target/release/payd"
loadtest="$repository/target/release/payd-loadtest"
secret="bench-secret-not-for-production-0123456789"
work=$(mktemp -d /tmp/payd-bench-acquirer.XXXXXX)
pids=()

log() { echo "bench-acquirer: $*" >&2; }

cleanup() {
    local pid
    for pid in "${pids[@]}"; do
        kill "$pid" 2>/dev/null || true
    done
    wait 2>/dev/null || true
    rm -rf "$work"
}
trap cleanup EXIT

command -v python3 >/dev/null || { log "python3 is required to read the JSON summary"; exit 1; }
if [ "${SKIP_BUILD:-0}" != 1 ]; then
    log "building payd and payd-loadtest in release"
    (cd "$repository" && cargo build --release --quiet --workspace --bins)
fi

# Waits for a line "PREFIX ADDRESS" in FILE and prints ADDRESS.
wait_address() {
    local file=$1 prefix=$2 deadline=$((SECONDS + ready_timeout_s)) line
    while [ $SECONDS -lt $deadline ]; do
        line=$(grep -m1 "^$prefix" "$file" 2>/dev/null || true)
        if [ -n "$line" ]; then
            echo "${line#"$prefix"}"
            return 0
        fi
        sleep 0.1
    done
    log "no \"$prefix\" line in $file:"
    sed 's/^/    /' "$file" >&2
    return 1
}

# The value of one exact series in a /metrics page.
metric() {
    grep -F "$2 " "$1" | awk '{print $2}' | head -1
}

payd_config() {
    local file=$1 run_dir=$2 acquirer=$3 pool=$4
    cat >"$file" <<TOML
[server]
listen = "127.0.0.1:0"
cores = [$server_cpu]
max_connections_per_core = 4096

[storage]
data_dir = "$run_dir/data"
durability = "$durability"

[log]
access_log = false

[acquirer]
mode = "http"
url = "http://$acquirer"
pool_size = $pool

[[merchants]]
id = "m_bench"
secrets = ["$secret"]
TOML
}

# One run: the simulator at LATENCY ms, payd with POOL pooled connections, the load.
run() {
    local latency=$1 pool=$2 run_dir="$work/run-$1-$2"
    mkdir -p "$run_dir"
    "$payd" acquirer-sim --listen 127.0.0.1:0 --latency-ms "$latency" --cpu "$load_cpu" \
        2>"$run_dir/sim.err" &
    local sim_pid=$!
    pids+=("$sim_pid")
    local sim_address payd_address
    sim_address=$(wait_address "$run_dir/sim.err" "payd acquirer-sim: listening on ")
    payd_config "$run_dir/payd.toml" "$run_dir" "$sim_address" "$pool"
    "$payd" serve --config "$run_dir/payd.toml" 2>"$run_dir/payd.err" &
    local payd_pid=$!
    pids+=("$payd_pid")
    payd_address=$(wait_address "$run_dir/payd.err" "payd: ready, listening on ")
    log "acquirer latency $latency ms, pool $pool, $connections connections, $duration_s s"
    "$loadtest" run --address "$payd_address" --merchant m_bench --secret "$secret" \
        --cpus "$load_cpu" --connections "$connections" --duration-secs "$duration_s" \
        --warmup-secs 1 --json "$run_dir/summary.json" >"$run_dir/loadtest.out"
    sed 's/^/    /' "$run_dir/loadtest.out" >&2
    curl -s "http://$payd_address/metrics" >"$run_dir/metrics"
    kill "$payd_pid" "$sim_pid" 2>/dev/null || true
    wait "$payd_pid" "$sim_pid" 2>/dev/null || true
    local figures approved peak connects
    figures=$(python3 - "$run_dir/summary.json" <<'PY'
import json, sys
summary = json.load(open(sys.argv[1]))
creates = sum(o["count"] for o in summary["outcomes"] if o["status"] in (201, 202))
pending = sum(o["count"] for o in summary["outcomes"] if o["status"] == 202)
latency = summary["latency_us"]["all"]
print(f'{creates / summary["duration_s"]:.0f} {pending} {latency["p50"]} {latency["p99"]}')
PY
)
    approved=$(metric "$run_dir/metrics" 'payd_acquirer_calls_total{outcome="approved"}')
    peak=$(metric "$run_dir/metrics" "payd_acquirer_pool_connections_in_use_max{core=\"$server_cpu\"}")
    connects=$(metric "$run_dir/metrics" "payd_acquirer_pool_connects_total{core=\"$server_cpu\"}")
    read -r rate pending p50 p99 <<<"$figures"
    printf '%-11s %-5s %-12s %-10s %-8s %-10s %-10s %-9s %s\n' "$latency" "$pool" \
        "$connections" "$rate" "$pending" "$approved" "$peak" "$connects" "$p50/$p99" \
        >>"$work/summary"
}

printf '%-11s %-5s %-12s %-10s %-8s %-10s %-10s %-9s %s\n' latency_ms pool connections \
    creates/s 202s approved pool_peak connects p50/p99_us >"$work/summary"
for latency in $latencies; do
    for pool in $pool_sizes; do
        run "$latency" "$pool"
    done
done
echo "one payd core (cpu $server_cpu), durability $durability; simulator and payd-loadtest on cpu $load_cpu"
cat "$work/summary"
