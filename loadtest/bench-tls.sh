#!/usr/bin/env bash
# TLS against plain HTTP on one payd core (issue 15), in the same run.
#
# payd runs alone on SERVER_CPU with durability "none" (the create's CPU without the
# fdatasync waits, so TLS's share shows at its largest), first plain, then with
# [server.tls] (an ECDSA P-256 certificate made here with openssl). Against each, on
# LOAD_CPU:
#   - payd-loadtest, CONNECTIONS keep-alive connections: /healthz, then signed creates;
#   - payd-loadtest with --requests-per-connection 1: a new connection (and, over TLS, a
#     full handshake, no resumption) for every /healthz;
#   - wrk, CONNECTIONS keep-alive connections: /healthz, then creates pre-signed by
#     `payd-loadtest presign` (loadtest/presigned.lua), a second client's view with
#     OpenSSL on its side.
# Each row gives 2xx/s and the server's CPU µs per request (utime+stime from /proc over
# the run, divided by the responses). Then the ratios TLS/plain and the handshake's cost:
# the CPU per new-connection request over TLS minus the same over plain TCP.
#
# With BASELINE_PAYD=/path/to/another/payd, every round also runs the plain rows on that
# binary ("baseline"), to compare the plain path of two builds (this change's cost to
# plain HTTP) in the same run.
#
# With RUNS=N the rounds repeat (plain and TLS take turns, in reverse order on even
# rounds); each cell is the median over the rounds, each ratio the median of per-round
# ratios with its spread min..max.
#
# Usage: loadtest/bench-tls.sh
#        RUNS=3 DURATION_S=5 CONNECTIONS=64 loadtest/bench-tls.sh
# It installs wrk with apt-get when it is missing (benchmarks only).
set -euo pipefail

DURATION_S=${DURATION_S:-5}
CONNECTIONS=${CONNECTIONS:-64}
WARMUP_S=${WARMUP_S:-1}
RUNS=${RUNS:-1}
SERVER_CPU=${SERVER_CPU:-0}
LOAD_CPU=${LOAD_CPU:-1}
READY_TIMEOUT_S=${READY_TIMEOUT_S:-30}
PRIORITY_NICE=${PRIORITY_NICE:--10}
PAYD_PORT=${PAYD_PORT:-18495}
# Pre-signed creates per wrk run: more than the fastest server answers in DURATION_S, so
# every one is a new payment (a wrk that runs out starts over, with replays).
PRESIGNED_PER_S=${PRESIGNED_PER_S:-80000}
BASELINE_PAYD=${BASELINE_PAYD:-}
MERCHANT=m_bench
# A throwaway secret for a throwaway data directory, never a real merchant's.
export PAYD_LOADTEST_SECRET=bench-tls-only-secret-0123456789abcdef

work=$(mktemp -d /tmp/payd-bench-tls.XXXXXX)
# shellcheck source=loadtest/bench-lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/bench-lib.sh"
loadtest="$repository/target/release/payd-loadtest"
address="127.0.0.1:$PAYD_PORT"
load_before=""

