# Shared by the benchmark scripts (sourced, not run): tools, build, servers, CPU time.
# shellcheck shell=bash
#
# The sourcing script sets SERVER_CPU, READY_TIMEOUT_S, PRIORITY_NICE and `work` (a
# scratch directory) first. Everything listens on 127.0.0.1 only; `stop_server` runs
# from the caller's EXIT trap so no server outlives a script.

repository=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
server_pid=""
clock_ticks_per_s=$(getconf CLK_TCK)
# Other processes on the machine (builds) steal CPU from the server and from the load
# generator; as root both run at PRIORITY_NICE so the figures measure the software more
# than the neighbours.
# REALTIME=1 runs them SCHED_FIFO instead: steadier figures on a busy machine, at the
# cost of starving everything else on those two CPUs (the kernel still leaves it 5 %).
priority=""
if [ "$(id -u)" -eq 0 ]; then
    if [ "${REALTIME:-0}" = 1 ]; then
        priority="chrt -f 50"
    else
        priority="nice -n $PRIORITY_NICE"
    fi
fi

log() { echo "bench: $*" >&2; }

# Linux's autogroup scheduling (sched_autogroup_enabled) shares CPU time between sessions
# first and by nice level only inside each, so nice -10 alone does nothing against a build
# started from another terminal. As root the scripts also give their own session's
# autogroup PRIORITY_NICE for the run, and give back the old value on exit. To keep the
# change off your terminal's session, start the script with `setsid -w`.
autogroup_nice_before=""

raise_autogroup_priority() {
    local autogroup="/proc/$$/autogroup"
    if [ "$(id -u)" -ne 0 ] || [ "${REALTIME:-0}" = 1 ] || [ ! -w "$autogroup" ]; then
        return 0
    fi
    autogroup_nice_before=$(awk '{ print $3 }' "$autogroup")
    if ! echo "$PRIORITY_NICE" 2>/dev/null >"$autogroup"; then
        autogroup_nice_before=""
    fi
}

# How the server and the generator were scheduled, for the report.
priority_description() {
    if [ -z "$priority" ]; then
        echo "default priority (not root)"
    elif [ "${REALTIME:-0}" = 1 ]; then
        echo "SCHED_FIFO 50"
    elif [ -n "$autogroup_nice_before" ]; then
        echo "nice $PRIORITY_NICE, and the session's autogroup at nice $PRIORITY_NICE"
    else
        echo "nice $PRIORITY_NICE"
    fi
}

restore_autogroup_priority() {
    [ -n "$autogroup_nice_before" ] || return 0
    echo "$autogroup_nice_before" 2>/dev/null >"/proc/$$/autogroup" || true
    autogroup_nice_before=""
}

# Installs the Debian packages named, if their commands are missing. Benchmarks only.
install_tools() {
    local missing=() package
    for package in "$@" util-linux curl; do
        case $package in
            nginx-light) [ -x /usr/sbin/nginx ] || missing+=(nginx-light) ;;
            perf) command -v perf >/dev/null || missing+=(linux-perf) ;;
            util-linux) command -v taskset >/dev/null || missing+=(util-linux) ;;
            *) command -v "$package" >/dev/null || missing+=("$package") ;;
        esac
    done
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
    # One word per child process id.
    # shellcheck disable=SC2086
    kill -KILL "$server_pid" $children 2>/dev/null || true
    wait "$server_pid" 2>/dev/null || true
    server_pid=""
}

# CPU ticks (utime+stime, all threads) of the server and its child processes.
# io_uring's io-wq workers (the iou-wrk-* threads that run payd's fdatasync) are threads
# of payd's own process, listed in /proc/PID/task/, so /proc/PID/stat counts them: under
# fsync load the process's utime+stime equalled the sum over /proc/PID/task/*/stat, an
# iou-wrk thread among them (Linux 6.18; threads that exit leave their time in the
# process's total). Work io_uring hands to kernel threads (kworkers, the filesystem's
# journal thread) or that softirqs do on an idle CPU is not in it: the machine's figures
# below catch that.
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

