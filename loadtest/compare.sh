#!/usr/bin/env bash
# The comparison of issue 7: payd's payments against its own /healthz and against nginx.
#
# One run, one load generator (payd-loadtest, on LOAD_CPU) for every row, each server
# alone on SERVER_CPU, everything on 127.0.0.1:
#   - nginx-light `return 200` /healthz (the outside baseline);
#   - payd /healthz;
#   - payd creates with storage.durability "none" and "fsync", simulated acquirer;
#   - payd creates with fsync in an open loop at half the fsync rate just measured,
#     coordinated-omission corrected: the latency target of DESIGN.md.
# Each row gives 2xx responses/s, p50, p99 and p99.9, the server's CPU µs per request (utime+stime
# from /proc over the run, divided by responses) and the server's CPU %, then the ratios
# behind DESIGN.md's targets.
#
# Usage: loadtest/compare.sh
#        DURATION_S=5 CONNECTIONS=32 loadtest/compare.sh
# It installs nginx-light with apt-get when it is missing (benchmarks only).
set -euo pipefail

DURATION_S=${DURATION_S:-10}
CONNECTIONS=${CONNECTIONS:-64}
WARMUP_S=${WARMUP_S:-1}
SERVER_CPU=${SERVER_CPU:-0}
LOAD_CPU=${LOAD_CPU:-1}
READY_TIMEOUT_S=${READY_TIMEOUT_S:-30}
# As root, server and generator run at this nice level (see bench-lib.sh).
PRIORITY_NICE=${PRIORITY_NICE:--10}
PAYD_PORT=${PAYD_PORT:-18490}
NGINX_PORT=${NGINX_PORT:-18491}
MERCHANT=m_bench
# A throwaway secret for a throwaway data directory, never a real merchant's.
export PAYD_LOADTEST_SECRET=compare-only-secret-0123456789abcdef

work=$(mktemp -d /tmp/payd-compare.XXXXXX)
# shellcheck source=loadtest/bench-lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/bench-lib.sh"
loadtest="$repository/target/release/payd-loadtest"

