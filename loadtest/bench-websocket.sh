#!/usr/bin/env bash
# Creates over WebSocket against creates over HTTP keep-alive: the benchmark of issue 14.
#
# One payd on SERVER_CPU (one core, simulated acquirer, the same durability for every
# row), one payd-loadtest on LOAD_CPU, CONNECTIONS connections each. The rows take turns
# round after round (even rounds reversed) against the same server:
#   - http: signed creates, one request in flight per keep-alive connection;
#   - ws: the same creates as WebSocket messages, one in flight per connection;
#   - http-pipelined and ws-8-in-flight: DEPTH requests in flight per connection
#     (pipelined HTTP/1.1 against DEPTH messages in flight).
# Each row gives 2xx/s, p50, p99, p99.9, the server's CPU µs per request (utime+stime from
# /proc over the run, divided by responses, warm-up counted) and the server's CPU %; each
# cell is the median over RUNS rounds. The ratios ws/http are taken per round.
#
# Usage: loadtest/bench-websocket.sh
#        RUNS=3 DURATION_S=5 DURABILITY=none loadtest/bench-websocket.sh
set -euo pipefail

DURATION_S=${DURATION_S:-5}
WARMUP_S=${WARMUP_S:-1}
CONNECTIONS=${CONNECTIONS:-64}
DEPTH=${DEPTH:-8}
RUNS=${RUNS:-3}
DURABILITY=${DURABILITY:-fsync}
SERVER_CPU=${SERVER_CPU:-0}
LOAD_CPU=${LOAD_CPU:-1}
READY_TIMEOUT_S=${READY_TIMEOUT_S:-30}
PRIORITY_NICE=${PRIORITY_NICE:--10}
PAYD_PORT=${PAYD_PORT:-18492}
MERCHANT=m_bench
# A throwaway secret for a throwaway data directory, never a real merchant's.
export PAYD_LOADTEST_SECRET=websocket-bench-secret-0123456789

work=$(mktemp -d /tmp/payd-ws-bench.XXXXXX)
# shellcheck source=loadtest/bench-lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/bench-lib.sh"
loadtest="$repository/target/release/payd-loadtest"

cleanup() {
    stop_server
    restore_autogroup_priority
    rm -rf "$work"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

declare -A figure
rows=(http ws http-pipelined ws-in-flight)

arguments_of() {
    case $1 in
        http) echo "--transport http --pipeline 1" ;;
        ws) echo "--transport ws --pipeline 1" ;;
        http-pipelined) echo "--transport http --pipeline $DEPTH" ;;
        ws-in-flight) echo "--transport ws --pipeline $DEPTH" ;;
    esac
}

# A figure of the JSON summary: a top-level number, or one of latency_us.all.
json_figure() {
    python3 -c 'import json,sys; s=json.load(open(sys.argv[1])); k=sys.argv[2]
print(s[k] if k in s else s["latency_us"]["all"][k])' "$1" "$2"
}

measure() {
    local name=$1 round=$2 summary="$work/$1.$2.json" before after
    before=$(server_cpu_ticks)
    # shellcheck disable=SC2046
    $priority "$loadtest" run --address "127.0.0.1:$PAYD_PORT" --cpus "$LOAD_CPU" --connections "$CONNECTIONS" \
        --duration-secs "$DURATION_S" --warmup-secs "$WARMUP_S" --merchant "$MERCHANT" \
        --secret env:PAYD_LOADTEST_SECRET --json "$summary" $(arguments_of "$name") \
        >"$work/$name.txt" || true
    after=$(server_cpu_ticks)
    local responses successes cpu
    responses=$(json_figure "$summary" responses)
    successes=$(json_figure "$summary" successes)
    cpu=$(cpu_figures $((after - before)) \
        "$(awk -v n="$responses" -v d="$DURATION_S" -v w="$WARMUP_S" 'BEGIN { printf "%.0f", n * (d + w) / d }')" \
        $((DURATION_S + WARMUP_S)))
    figure[$name,rate,$round]=$(awk -v n="$successes" -v s="$DURATION_S" 'BEGIN { printf "%.0f", n / s }')
    figure[$name,cpu,$round]=${cpu%% *}
    figure[$name,utilisation,$round]=${cpu##* }
    figure[$name,p50,$round]=$(json_figure "$summary" p50)
    figure[$name,p99,$round]=$(json_figure "$summary" p99)
    figure[$name,p999,$round]=$(json_figure "$summary" p99.9)
    figure[$name,not2xx,$round]=$((responses - successes + $(json_figure "$summary" failed_requests)))
    log "round $round, $name: ${figure[$name,rate,$round]} 2xx/s, ${figure[$name,cpu,$round]} µs CPU each"
    [ "$successes" -gt 0 ] || sed 's/^/    /' "$work/$name.txt" >&2
}

median() {
    tr ' ' '\n' | grep -v '^$' | sort -g | awk '{ v[NR] = $1 } END { if (NR) print v[int((NR + 1) / 2)] }'
}

cells() {
    local name=$1 metric=$2 round values=""
    for round in $(seq "$RUNS"); do values+=" ${figure[$name,$metric,$round]:-}"; done
    echo "$values"
}

install_tools curl
build
raise_autogroup_priority
payd_config "$work/payd.toml" "$PAYD_PORT" true "$DURABILITY" "$MERCHANT" "$PAYD_LOADTEST_SECRET"
start_server "http://127.0.0.1:$PAYD_PORT/readyz" "$work/payd.stderr" \
    "$repository/target/release/payd" serve --config "$work/payd.toml"
for round in $(seq "$RUNS"); do
    order=("${rows[@]}")
    if [ $((round % 2)) -eq 0 ]; then
        order=(ws-in-flight http-pipelined ws http)
    fi
    for name in "${order[@]}"; do measure "$name" "$round"; done
done

echo "\`RUNS=$RUNS DURATION_S=$DURATION_S DURABILITY=$DURABILITY CONNECTIONS=$CONNECTIONS DEPTH=$DEPTH loadtest/bench-websocket.sh\`: one payd core (CPU $SERVER_CPU), payd-loadtest on CPU $LOAD_CPU, durability $DURABILITY, median of $RUNS rounds, $(priority_description); $(nproc) CPUs, load average $(cut -d' ' -f1-3 /proc/loadavg)."
echo
echo "| run | in flight per connection | 2xx/s | p50 µs | p99 µs | p99.9 µs | server CPU µs/create | server CPU % | not 2xx |"
echo "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"
for name in "${rows[@]}"; do
    depth=1
    [[ $name == *-* ]] && depth=$DEPTH
    not2xx=$(cells "$name" not2xx | tr ' ' '\n' | awk '{ s += $1 } END { print s + 0 }')
    echo "| $name | $depth | $(cells "$name" rate | median) | $(cells "$name" p50 | median) | $(cells "$name" p99 | median) | $(cells "$name" p999 | median) | $(cells "$name" cpu | median) | $(cells "$name" utilisation | median) | $not2xx |"
done
echo
for pair in "ws http" "ws-in-flight http-pipelined"; do
    read -r ws http <<<"$pair"
    cpu_ratios="" rate_ratios=""
    for round in $(seq "$RUNS"); do
        cpu_ratios+=" $(ratio "${figure[$ws,cpu,$round]}" "${figure[$http,cpu,$round]}")"
        rate_ratios+=" $(ratio "${figure[$ws,rate,$round]}" "${figure[$http,rate,$round]}")"
    done
    echo "- $ws / $http: server CPU per create $(median <<<"$cpu_ratios") (rounds:$cpu_ratios), creates/s $(median <<<"$rate_ratios") (rounds:$rate_ratios)"
done
