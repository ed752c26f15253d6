#!/usr/bin/env bash
# The /healthz benchmark of issue 2: payd against nginx-light and a bare glommio loop.
#
# Every server runs alone on SERVER_CPU and wrk on LOAD_CPU, both on 127.0.0.1 only.
# For each server it runs wrk without pipelining and with PIPELINE_DEPTH requests per
# write, and reports req/s and the server's CPU microseconds per request: the growth of
# utime+stime in /proc/PID/stat (all threads, and all processes for nginx) over the run,
# divided by the requests wrk completed. It prints a markdown table and the ratios
# payd/nginx (CPU per request) and payd/bare (pipelined req/s).
#
# Usage: loadtest/bench-healthz.sh            (from anywhere inside the repository)
#        RUNS=3 DURATION_S=5 CONNECTIONS=32 SKIP_PAYD=1 loadtest/bench-healthz.sh
# With RUNS > 1 the servers take turns round after round, and each cell keeps the best
# run (highest req/s, lowest CPU per request): neighbours on a shared machine only ever
# make a figure worse. The "server CPU %" column tells a saturated server (near 100)
# from one that waited for wrk.
# It installs wrk and nginx-light with apt-get when they are missing (this script only).
set -euo pipefail

DURATION_S=${DURATION_S:-10}
CONNECTIONS=${CONNECTIONS:-64}
PIPELINE_DEPTH=${PIPELINE_DEPTH:-16}
WARMUP_S=${WARMUP_S:-1}
SERVER_CPU=${SERVER_CPU:-0}
LOAD_CPU=${LOAD_CPU:-1}
READY_TIMEOUT_S=${READY_TIMEOUT_S:-30}
RUNS=${RUNS:-1}
SKIP_PAYD=${SKIP_PAYD:-0}
# As root, server and wrk run at this nice level (see bench-lib.sh).
PRIORITY_NICE=${PRIORITY_NICE:--10}
PAYD_PORT=${PAYD_PORT:-18480}
NGINX_PORT=${NGINX_PORT:-18481}
BARE_PORT=${BARE_PORT:-18482}

work=$(mktemp -d /tmp/payd-bench-healthz.XXXXXX)
# shellcheck source=loadtest/bench-lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/bench-lib.sh"
pipeline_script="$repository/loadtest/pipeline.lua"
load_before=""