cleanup() {
    stop_server
    rm -rf "$work"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# A top-level number of payd-loadtest's JSON summary (pretty-printed, keys sorted).
json_top() {
    awk -v key="\"$2\":" '$1 == key { gsub(",", "", $2); print $2; exit }' "$1"
}

# A figure of latency_us.all in the JSON summary.
json_latency() {
    awk -v key="\"$2\":" '
        /^  "latency_us": \{/ { in_latency = 1 }
        in_latency && /^    "all": \{/ { in_all = 1 }
        in_all && $1 == key { gsub(",", "", $2); print $2; exit }
        in_all && /^    \}/ { exit }
    ' "$1"
}

declare -A figure
rows=()

# Runs payd-loadtest against the running server and records the row NAME.
measure() {
    local name=$1
    shift
    local summary="$work/$name.json" ticks_before ticks_after
    ticks_before=$(server_cpu_ticks)
    $priority "$loadtest" run --cpus "$LOAD_CPU" --connections "$CONNECTIONS" \
        --duration-secs "$DURATION_S" --warmup-secs "$WARMUP_S" --merchant "$MERCHANT" \
        --secret env:PAYD_LOADTEST_SECRET --json "$summary" "$@" >"$work/$name.txt" || true
    ticks_after=$(server_cpu_ticks)
    local responses successes failed rate cpu
    responses=$(json_top "$summary" responses)
    successes=$(json_top "$summary" successes)
    failed=$(json_top "$summary" failed_requests)
    [ -n "$responses" ] || { log "$name: no summary"; sed 's/^/    /' "$work/$name.txt" >&2; return 0; }
    # Only 2xx answers count as throughput: a fast stream of errors is no payment.
    rate=$(awk -v n="$successes" -v s="$DURATION_S" 'BEGIN { printf "%.0f", n / s }')
    # The warm-up's requests cost CPU too: count them at the measured response rate.
    cpu=$(cpu_figures $((ticks_after - ticks_before)) \
        "$(awk -v n="$responses" -v d="$DURATION_S" -v w="$WARMUP_S" 'BEGIN { printf "%.0f", n * (d + w) / d }')" \
        $((DURATION_S + WARMUP_S)))
    figure[$name,rate]=$rate
    # Errors are cheap to send: a run without a 2xx says nothing about a payment's cost.
    [ "$successes" -eq 0 ] || figure[$name,cpu]=${cpu%% *}
    local p50 p99 p999
    p50=$(json_latency "$summary" p50)
    p99=$(json_latency "$summary" p99)
    p999=$(json_latency "$summary" p99.9)
    figure[$name,p99]=$p99
    figure[$name,p999]=$p999
    rows+=("| $name | $rate | $p50 | $p99 | $p999 | ${cpu%% *} | ${cpu##* } | $((responses - successes + failed)) |")
    log "$name: $rate 2xx/s, p99 $p99 µs, $((responses - successes + failed)) not 2xx"
}

with_nginx() {
    nginx_config "$work/nginx" "$NGINX_PORT"
    if start_server "http://127.0.0.1:$NGINX_PORT/healthz" "$work/nginx.stderr" \
        /usr/sbin/nginx -p "$work/nginx" -e "$work/nginx/error.log" -c "$work/nginx/nginx.conf"; then
        measure nginx-healthz --address "127.0.0.1:$NGINX_PORT" --scenario healthz
        stop_server
    fi
}

# Starts payd with DURABILITY and runs the measurements given as "name arguments..." words.
with_payd() {
    local durability=$1 config="$work/payd-$1.toml"
    shift
    payd_config "$config" "$PAYD_PORT" true "$durability" "$MERCHANT" "$PAYD_LOADTEST_SECRET"
    if ! start_server "http://127.0.0.1:$PAYD_PORT/healthz" "$work/payd.stderr" \
        "$repository/target/release/payd" serve --config "$config"; then
        return 0
    fi
    local step
    for step in "$@"; do
        # The step's words are the row name and payd-loadtest arguments.
        # shellcheck disable=SC2086
        measure $step --address "127.0.0.1:$PAYD_PORT"
    done
    stop_server
}

print_table() {
    echo
    echo "payd-loadtest -c$CONNECTIONS, ${DURATION_S} s after ${WARMUP_S} s warm-up, on CPU $LOAD_CPU;" \
        "server on CPU $SERVER_CPU; $(nproc) CPUs, $(uname -r), load average $(cut -d' ' -f1-3 /proc/loadavg)"
    echo
    echo "| run | 2xx/s | p50 µs | p99 µs | p99.9 µs | server CPU µs/req | server CPU % | not 2xx |"
    echo "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"
    printf '%s\n' "${rows[@]}"
    echo
    echo "| DESIGN.md target | measured | target |"
    echo "| --- | ---: | ---: |"
    echo "| create (fsync) CPU per request / nginx CPU per request |" \
        "$(ratio "${figure[payd-create-fsync,cpu]:-}" "${figure[nginx-healthz,cpu]:-}") | at most 1.3 |"
    echo "| create (fsync) req/s / payd /healthz req/s |" \
        "$(ratio "${figure[payd-create-fsync,rate]:-}" "${figure[payd-healthz,rate]:-}") | at least 0.8 |"
    echo "| p99 at half the saturating rate, fsync |" \
        "${figure[payd-create-fsync-half-rate,p99]:--} µs | at most 1000 µs |"
    echo "| p99.9 at half the saturating rate, fsync |" \
        "${figure[payd-create-fsync-half-rate,p999]:--} µs | at most 3000 µs |"
}

main() {
    install_tools nginx-light
    build
    with_nginx
    with_payd none "payd-healthz --scenario healthz" "payd-create-none --scenario payments"
    with_payd fsync "payd-create-fsync --scenario payments"
    local half_rate
    half_rate=$(awk -v r="${figure[payd-create-fsync,rate]:-0}" 'BEGIN { printf "%.0f", r / 2 }')
    if [ "$half_rate" -gt 0 ]; then
        with_payd fsync "payd-create-fsync-half-rate --scenario payments --rate $half_rate"
    fi
    print_table
}

main "$@"
