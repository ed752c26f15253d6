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
# Other processes on the machine (builds) steal CPU from the server and from wrk; as root
# both run at this nice level so the figures measure the software more than the neighbours.
PRIORITY_NICE=${PRIORITY_NICE:--10}
PAYD_PORT=${PAYD_PORT:-18480}
NGINX_PORT=${NGINX_PORT:-18481}
BARE_PORT=${BARE_PORT:-18482}

repository=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
pipeline_script="$repository/loadtest/pipeline.lua"
work=$(mktemp -d /tmp/payd-bench-healthz.XXXXXX)
server_pid=""
clock_ticks_per_s=$(getconf CLK_TCK)
load_before=""
priority=""
[ "$(id -u)" -ne 0 ] || priority="nice -n $PRIORITY_NICE"

cleanup() {
    stop_server
    rm -rf "$work"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

log() { echo "bench: $*" >&2; }

install_tools() {
    local missing=()
    command -v wrk >/dev/null || missing+=(wrk)
    [ -x /usr/sbin/nginx ] || missing+=(nginx-light)
    command -v taskset >/dev/null || missing+=(util-linux)
    command -v curl >/dev/null || missing+=(curl)
    [ ${#missing[@]} -eq 0 ] && return
    log "installing ${missing[*]}"
    local sudo=""
    [ "$(id -u)" -eq 0 ] || sudo=sudo
    $sudo apt-get update -qq
    # policy-rc.d keeps the package from starting a system nginx on port 80.
    local policy=/usr/sbin/policy-rc.d added_policy=0
    if [ ! -e $policy ]; then
        printf '#!/bin/sh\nexit 101\n' | $sudo tee $policy >/dev/null
        $sudo chmod +x $policy
        added_policy=1
    fi
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "${missing[@]}" >/dev/null
    [ $added_policy -eq 0 ] || $sudo rm -f $policy
}

build() {
    log "building payd and payd-loadtest in release"
    (cd "$repository" && cargo build --release --quiet --workspace --bins)
}

# Starts "$@" pinned to SERVER_CPU in the background and waits until URL answers 200.
start_server() {
    local url=$1 stderr_file=$2
    shift 2
    $priority taskset -c "$SERVER_CPU" "$@" 2>"$stderr_file" >/dev/null &
    server_pid=$!
    local deadline=$((SECONDS + READY_TIMEOUT_S))
    until [ "$(curl -s -o /dev/null -w '%{http_code}' "$url" 2>/dev/null)" = 200 ]; do
        if ! kill -0 "$server_pid" 2>/dev/null || [ $SECONDS -ge $deadline ]; then
            log "server did not become ready: $*"
            sed 's/^/    /' "$stderr_file" >&2 || true
            stop_server
            return 1
        fi
        sleep 0.1
    done
}

stop_server() {
    [ -n "$server_pid" ] || return 0
    local children
    children=$(pgrep -P "$server_pid" || true)
    kill -TERM "$server_pid" 2>/dev/null || true
    for _ in $(seq 50); do
        kill -0 "$server_pid" 2>/dev/null || break
        sleep 0.1
    done
    kill -KILL "$server_pid" $children 2>/dev/null || true
    wait "$server_pid" 2>/dev/null || true
    server_pid=""
}

# CPU ticks (utime+stime, all threads) of the server and its child processes.
server_cpu_ticks() {
    local total=0 pid fields
    for pid in "$server_pid" $(pgrep -P "$server_pid" || true); do
        [ -r "/proc/$pid/stat" ] || continue
        # Fields after the ")" that closes the command name: utime is the 12th, stime the 13th.
        fields=$(sed 's/^.*) //' "/proc/$pid/stat")
        total=$((total + $(echo "$fields" | awk '{print $12 + $13}')))
    done
    echo "$total"
}

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
    req_per_s=$(echo "$output" | awk '/^Requests\/sec/ {print $2}')
    # "Non-2xx or 3xx responses: N" and "Socket errors: connect N, read N, write N, timeout N".
    errors=$(echo "$output" | awk '/Non-2xx|Socket errors/ {
        gsub(",", ""); for (i = 1; i <= NF; i++) if ($i ~ /^[0-9]+$/) sum += $i
    } END {print sum + 0}')
    awk -v requests="$requests" -v rate="$req_per_s" -v errors="$errors" \
        -v ticks=$((ticks_after - ticks_before)) -v hz="$clock_ticks_per_s" -v seconds="$DURATION_S" \
        'BEGIN {
            cpu_s = ticks / hz
            printf "%d %.0f %.2f %d %.0f\n", requests, rate, (requests ? cpu_s * 1e6 / requests : 0), errors, cpu_s * 100 / seconds
        }'
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
    rm -rf "$work/payd-data" "$work/payd-logs"
    cat >"$config" <<EOF
[server]
listen = "127.0.0.1:$PAYD_PORT"
cores = [$SERVER_CPU]

[storage]
data_dir = "$work/payd-data"

[log]
access_log = $access_log
dir = "$work/payd-logs"

[[merchants]]
id = "m_bench"
secrets = ["bench-only-secret-0123456789abcdef"]
EOF
    run_server "$name" "http://127.0.0.1:$PAYD_PORT/healthz" "$work/payd.stderr" \
        "$repository/target/release/payd" serve --config "$config"
}

bench_nginx() {
    local prefix="$work/nginx" cpu_mask=1
    mkdir -p "$prefix"
    # worker_cpu_affinity takes a bit mask whose rightmost bit is CPU 0.
    [ "$SERVER_CPU" -eq 0 ] || cpu_mask=1$(printf '0%.0s' $(seq 1 "$SERVER_CPU"))
    cat >"$prefix/nginx.conf" <<EOF
worker_processes 1;
worker_cpu_affinity $cpu_mask;
daemon off;
pid $prefix/nginx.pid;
error_log $prefix/error.log warn;
events { worker_connections 4096; }
http {
    access_log off;
    client_body_temp_path $prefix/body;
    proxy_temp_path $prefix/proxy;
    fastcgi_temp_path $prefix/fastcgi;
    uwsgi_temp_path $prefix/uwsgi;
    scgi_temp_path $prefix/scgi;
    keepalive_requests 100000000;
    server {
        listen 127.0.0.1:$NGINX_PORT;
        location / {
            default_type application/json;
            return 200 '{"status":"ok"}';
        }
    }
}
EOF
    run_server nginx-light "http://127.0.0.1:$NGINX_PORT/healthz" "$work/nginx.stderr" \
        /usr/sbin/nginx -p "$prefix" -e "$prefix/error.log" -c "$prefix/nginx.conf"
}

bench_bare() {
    run_server bare-loop "http://127.0.0.1:$BARE_PORT/healthz" "$work/bare.stderr" \
        "$repository/target/release/bare-loop" --listen "127.0.0.1:$BARE_PORT" --cpu "$SERVER_CPU"
}

ratio() {
    awk -v a="$1" -v b="$2" 'BEGIN { if (a == "" || b == "" || b == 0) print "-"; else printf "%.2f\n", a / b }'
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
    install_tools
    build
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