cleanup() {
    stop_server
    restore_autogroup_priority
    rm -rf "$work"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# A CA and a server certificate for 127.0.0.1 signed by it, both ECDSA P-256.
make_certificates() {
    local ec=(-newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes)
    openssl req -x509 "${ec[@]}" -keyout "$work/ca.key" -out "$work/ca.pem" -days 2 \
        -subj "/CN=payd bench CA" 2>/dev/null
    openssl req "${ec[@]}" -keyout "$work/server.key" -out "$work/server.csr" \
        -subj "/CN=127.0.0.1" 2>/dev/null
    printf 'subjectAltName=IP:127.0.0.1\nbasicConstraints=CA:FALSE\n' >"$work/server.ext"
    openssl x509 -req -in "$work/server.csr" -CA "$work/ca.pem" -CAkey "$work/ca.key" \
        -CAcreateserial -out "$work/server.pem" -days 2 -extfile "$work/server.ext" 2>/dev/null
}

# figure[ROW,METRIC,ROUND]; rows in the order first measured.
declare -A figure
rows=()

# Records ROW's 2xx/s and CPU µs per response from a tick delta and counts.
record() {
    local name=$1 ticks=$2 responses=$3 successes=$4 seconds=$5
    [[ " ${rows[*]} " == *" $name "* ]] || rows+=("$name")
    figure[$name,rate,$round]=$(awk -v n="$successes" -v s="$seconds" 'BEGIN { printf "%.0f", n / s }')
    local cpu
    cpu=$(cpu_figures "$ticks" "$responses" "$seconds")
    figure[$name,cpu,$round]=${cpu%% *}
    figure[$name,utilisation,$round]=${cpu##* }
    figure[$name,not2xx,$round]=$((responses - successes))
    log "round $round, $name: ${figure[$name,rate,$round]} 2xx/s, ${figure[$name,cpu,$round]} CPU µs/req"
}

# payd-loadtest against the running server as row NAME; the warm-up is not measured.
measure_loadtest() {
    local name=$1
    shift
    local summary="$work/$name.round$round.json" before after responses successes
    $priority "$loadtest" run --cpus "$LOAD_CPU" --connections "$CONNECTIONS" \
        --duration-secs "$WARMUP_S" --merchant "$MERCHANT" "$@" >/dev/null 2>&1 || true
    before=$(server_cpu_ticks)
    $priority "$loadtest" run --cpus "$LOAD_CPU" --connections "$CONNECTIONS" \
        --duration-secs "$DURATION_S" --merchant "$MERCHANT" --json "$summary" "$@" \
        >"$work/$name.txt" 2>&1 || true
    after=$(server_cpu_ticks)
    responses=$(awk '$1 == "\"responses\":" { gsub(",", "", $2); print $2; exit }' "$summary" 2>/dev/null || true)
    successes=$(awk '$1 == "\"successes\":" { gsub(",", "", $2); print $2; exit }' "$summary" 2>/dev/null || true)
    if [ -z "$responses" ] || [ "$responses" -eq 0 ]; then
        log "$name: no responses"
        sed 's/^/    /' "$work/$name.txt" >&2
        return 0
    fi
    record "$name" $((after - before)) "$responses" "$successes" "$DURATION_S"
}

# wrk against URL as row NAME: GET, or with "presigned" the round's pre-signed creates
# (no warm-up then: it would use up the creates, and the server is warm by now).
measure_wrk() {
    local name=$1 url=$2 kind=${3:-get} before after output requests script=()
    if [ "$kind" = presigned ]; then
        script=(-s "$repository/loadtest/presigned.lua" "$url" -- "$work/presigned.bin" 1)
    else
        script=("$url")
        $priority taskset -c "$LOAD_CPU" wrk -t1 "-c$CONNECTIONS" "-d${WARMUP_S}s" "$url" >/dev/null
    fi
    before=$(server_cpu_ticks)
    output=$($priority taskset -c "$LOAD_CPU" wrk -t1 "-c$CONNECTIONS" "-d${DURATION_S}s" "${script[@]}")
    after=$(server_cpu_ticks)
    requests=$(echo "$output" | awk '/requests in/ { print $1; exit }')
    # wrk counts non-2xx apart; /healthz has none unless something broke.
    local bad
    bad=$(echo "$output" | awk '/Non-2xx/ { print $NF; exit }')
    record "$name" $((after - before)) "$requests" $((requests - ${bad:-0})) "$DURATION_S"
}

# Starts payd (plain; TLS when $1 is "tls"; BASELINE_PAYD plain when "baseline"),
# measures its rows, stops it.
with_payd() {
    local kind=$1 config="$work/payd-$1.toml" scheme=http tls_arguments=()
    local binary="$repository/target/release/payd"
    [ "$kind" != baseline ] || binary=$BASELINE_PAYD
    payd_config "$config" "$PAYD_PORT" false none "$MERCHANT" "env:PAYD_LOADTEST_SECRET"
    if [ "$kind" = tls ]; then
        printf '\n[server.tls]\ncert_file = "%s"\nkey_file = "%s"\n' \
            "$work/server.pem" "$work/server.key" >>"$config"
        scheme=https
        tls_arguments=(--tls-ca "$work/ca.pem")
    fi
    # curl (start_server's readiness probe) trusts the bench CA through this variable.
    CURL_CA_BUNDLE="$work/ca.pem" start_server "$scheme://$address/healthz" "$work/payd.stderr" \
        "$binary" serve --config "$config" || return 0
    measure_loadtest "healthz-$kind" --address "$address" --scenario healthz "${tls_arguments[@]}"
    measure_loadtest "create-$kind" --address "$address" --scenario payments \
        --secret env:PAYD_LOADTEST_SECRET "${tls_arguments[@]}"
    measure_loadtest "healthz-$kind-new-connection" --address "$address" --scenario healthz \
        --requests-per-connection 1 "${tls_arguments[@]}"
    measure_wrk "wrk-healthz-$kind" "$scheme://$address/healthz"
    measure_wrk "wrk-create-$kind" "$scheme://$address" presigned
    stop_server
}

run_round() {
    # Signed now: the signatures must be fresh for payd's timestamp tolerance.
    "$loadtest" presign --address "$address" --merchant "$MERCHANT" \
        --secret env:PAYD_LOADTEST_SECRET --count $((PRESIGNED_PER_S * DURATION_S)) \
        --out "$work/presigned.bin" 2>/dev/null
    local kinds=(plain tls) kind
    [ -z "$BASELINE_PAYD" ] || kinds+=(baseline)
    if [ $((round % 2)) -eq 0 ]; then
        local reversed=() index
        for ((index = ${#kinds[@]} - 1; index >= 0; index--)); do reversed+=("${kinds[index]}"); done
        kinds=("${reversed[@]}")
    fi
    for kind in "${kinds[@]}"; do
        with_payd "$kind"
    done
}

# "median min max" of the numbers on standard input ("- - -" for none).
spread() {
    sort -g | awk '{ v[NR] = $1 } END {
        if (NR == 0) { print "- - -"; exit }
        median = NR % 2 ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2
        printf "%.2f %s %s\n", median, v[1], v[NR]
    }'
}

median_of() {
    local name=$1 metric=$2 r
    for r in $(seq 1 "$RUNS"); do
        [ -z "${figure[$name,$metric,$r]:-}" ] || echo "${figure[$name,$metric,$r]}"
    done | spread | awk '{ print $1 }'
}

# Per-round A/B of a metric, as "median (min..max)".
ratio_of() {
    local a=$1 b=$2 metric=$3 r
    for r in $(seq 1 "$RUNS"); do
        ratio "${figure[$a,$metric,$r]:-}" "${figure[$b,$metric,$r]:-}"
    done | awk '$1 != "-"' | spread | awk '{ printf "%s (%s..%s)", $1, $2, $3 }'
}

# Per-round A-B of CPU µs per request, as "median (min..max)".
difference_of() {
    local a=$1 b=$2 r
    for r in $(seq 1 "$RUNS"); do
        awk -v a="${figure[$a,cpu,$r]:-}" -v b="${figure[$b,cpu,$r]:-}" \
            'BEGIN { if (a != "" && b != "") printf "%.2f\n", a - b }'
    done | spread | awk '{ printf "%s µs (%s..%s)", $1, $2, $3 }'
}

print_report() {
    echo "\`RUNS=$RUNS DURATION_S=$DURATION_S WARMUP_S=$WARMUP_S CONNECTIONS=$CONNECTIONS loadtest/bench-tls.sh\`:" \
        "payd (durability none, access log off) alone on CPU $SERVER_CPU, the client on CPU $LOAD_CPU," \
        "median of $RUNS round(s), both at $(priority_description);" \
        "$(lscpu | awk -F: '/^Model name/ { gsub(/^ +/, "", $2); print $2; exit }'), $(nproc) CPUs," \
        "Linux $(uname -r); load average $load_before before, $(cut -d' ' -f1-3 /proc/loadavg) after."
    echo
    echo "| run | 2xx/s | server CPU µs/req | server CPU % | not 2xx (all rounds) |"
    echo "| --- | ---: | ---: | ---: | ---: |"
    local name not2xx r
    for name in "${rows[@]}"; do
        not2xx=$(for r in $(seq 1 "$RUNS"); do echo "${figure[$name,not2xx,$r]:-0}"; done |
            awk '{ s += $1 } END { print s + 0 }')
        echo "| $name | $(median_of "$name" rate) | $(median_of "$name" cpu) |" \
            "$(median_of "$name" utilisation) | $not2xx |"
    done
    echo
    echo "- server CPU per keep-alive create, TLS / plain: $(ratio_of create-tls create-plain cpu) (target: at most 1.30)"
    echo "- server CPU per keep-alive /healthz, TLS / plain: $(ratio_of healthz-tls healthz-plain cpu); under wrk: $(ratio_of wrk-healthz-tls wrk-healthz-plain cpu)"
    echo "- server CPU per keep-alive create under wrk, TLS / plain: $(ratio_of wrk-create-tls wrk-create-plain cpu) (target: at most 1.30)"
    echo "- keep-alive creates/s, TLS / plain: $(ratio_of create-tls create-plain rate); under wrk: $(ratio_of wrk-create-tls wrk-create-plain rate)"
    echo "- server CPU of a full TLS handshake (new-connection /healthz, TLS minus plain): $(difference_of healthz-tls-new-connection healthz-plain-new-connection)"
    if [ -n "$BASELINE_PAYD" ]; then
        echo "- plain path, this build / baseline, server CPU per keep-alive create: $(ratio_of create-plain create-baseline cpu)," \
            "under wrk: $(ratio_of wrk-create-plain wrk-create-baseline cpu);" \
            "per keep-alive /healthz: $(ratio_of healthz-plain healthz-baseline cpu); under wrk: $(ratio_of wrk-healthz-plain wrk-healthz-baseline cpu)"
    fi
}

main() {
    install_tools wrk openssl
    build
    make_certificates
    raise_autogroup_priority
    load_before=$(cut -d' ' -f1-3 /proc/loadavg)
    for round in $(seq 1 "$RUNS"); do
        log "round $round of $RUNS"
        run_round
    done
    print_report
}

main "$@"