# CPU ticks (utime+stime) of every kernel thread (kthreadd, pid 2, and its children:
# kworkers, ksoftirqd, the filesystem's journal thread). A kernel thread that exits
# between two readings takes its time with it.
kernel_thread_ticks() {
    # cat goes on past a process that is gone by the time it is read (awk would stop),
    # and then fails, which must not end a script under pipefail.
    { cat /proc/[0-9]*/stat 2>/dev/null || true; } | awk '{
        pid = $1
        sub(/^.*\) /, "")
        # After the command name: the state, the parent pid, ... utime 12th, stime 13th.
        if (pid == 2 || $2 == 2) total += $12 + $13
    } END { print total + 0 }'
}

# Reads, with shell builtins only (no process of the script's own runs meanwhile):
# - machine_busy_ticks: the busy ticks of all CPUs from /proc/stat's "cpu" line,
#   user+nice+system+irq+softirq+steal (idle and iowait are not busy; guest time is
#   already inside user and nice);
# - machine_all_ticks: the same plus idle and iowait, for the machine's busy %;
# - children_ticks: utime+stime of this shell's children that have ended and been
#   waited for (cutime+cstime of /proc/BASHPID/stat). Around a load generator run in
#   the foreground, its growth is the generator's own CPU time, all threads.
# The sourcing script reads the three globals.
# shellcheck disable=SC2034
read_machine_ticks() {
    local label user nice system idle iowait irq softirq steal stat fields
    read -r label user nice system idle iowait irq softirq steal _ </proc/stat
    [ "$label" = cpu ] || { log "unexpected first line of /proc/stat: $label"; return 1; }
    machine_busy_ticks=$((user + nice + system + irq + softirq + steal))
    machine_all_ticks=$((machine_busy_ticks + idle + iowait))
    read -r stat <"/proc/$BASHPID/stat"
    # After the ")" that closes the command name the state is field 3; cutime is 16, cstime 17.
    read -ra fields <<<"${stat##*) }"
    children_ticks=$((fields[13] + fields[14]))
}

# Prints CPU µs per request and CPU % from a tick delta, a request count and seconds.
cpu_figures() {
    awk -v ticks="$1" -v requests="$2" -v seconds="$3" -v hz="$clock_ticks_per_s" 'BEGIN {
        cpu_s = ticks / hz
        printf "%.2f %.0f\n", (requests ? cpu_s * 1e6 / requests : 0), cpu_s * 100 / seconds
    }'
}

# Writes a payd config: payd_config FILE PORT ACCESS_LOG DURABILITY MERCHANT SECRET.
payd_config() {
    local file=$1 port=$2 access_log=$3 durability=$4 merchant=$5 secret=$6
    # `work` is the sourcing script's scratch directory.
    # shellcheck disable=SC2154
    rm -rf "$work/payd-data" "$work/payd-logs"
    cat >"$file" <<CONFIG
[server]
listen = "127.0.0.1:$port"
cores = [$SERVER_CPU]

[storage]
data_dir = "$work/payd-data"
durability = "$durability"

[log]
access_log = $access_log
dir = "$work/payd-logs"

[[merchants]]
id = "$merchant"
secrets = ["$secret"]
CONFIG
}

# Writes an nginx config serving `return 200 '{"status":"ok"}'` with one worker on
# SERVER_CPU, no access log, and keep-alive connections that are never retired.
nginx_config() {
    local prefix=$1 port=$2 cpu_mask=1
    mkdir -p "$prefix"
    # worker_cpu_affinity takes a bit mask whose rightmost bit is CPU 0.
    [ "$SERVER_CPU" -eq 0 ] || cpu_mask=1$(printf '0%.0s' $(seq 1 "$SERVER_CPU"))
    cat >"$prefix/nginx.conf" <<CONFIG
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
        listen 127.0.0.1:$port;
        location / {
            default_type application/json;
            return 200 '{"status":"ok"}';
        }
    }
}
CONFIG
}

ratio() {
    awk -v a="$1" -v b="$2" 'BEGIN { if (a == "" || b == "" || b == 0) print "-"; else printf "%.2f\n", a / b }'
}
