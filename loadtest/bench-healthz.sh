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
#        DURATION_S=5 CONNECTIONS=32 SKIP_PAYD=1 loadtest/bench-healthz.sh
# It installs wrk and nginx-light with apt-get when they are missing (this script only).
set -euo pipefail

DURATION_S=${DURATION_S:-10}
CONNECTIONS=${CONNECTIONS:-64}
PIPELINE_DEPTH=${PIPELINE_DEPTH:-16}
WARMUP_S=${WARMUP_S:-1}
SERVER_CPU=${SERVER_CPU:-0}
LOAD_CPU=${LOAD_CPU:-1}
READY_TIMEOUT_S=${READY_TIMEOUT_S:-30}
SKIP_PAYD=${SKIP_PAYD:-0}
PAYD_PORT=${PAYD_PORT:-18480}
NGINX_PORT=${NGINX_PORT:-18481}
BARE_PORT=${BARE_PORT:-18482}

repository=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
pipeline_script="$repository/loadtest/pipeline.lua"
work=$(mktemp -d /tmp/payd-bench-healthz.XXXXXX)
server_pid=""
clock_ticks_per_s=$(getconf CLK_TCK)

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
    taskset -c "$SERVER_CPU" "$@" 2>"$stderr_file" >/dev/null &
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

# Runs wrk on LOAD_CPU; prints "requests req_per_s cpu_us_per_request errors".
measure() {
    local url=$1 depth=$2 arguments=()
    if [ "$depth" -gt 1 ]; then
        arguments=(-s "$pipeline_script")
    fi
    local wrk_common=(-t1 "-c$CONNECTIONS" "${arguments[@]}" "$url")
    [ "$depth" -gt 1 ] && wrk_common+=(-- "$depth")
    taskset -c "$LOAD_CPU" wrk "-d${WARMUP_S}s" "${wrk_common[@]}" >/dev/null
    local ticks_before ticks_after output
    ticks_before=$(server_cpu_ticks)
    output=$(taskset -c "$LOAD_CPU" wrk "-d${DURATION_S}s" "${wrk_common[@]}")
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
        -v ticks=$((ticks_after - ticks_before)) -v hz="$clock_ticks_per_s" \
        'BEGIN { printf "%d %.0f %.2f %d\n", requests, rate, (requests ? ticks / hz * 1e6 / requests : 0), errors }'
}

declare -A rate cpu
rows=()

# Measures one running server non-pipelined and pipelined, and records a table row.
bench_server() {
    local name=$1 url=$2 plain pipelined
    log "$name: wrk -c$CONNECTIONS -d${DURATION_S}s, depth 1 and $PIPELINE_DEPTH"
    read -r -a plain <<<"$(measure "$url" 1)"
    read -r -a pipelined <<<"$(measure "$url" "$PIPELINE_DEPTH")"
    rate[$name,1]=${plain[1]}
    cpu[$name,1]=${plain[2]}
    rate[$name,p]=${pipelined[1]}
    cpu[$name,p]=${pipelined[2]}
    rows+=("| $name | ${plain[1]} | ${plain[2]} | ${pipelined[1]} | ${pipelined[2]} | $((plain[3] + pipelined[3])) |")
}

bench_payd() {
    local access_log=$1 name="payd access_log=$1" config="$work/payd-$1.toml"
    rm -rf "$work/payd-data"
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
    local url="http://127.0.0.1:$PAYD_PORT/healthz"
    if start_server "$url" "$work/payd.stderr" "$repository/target/release/payd" serve --config "$config"; then
        bench_server "$name" "$url"
        stop_server
    else
        rows+=("| $name | - | - | - | - | did not start |")
    fi
}

bench_nginx() {
    local prefix="$work/nginx" cpu_mask
    mkdir -p "$prefix"
    # worker_cpu_affinity takes a bit mask, leftmost bit the highest CPU.
    cpu_mask=1$(printf '0%.0s' $(seq 1 "$SERVER_CPU"))
    [ "$SERVER_CPU" -gt 0 ] || cpu_mask=1
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
    local url="http://127.0.0.1:$NGINX_PORT/healthz"
    if start_server "$url" "$work/nginx.stderr" /usr/sbin/nginx -p "$prefix" -e "$prefix/error.log" -c "$prefix/nginx.conf"; then
        bench_server "nginx-light" "$url"
        stop_server
    else
        rows+=("| nginx-light | - | - | - | - | did not start |")
    fi
}

bench_bare() {
    local url="http://127.0.0.1:$BARE_PORT/healthz"
    if start_server "$url" "$work/bare.stderr" "$repository/target/release/bare-loop" \
        --listen "127.0.0.1:$BARE_PORT" --cpu "$SERVER_CPU"; then
        bench_server "bare glommio loop" "$url"
        stop_server
    else
        rows+=("| bare glommio loop | - | - | - | - | did not start |")
    fi
}

ratio() {
    awk -v a="$1" -v b="$2" 'BEGIN { if (a == "" || b == "" || b == 0) print "-"; else printf "%.2f\n", a / b }'
}

main() {
    install_tools
    build
    if [ "$SKIP_PAYD" = 1 ]; then
        log "SKIP_PAYD=1: payd not measured"
    else
        bench_payd true
        bench_payd false
    fi
    bench_nginx
    bench_bare

    echo
    echo "wrk -t1 -c$CONNECTIONS -d${DURATION_S}s on CPU $LOAD_CPU, server on CPU $SERVER_CPU," \
        "$(nproc) CPUs, $(uname -r); pipelined = $PIPELINE_DEPTH requests per write"
    echo
    echo "| server | req/s | CPU µs/req | req/s pipelined | CPU µs/req pipelined | errors |"
    echo "| --- | ---: | ---: | ---: | ---: | ---: |"
    printf '%s\n' "${rows[@]}"
    echo
    local payd="payd access_log=true" bare="bare glommio loop" nginx="nginx-light"
    echo "| ratio | access log on | access log off |"
    echo "| --- | ---: | ---: |"
    echo "| payd/nginx CPU per request, not pipelined | $(ratio "${cpu[$payd,1]:-}" "${cpu[$nginx,1]:-}") | $(ratio "${cpu[payd access_log=false,1]:-}" "${cpu[$nginx,1]:-}") |"
    echo "| payd/nginx CPU per request, pipelined | $(ratio "${cpu[$payd,p]:-}" "${cpu[$nginx,p]:-}") | $(ratio "${cpu[payd access_log=false,p]:-}" "${cpu[$nginx,p]:-}") |"
    echo "| payd/bare req/s, pipelined | $(ratio "${rate[$payd,p]:-}" "${rate[$bare,p]:-}") | $(ratio "${rate[payd access_log=false,p]:-}" "${rate[$bare,p]:-}") |"
}

main "$@"