cleanup() {
    stop_server
    restore_autogroup_priority
    rm -rf "$work"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# Runs wrk on LOAD_CPU; prints "requests req_per_s cpu_us_per_request errors cpu_percent".
measure() {
    local url=$1 depth=$2 arguments=()
    if [ "$depth" -gt 1 ]; then
        arguments=(-s "$pipeline_script")
    fi
    local wrk_common=(-t1 "-c$CONNECTIONS" "${arguments[@]}" "$url")
    [ "$depth" -gt 1 ] && wrk_common+=(-- "$depth")
    $priority taskset -c "$LOAD_CPU" wrk "-d${WARMUP_S}s" "${wrk_common[@]}" >/dev/null
    local ticks_before ticks_after output
    ticks_before=$(server_cpu_ticks)
    output=$($priority taskset -c "$LOAD_CPU" wrk "-d${DURATION_S}s" "${wrk_common[@]}")
    ticks_after=$(server_cpu_ticks)
    echo "$output" >>"$work/wrk.log"
    local requests req_per_s errors
    requests=$(echo "$output" | awk '/requests in/ {print $1}')
    req_per_s=$(echo "$output" | awk '/^Requests\/sec/ {printf "%.0f", $2}')
    # "Non-2xx or 3xx responses: N" and "Socket errors: connect N, read N, write N, timeout N".
    errors=$(echo "$output" | awk '/Non-2xx|Socket errors/ {
        gsub(",", ""); for (i = 1; i <= NF; i++) if ($i ~ /^[0-9]+$/) sum += $i
    } END {print sum + 0}')
    local figures
    figures=$(cpu_figures $((ticks_after - ticks_before)) "${requests:-0}" "$DURATION_S")
    echo "${requests:-0} ${req_per_s:-0} ${figures%% *} $errors ${figures##* }"
}

# Results per "server,mode" (mode 1: one request per write, p: pipelined), best over rounds.
declare -A rate cpu utilisation errors
servers=()

# Keeps the highest req/s (with the server CPU % of that run) and the lowest CPU per request.
record() {
    local key=$1 result=("${@:2}")
    errors[$key]=$((${errors[$key]:-0} + result[3]))
    if [ -z "${rate[$key]:-}" ] || [ "${result[1]}" -gt "${rate[$key]}" ]; then
        rate[$key]=${result[1]}
        utilisation[$key]=${result[4]}
    fi
    if [ -z "${cpu[$key]:-}" ] || awk -v a="${result[2]}" -v b="${cpu[$key]}" 'BEGIN { exit !(a < b) }'; then
        cpu[$key]=${result[2]}
    fi
}

# Measures one running server non-pipelined and pipelined.
bench_server() {
    local name=$1 url=$2 result
    log "$name: wrk -c$CONNECTIONS -d${DURATION_S}s, depth 1 and $PIPELINE_DEPTH"
    read -r -a result <<<"$(measure "$url" 1)"
    record "$name,1" "${result[@]}"
    read -r -a result <<<"$(measure "$url" "$PIPELINE_DEPTH")"
    record "$name,p" "${result[@]}"
}

# Starts a server, measures it and stops it; a server that does not start is reported so.
run_server() {
    local name=$1 url=$2 stderr_file=$3
    shift 3
    [[ " ${servers[*]} " == *" $name "* ]] || servers+=("$name")
    if start_server "$url" "$stderr_file" "$@"; then
        bench_server "$name" "$url"
        stop_server
    else
        errors[$name,failed]=1
    fi
}

bench_payd() {
    local access_log=$1 config="$work/payd-$1.toml" name
    name=$([ "$access_log" = true ] && echo payd-log-on || echo payd-log-off)
    payd_config "$config" "$PAYD_PORT" "$access_log" fsync m_bench bench-only-secret-0123456789abcdef
    run_server "$name" "http://127.0.0.1:$PAYD_PORT/healthz" "$work/payd.stderr" \
        "$repository/target/release/payd" serve --config "$config"
}

bench_nginx() {
    local prefix="$work/nginx"
    nginx_config "$prefix" "$NGINX_PORT"
    run_server nginx-light "http://127.0.0.1:$NGINX_PORT/healthz" "$work/nginx.stderr" \
        /usr/sbin/nginx -p "$prefix" -e "$prefix/error.log" -c "$prefix/nginx.conf"
}

bench_bare() {
    run_server bare-loop "http://127.0.0.1:$BARE_PORT/healthz" "$work/bare.stderr" \
        "$repository/target/release/bare-loop" --listen "127.0.0.1:$BARE_PORT" --cpu "$SERVER_CPU"
}

print_table() {
    echo
    echo "wrk -t1 -c$CONNECTIONS -d${DURATION_S}s on CPU $LOAD_CPU, server on CPU $SERVER_CPU," \
        "best of $RUNS, pipelined = $PIPELINE_DEPTH requests per write;" \
        "$(nproc) CPUs, $(uname -r), load average before $load_before, after $(cut -d' ' -f1-3 /proc/loadavg)"
    echo
    echo "| server | req/s | CPU µs/req | server CPU % | req/s pipelined | CPU µs/req pipelined | server CPU % pipelined | errors |"
    echo "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"
    local name
    for name in "${servers[@]}"; do
        if [ -z "${rate[$name,1]:-}" ]; then
            echo "| $name | - | - | - | - | - | - | did not start |"
            continue
        fi
        echo "| $name | ${rate[$name,1]} | ${cpu[$name,1]} | ${utilisation[$name,1]} |" \
            "${rate[$name,p]} | ${cpu[$name,p]} | ${utilisation[$name,p]} |" \
            "$((${errors[$name,1]} + ${errors[$name,p]})) |"
    done
    echo
    echo "| ratio | access log on | access log off |"
    echo "| --- | ---: | ---: |"
    echo "| payd/nginx CPU per request, not pipelined |" \
        "$(ratio "${cpu[payd-log-on,1]:-}" "${cpu[nginx-light,1]:-}") |" \
        "$(ratio "${cpu[payd-log-off,1]:-}" "${cpu[nginx-light,1]:-}") |"
    echo "| payd/nginx CPU per request, pipelined |" \
        "$(ratio "${cpu[payd-log-on,p]:-}" "${cpu[nginx-light,p]:-}") |" \
        "$(ratio "${cpu[payd-log-off,p]:-}" "${cpu[nginx-light,p]:-}") |"
    echo "| payd/bare req/s, pipelined |" \
        "$(ratio "${rate[payd-log-on,p]:-}" "${rate[bare-loop,p]:-}") |" \
        "$(ratio "${rate[payd-log-off,p]:-}" "${rate[bare-loop,p]:-}") |"
    # Robust to a starved wrk: when both servers saturate it is the inverse of the line above.
    echo "| payd/bare CPU per request, pipelined |" \
        "$(ratio "${cpu[payd-log-on,p]:-}" "${cpu[bare-loop,p]:-}") |" \
        "$(ratio "${cpu[payd-log-off,p]:-}" "${cpu[bare-loop,p]:-}") |"
}

main() {
    install_tools wrk nginx-light
    build
    raise_autogroup_priority
    load_before=$(cut -d' ' -f1-3 /proc/loadavg)
    local round
    for round in $(seq 1 "$RUNS"); do
        log "round $round of $RUNS"
        if [ "$SKIP_PAYD" = 1 ]; then
            log "SKIP_PAYD=1: payd not measured"
        else
            bench_payd true
            bench_payd false
        fi
        bench_nginx
        bench_bare
    done
    print_table
}

main "$@"
