#!/usr/bin/env bash
# The comparison of issue 7: payd's payments against its own /healthz and against nginx.
#
# One load generator (payd-loadtest, on LOAD_CPU) for every row, each server alone on
# SERVER_CPU, everything on 127.0.0.1. The rows:
#   - nginx-light `return 200` /healthz (the outside baseline);
#   - payd /healthz;
#   - payd creates with storage.durability "none" and "fsync", simulated acquirer;
#   - payd creates with each durability again in an open loop at half the rate its closed
#     loop just saturated at, coordinated-omission corrected: the latency targets;
#   - payd creates (durability none) on two server cores, SCALING_SERVER_CPUS, for the
#     per-core scaling target (on a 2-CPU machine the generator shares a server core:
#     the output says so, and the figure is then a lower bound, not the target's test).
# Each row gives 2xx responses/s, p50, p99 and p99.9, the server's CPU µs per request
# (utime+stime from /proc over the run, divided by responses), the whole machine's busy
# CPU µs per request minus the generator's own (work moved to kernel threads, softirqs or
# the other CPU is no saving), the server's CPU % and the machine's busy %.
# Then come the ratios behind docs/design.md's "Performance targets", memory per retained
# payment (payd's RSS growth over the durability-none create run, per payment created),
# where the machine's CPU went, the durability cost targets (fsync against none in CPU
# and throughput, the open loops' tails), and payd's own fdatasync latency.
#
# With RUNS=N the rows take turns, round after round (even rounds in reverse order, so a
# neighbour's slow drift does not always hit the same row). Each cell is the median over
# the rounds, and each ratio is computed per round: its median and its spread min..max.
#
# The output is markdown, ready for the README. It is also written to
# RESULTS_DIR/compare.md, with every row's payd-loadtest JSON summary (summaries/), and
# each open loop's latency percentile plot (latency-open-fsync.svg, latency-open-none.svg)
# and HDR distribution (.hdr), from the round with the median p99.
#
# Usage: loadtest/compare.sh
#        RUNS=3 DURATION_S=5 CONNECTIONS=64 loadtest/compare.sh
#        SCALING=0 RESULTS_DIR=/tmp/results loadtest/compare.sh
#        PERF=1 loadtest/compare.sh     (also profiles a fsync create run: see rows_profile)
#        BASELINE_PAYD=/path/to/old/payd loadtest/compare.sh   (that build's creates beside)
# It installs nginx-light with apt-get when it is missing (benchmarks only).
set -euo pipefail

DURATION_S=${DURATION_S:-10}
CONNECTIONS=${CONNECTIONS:-64}
WARMUP_S=${WARMUP_S:-1}
RUNS=${RUNS:-1}
SERVER_CPU=${SERVER_CPU:-0}
LOAD_CPU=${LOAD_CPU:-1}
# The two server cores of the scaling row; SCALING=0 leaves the row out.
SCALING=${SCALING:-1}
SCALING_SERVER_CPUS=${SCALING_SERVER_CPUS:-0,1}
READY_TIMEOUT_S=${READY_TIMEOUT_S:-30}
# PERF=1 profiles one more fsync create run, the whole machine, with perf (see rows_profile).
PERF=${PERF:-0}
PERF_RECORD_OPTIONS=${PERF_RECORD_OPTIONS:--a -g}
# Below this server CPU % (median), a closed-loop row measured the generator as much as
# the server: the output names such rows.
SATURATED_CPU_PERCENT_MIN=${SATURATED_CPU_PERCENT_MIN:-90}
# The durability cost targets: fsync creates against none in the same run, server's own
# and whole machine's CPU per create, throughput, and the open loops' tails.
CPU_RATIO_FSYNC_NONE_MAX=1.35
RATE_RATIO_FSYNC_NONE_MIN=0.75
OPEN_LOOP_P99_MAX_US=2000
OPEN_LOOP_P999_MAX_US=5000
# Above this share of the machine's CPU outside the generator, other processes (builds on
# a shared machine) make the machine figures say little: the output then says so.
NEIGHBOUR_PERCENT_MAX=${NEIGHBOUR_PERCENT_MAX:-20}
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
payd_binary="$repository/target/release/payd"
# Another payd build (an earlier commit's, say) measured in the same rounds, as rows
# baseline-create-none and baseline-create-fsync: before and after in one run.
BASELINE_PAYD=${BASELINE_PAYD:-}
RESULTS_DIR=${RESULTS_DIR:-$repository/loadtest/results}
payd_address="127.0.0.1:$PAYD_PORT"
round=0
load_before=""

cleanup() {
    stop_server
    restore_autogroup_priority
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

# figure[ROW,METRIC,ROUND]; rows in the order first measured.
declare -A figure
rows=()

# Per-request µs from a tick delta and this round's response count over warm-up and run.
ticks_per_request_us() {
    awk -v ticks="$1" -v requests="$2" -v hz="$clock_ticks_per_s" \
        'BEGIN { if (requests > 0) printf "%.2f\n", ticks / hz * 1e6 / requests }'
}

# Runs payd-loadtest against the running server and records row NAME of this round.
# Beside the server's own CPU it records the whole machine's: the busy ticks of all CPUs
# (/proc/stat) over the run minus the generator's own utime+stime. Work payd hands to
# kernel threads, softirqs or the other CPU shows there and not in the server's figure;
# so does every neighbour's on a shared machine, which is why the kernel threads'
# share is recorded too, and the rest (other processes, steal) apart.
measure() {
    local name=$1
    shift
    local summary="$work/$name.round$round.json" ticks_before ticks_after
    local kernel_before kernel_after busy_before all_before children_before
    [[ " ${rows[*]} " == *" $name "* ]] || rows+=("$name")
    ticks_before=$(server_cpu_ticks)
    kernel_before=$(kernel_thread_ticks)
    # Last before the generator starts, first after it ends: only it runs in between.
    read_machine_ticks
    busy_before=$machine_busy_ticks all_before=$machine_all_ticks children_before=$children_ticks
    $priority "$loadtest" run --cpus "$LOAD_CPU" --connections "$CONNECTIONS" \
        --duration-secs "$DURATION_S" --warmup-secs "$WARMUP_S" --merchant "$MERCHANT" \
        --secret env:PAYD_LOADTEST_SECRET --json "$summary" "$@" >"$work/$name.txt" || true
    read_machine_ticks
    kernel_after=$(kernel_thread_ticks)
    ticks_after=$(server_cpu_ticks)
    local responses successes failed cpu requests
    responses=$(json_top "$summary" responses 2>/dev/null || true)
    successes=$(json_top "$summary" successes 2>/dev/null || true)
    failed=$(json_top "$summary" failed_requests 2>/dev/null || true)
    [ -n "$responses" ] || { log "$name: no summary"; sed 's/^/    /' "$work/$name.txt" >&2; return 0; }
    # Only 2xx answers count as throughput: a fast stream of errors is no payment.
    figure[$name,rate,$round]=$(awk -v n="$successes" -v s="$DURATION_S" 'BEGIN { printf "%.0f", n / s }')
    # The warm-up's requests cost CPU too: count them at the measured response rate.
    requests=$(awk -v n="$responses" -v d="$DURATION_S" -v w="$WARMUP_S" 'BEGIN { printf "%.0f", n * (d + w) / d }')
    cpu=$(cpu_figures $((ticks_after - ticks_before)) "$requests" $((DURATION_S + WARMUP_S)))
    local server=$((ticks_after - ticks_before)) kernel=$((kernel_after - kernel_before))
    local generator=$((children_ticks - children_before))
    local outside_generator=$((machine_busy_ticks - busy_before - generator))
    # Errors are cheap to send: a run without a 2xx says nothing about a payment's cost.
    if [ "$successes" -gt 0 ]; then
        figure[$name,cpu,$round]=${cpu%% *}
        figure[$name,machine,$round]=$(ticks_per_request_us "$outside_generator" "$requests")
        figure[$name,kernel,$round]=$(ticks_per_request_us "$kernel" "$requests")
        figure[$name,server_kernel,$round]=$(ticks_per_request_us $((server + kernel)) "$requests")
        figure[$name,rest,$round]=$(ticks_per_request_us $((outside_generator - server - kernel)) "$requests")
        figure[$name,generator,$round]=$(ticks_per_request_us "$generator" "$requests")
    fi
    figure[$name,utilisation,$round]=${cpu##* }
    figure[$name,machine_busy,$round]=$(awk -v b=$((machine_busy_ticks - busy_before)) \
        -v a=$((machine_all_ticks - all_before)) 'BEGIN { if (a > 0) printf "%.0f", b * 100 / a }')
    figure[$name,p50,$round]=$(json_latency "$summary" p50)
    figure[$name,p99,$round]=$(json_latency "$summary" p99)
    figure[$name,p999,$round]=$(json_latency "$summary" p99.9)
    figure[$name,not2xx,$round]=$((responses - successes + failed))
    log "round $round, $name: ${figure[$name,rate,$round]} 2xx/s," \
        "p99 ${figure[$name,p99,$round]} µs, ${figure[$name,not2xx,$round]} not 2xx," \
        "CPU µs/req: server ${figure[$name,cpu,$round]:--}, machine - generator ${figure[$name,machine,$round]:--}"
}

server_rss_kib() {
    awk '/^VmRSS:/ { print $2 }' "/proc/$server_pid/status" 2>/dev/null || echo 0
}

# payd's /metrics, saved whole: a reader that stops early would fail curl's write.
fetch_metrics() {
    curl -s -o "$work/metrics.txt" "http://$payd_address/metrics" || : >"$work/metrics.txt"
}

# Payments payd created (201s of the create route) since it started, from /metrics.
payments_created() {
    fetch_metrics
    awk '/^payd_requests_total\{route="create_payment",status="201"\}/ { print $2; exit }' \
        "$work/metrics.txt"
}

# measure, plus payd's RSS growth per payment it created meanwhile: every payment
# stays in memory for the retention period, so this is the memory per retained payment.
measure_memory() {
    local name=$1 rss_before created_before rss_after created_after
    rss_before=$(server_rss_kib)
    created_before=$(payments_created)
    measure "$@"
    rss_after=$(server_rss_kib)
    created_after=$(payments_created)
    figure[$name,payments,$round]=$((${created_after:-0} - ${created_before:-0}))
    figure[$name,bytes_per_payment,$round]=$(awk -v a="$rss_after" -v b="$rss_before" \
        -v n="${figure[$name,payments,$round]}" 'BEGIN { if (n > 0) printf "%.0f", (a - b) * 1024 / n }')
}

with_nginx() {
    nginx_config "$work/nginx" "$NGINX_PORT"
    if start_server "http://127.0.0.1:$NGINX_PORT/healthz" "$work/nginx.stderr" \
        /usr/sbin/nginx -p "$work/nginx" -e "$work/nginx/error.log" -c "$work/nginx/nginx.conf"; then
        measure nginx-healthz --address "127.0.0.1:$NGINX_PORT" --scenario healthz
        stop_server
    fi
}

# Starts payd with DURABILITY on a fresh data directory, runs ROWS (a function and its
# arguments, as one word), stops payd.
with_payd() {
    local durability=$1 rows_step=$2 config="$work/payd-$1.toml"
    payd_config "$config" "$PAYD_PORT" true "$durability" "$MERCHANT" "$PAYD_LOADTEST_SECRET"
    if start_server "http://$payd_address/healthz" "$work/payd.stderr" \
        "$payd_binary" serve --config "$config"; then
        # shellcheck disable=SC2086
        $rows_step
        stop_server
    fi
}

rows_durability_none() {
    measure payd-healthz --address "$payd_address" --scenario healthz
    measure_memory payd-create-none --address "$payd_address" --scenario payments
}

# A quantile of payd's own fdatasync latency over the last minute, from /metrics, in µs
# (nothing when the window is empty: payd says NaN). The fsync rows each start a fresh
# payd and last less than a minute, so the window is the row's run and warm-up.
fsync_latency_us() {
    awk -v q="quantile=\"$1\"" '
        /^payd_wal_fsync_duration_recent_seconds\{/ && index($0, q) && $2 + 0 == $2 {
            printf "%.0f\n", $2 * 1e6; exit
        }
    ' "$work/metrics.txt"
}

# A metric without labels (a _count or _sum) from the last fetch_metrics, since start.
metric_value() {
    awk -v name="$1" '$1 == name { print $2; exit }' "$work/metrics.txt"
}

# measure, plus the fdatasync latency payd saw meanwhile (the floor of a durable create),
# how many creates each fdatasync made durable, and records per batch (both since payd
# started, which was for this row).
measure_fsync() {
    local name=$1
    measure "$@"
    fetch_metrics
    figure[$name,fsync_p50,$round]=$(fsync_latency_us 0.5)
    figure[$name,fsync_p99,$round]=$(fsync_latency_us 0.99)
    figure[$name,fsync_p999,$round]=$(fsync_latency_us 0.999)
    figure[$name,fsync_max,$round]=$(fsync_latency_us 1)
    local fsyncs created batches records
    fsyncs=$(metric_value payd_wal_fsync_duration_seconds_count)
    created=$(awk '/^payd_requests_total\{route="create_payment",status="201"\}/ { print $2; exit }' \
        "$work/metrics.txt")
    batches=$(metric_value payd_wal_records_per_batch_count)
    records=$(metric_value payd_wal_records_per_batch_sum)
    figure[$name,creates_per_fsync,$round]=$(awk -v c="$created" -v f="$fsyncs" \
        'BEGIN { if (f > 0 && c != "") printf "%.2f", c / f }')
    figure[$name,records_per_batch,$round]=$(awk -v r="$records" -v b="$batches" \
        'BEGIN { if (b > 0 && r != "") printf "%.2f", r / b }')
}

rows_fsync() {
    measure_fsync payd-create-fsync --address "$payd_address" --scenario payments
}

# The open loop at RATE (half this round's saturating rate) on a payd with DURABILITY,
# with the percentile plot and distribution kept per round.
rows_open_loop() {
    local durability=$1 rate=$2 measure_step=measure
    [ "$durability" = none ] || measure_step=measure_fsync
    $measure_step "payd-create-$durability-half-rate" --address "$payd_address" --scenario payments \
        --rate "$rate" --svg "$work/open-$durability.round$round.svg" \
        --hdr "$work/open-$durability.round$round.hdr"
}

# Half this round's 2xx rate of ROW, rounded; 0 when it was not measured.
half_rate_of() {
    awk -v r="${figure[$1,rate,$round]:-0}" 'BEGIN { printf "%.0f", r / 2 }'
}

# The closed loop of DURABILITY (run by ROWS_STEP), then, on a fresh payd, the open loop
# at half the rate it just saturated at.
closed_and_open() {
    local durability=$1 rows_step=$2 half_rate
    with_payd "$durability" "$rows_step"
    half_rate=$(half_rate_of "payd-create-$durability")
    if [ "$half_rate" -gt 0 ]; then
        with_payd "$durability" "rows_open_loop $durability $half_rate"
    fi
}

none_pair() {
    closed_and_open none rows_durability_none
}

fsync_pair() {
    closed_and_open fsync rows_fsync
}

rows_baseline_none() {
    measure baseline-create-none --address "$payd_address" --scenario payments
}

rows_baseline_fsync() {
    measure_fsync baseline-create-fsync --address "$payd_address" --scenario payments
}

# The closed-loop creates of the BASELINE_PAYD build, both durabilities.
baseline_pair() {
    local this_build=$payd_binary
    payd_binary=$BASELINE_PAYD
    with_payd none rows_baseline_none
    with_payd fsync rows_baseline_fsync
    payd_binary=$this_build
}

rows_two_cores() {
    measure payd-create-none-2-cores --address "$payd_address" --scenario payments
}

two_cores() {
    local one_core=$SERVER_CPU
    SERVER_CPU=$SCALING_SERVER_CPUS
    with_payd none rows_two_cores
    SERVER_CPU=$one_core
}

# One round: every row once; even rounds in reverse order (each closed and open loop pair
# stays a pair, the open loop second: its rate comes from the closed loop).
run_round() {
    local steps=(with_nginx none_pair fsync_pair)
    [ -z "$BASELINE_PAYD" ] || steps+=(baseline_pair)
    [ "$SCALING" = 0 ] || steps+=(two_cores)
    if [ $((round % 2)) -eq 0 ]; then
        local reversed=() index
        for ((index = ${#steps[@]} - 1; index >= 0; index--)); do reversed+=("${steps[index]}"); done
        steps=("${reversed[@]}")
    fi
    local step
    for step in "${steps[@]}"; do
        # shellcheck disable=SC2086
        $step
    done
}

# The values of ROW,METRIC over the rounds, one a line, numerically sorted.
values() {
    local name=$1 metric=$2 r
    for r in $(seq 1 "$RUNS"); do
        [ -z "${figure[$name,$metric,$r]:-}" ] || echo "${figure[$name,$metric,$r]}"
    done | sort -g
}

# "median min max" of sorted numbers on standard input, or "- - -" when there are none.
# The median of an even count is the mean of the middle two, printed as precisely as the
# inputs were (integers stay integers).
spread() {
    awk '{ v[NR] = $1; if ($1 ~ /\./) decimals = 2 } END {
        if (NR == 0) { print "- - -"; exit }
        median = NR % 2 ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2
        printf (decimals ? "%.2f" : "%.0f") " %s %s\n", median, v[1], v[NR]
    }'
}

median() {
    local result
    result=$(values "$1" "$2" | spread)
    echo "${result%% *}"
}

# The per-round ratios A_ROW,A_METRIC / B_ROW,B_METRIC (B_SCALE times), as "median min max".
ratio_spread() {
    local a_name=$1 a_metric=$2 b_name=$3 b_metric=$4 b_scale=${5:-1} r
    for r in $(seq 1 "$RUNS"); do
        ratio "${figure[$a_name,$a_metric,$r]:-}" \
            "$(awk -v b="${figure[$b_name,$b_metric,$r]:-}" -v s="$b_scale" 'BEGIN { if (b != "") print b * s }')"
    done | awk '$1 != "-"' | sort -g | spread
}

# The round whose p99 of ROW is the median (the lower middle one for an even count).
median_round_of() {
    local r
    for r in $(seq 1 "$RUNS"); do
        [ -z "${figure[$1,p99,$r]:-}" ] || echo "${figure[$1,p99,$r]} $r"
    done | sort -g | awk '{ line[NR] = $2 } END { if (NR) print line[int((NR + 1) / 2)] }'
}

# "median (min..max)" of per-round ratios, for prose.
ratio_text() {
    ratio_spread "$@" | awk '{ print $1 " (" $2 ".." $3 ")" }'
}

# A target line: NAME, "median min max", TARGET text, COMPARISON (le or ge) and LIMIT.
target_row() {
    local name=$1 figures=$2 target=$3 comparison=$4 limit=$5 unit=${6:-}
    local median_value minimum maximum verdict
    read -r median_value minimum maximum <<<"$figures"
    if [ "$median_value" = - ]; then
        verdict="not measured"
    elif awk -v m="$median_value" -v l="$limit" -v c="$comparison" \
        'BEGIN { exit !((c == "le" && m <= l) || (c == "ge" && m >= l)) }'; then
        verdict="met"
    else
        verdict="**missed**"
    fi
    local range="$minimum..$maximum"
    [ "$RUNS" -gt 1 ] || range="-"
    echo "| $name | $median_value$unit | $range | $target | $verdict |"
}

print_rows() {
    echo "| run | 2xx/s | p50 µs | p99 µs | p99.9 µs | server CPU µs/req | machine - generator CPU µs/req |" \
        "server CPU % | machine busy % | not 2xx (all rounds) |"
    echo "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"
    local name not2xx
    for name in "${rows[@]}"; do
        not2xx=$(values "$name" not2xx | awk '{ s += $1 } END { print s + 0 }')
        echo "| $name | $(median "$name" rate) | $(median "$name" p50) | $(median "$name" p99) |" \
            "$(median "$name" p999) | $(median "$name" cpu) | $(median "$name" machine) |" \
            "$(median "$name" utilisation) | $(median "$name" machine_busy) | $not2xx |"
    done
}

# Where the machine's busy CPU outside the generator went, per request.
print_machine_rows() {
    echo "| run | machine - generator µs/req | server µs/req | kernel threads µs/req |" \
        "other processes and steal µs/req | generator µs/req |"
    echo "| --- | ---: | ---: | ---: | ---: | ---: |"
    local name
    for name in "${rows[@]}"; do
        echo "| $name | $(median "$name" machine) | $(median "$name" cpu) | $(median "$name" kernel) |" \
            "$(median "$name" rest) | $(median "$name" generator) |"
    done
}

# payd's own fdatasync figures in the fsync rows, from its /metrics.
print_fsync_rows() {
    echo "| run | fdatasync p50 µs | p99 µs | p99.9 µs | max µs | creates per fdatasync | records per batch |"
    echo "| --- | ---: | ---: | ---: | ---: | ---: | ---: |"
    local name
    for name in payd-create-fsync payd-create-fsync-half-rate; do
        [[ " ${rows[*]} " == *" $name "* ]] || continue
        echo "| $name | $(median "$name" fsync_p50) | $(median "$name" fsync_p99) |" \
            "$(median "$name" fsync_p999) | $(median "$name" fsync_max) |" \
            "$(median "$name" creates_per_fsync) | $(median "$name" records_per_batch) |"
    done
}

# Whether LOAD_CPU is one of the scaling row's server CPUs.
load_shares_scaling_cores() {
    [[ ",$SCALING_SERVER_CPUS," == *",$LOAD_CPU,"* ]]
}

print_targets() {
    echo "| design target (docs/design.md) | median | spread min..max | target | verdict |"
    echo "| --- | ---: | ---: | ---: | --- |"
    target_row "server CPU per create (fsync) / nginx CPU per static 200" \
        "$(ratio_spread payd-create-fsync cpu nginx-healthz cpu)" "at most 1.3" le 1.3
    target_row "creates (fsync) / payd /healthz throughput, 1 core, $CONNECTIONS connections" \
        "$(ratio_spread payd-create-fsync rate payd-healthz rate)" "at least 0.8" ge 0.8
    target_row "p99, open loop at half the fsync rate" \
        "$(values payd-create-fsync-half-rate p99 | spread)" "at most 1000 µs" le 1000 " µs"
    target_row "p99.9, open loop at half the fsync rate" \
        "$(values payd-create-fsync-half-rate p999 | spread)" "at most 3000 µs" le 3000 " µs"
    target_row "memory per retained payment (RSS growth / payments, durability none)" \
        "$(values payd-create-none bytes_per_payment | spread)" "at most 256 bytes" le 256 " B"
    if [ "$SCALING" != 0 ]; then
        local label="per-core creates (none), cores $SCALING_SERVER_CPUS vs $SERVER_CPU"
        load_shares_scaling_cores && label="$label, generator sharing CPU $LOAD_CPU: a lower bound"
        target_row "$label" \
            "$(ratio_spread payd-create-none-2-cores rate payd-create-none rate 2)" "at least 0.9" ge 0.9
    fi
    echo
    echo "Context, not targets: creates with durability none / payd /healthz throughput:" \
        "$(ratio_spread payd-create-none rate payd-healthz rate | awk '{ print $1 " (" $2 ".." $3 ")" }');" \
        "server CPU per create (none) / nginx: $(ratio_spread payd-create-none cpu nginx-healthz cpu |
            awk '{ print $1 " (" $2 ".." $3 ")" }');" \
        "payments created in the memory run: $(median payd-create-none payments) (median)."
    echo
    echo "If the generator, not the server, set the pace, the throughput ratio says little; the" \
        "CPU ratio payd /healthz CPU µs / create (fsync) CPU µs is what a saturated core would" \
        "reach: $(ratio_spread payd-healthz cpu payd-create-fsync cpu | awk '{ print $1 " (" $2 ".." $3 ")" }')."
    local unsaturated
    # The open loop is below saturation by design.
    unsaturated=$(for name in "${rows[@]}"; do
        [[ $name != *-half-rate ]] || continue
        awk -v u="$(median "$name" utilisation)" -v n="$name" -v l="$SATURATED_CPU_PERCENT_MIN" \
            'BEGIN { if (u != "-" && u < l) printf "%s (%s %%), ", n, u }'
    done)
    [ -z "$unsaturated" ] || echo "Rows whose server used less than $SATURATED_CPU_PERCENT_MIN % of its" \
        "CPU (the generator, fdatasync or a neighbour set the pace): ${unsaturated%, }."
    if [ "$SCALING" != 0 ] && load_shares_scaling_cores; then
        echo
        echo "Per-core scaling is **not** tested as the design target means it: with $(nproc) CPUs the" \
            "generator cannot have cores of its own next to two server cores, so it shares CPU" \
            "$LOAD_CPU with the second one and the ratio above understates the scaling."
    fi
}

print_durability_targets() {
    echo "| durability cost target | median | spread min..max | target | verdict |"
    echo "| --- | ---: | ---: | ---: | --- |"
    target_row "server CPU per create, fsync / none" \
        "$(ratio_spread payd-create-fsync cpu payd-create-none cpu)" \
        "at most $CPU_RATIO_FSYNC_NONE_MAX" le "$CPU_RATIO_FSYNC_NONE_MAX"
    target_row "machine - generator CPU per create, fsync / none" \
        "$(ratio_spread payd-create-fsync machine payd-create-none machine)" \
        "at most $CPU_RATIO_FSYNC_NONE_MAX" le "$CPU_RATIO_FSYNC_NONE_MAX"
    target_row "creates/s, fsync / none, 1 core, $CONNECTIONS connections" \
        "$(ratio_spread payd-create-fsync rate payd-create-none rate)" \
        "at least $RATE_RATIO_FSYNC_NONE_MIN" ge "$RATE_RATIO_FSYNC_NONE_MIN"
    local durability
    for durability in fsync none; do
        target_row "p99, open loop at half the saturating $durability rate" \
            "$(values "payd-create-$durability-half-rate" p99 | spread)" \
            "at most $OPEN_LOOP_P99_MAX_US µs" le "$OPEN_LOOP_P99_MAX_US" " µs"
        target_row "p99.9, open loop at half the saturating $durability rate" \
            "$(values "payd-create-$durability-half-rate" p999 | spread)" \
            "at most $OPEN_LOOP_P999_MAX_US µs" le "$OPEN_LOOP_P999_MAX_US" " µs"
    done
    echo
    echo "Context, not targets: server + kernel threads CPU per create, fsync / none:" \
        "$(ratio_text payd-create-fsync server_kernel payd-create-none server_kernel)" \
        "(other processes left out: a lower bound, as softirqs that interrupt a neighbour are" \
        "charged to it); other processes and steal / machine - generator in the fsync create row:" \
        "$(ratio_text payd-create-fsync rest payd-create-fsync machine)," \
        "in the none create row: $(ratio_text payd-create-none rest payd-create-none machine)."
    local polluted
    polluted=$(ratio_spread payd-create-fsync rest payd-create-fsync machine |
        awk -v l="$NEIGHBOUR_PERCENT_MAX" '$1 != "-" && $1 * 100 > l { print "yes" }')
    [ -z "$polluted" ] || echo "Other processes took more than $NEIGHBOUR_PERCENT_MAX % of the" \
        "machine's CPU outside the generator in the fsync create row: the machine figures and their" \
        "ratio then measure the neighbours as much as payd, and server + kernel threads is the" \
        "better guide on this run."
}

print_report() {
    local command="RUNS=$RUNS DURATION_S=$DURATION_S WARMUP_S=$WARMUP_S CONNECTIONS=$CONNECTIONS"
    [ "$SCALING" != 0 ] || command="$command SCALING=0"
    echo "\`$command loadtest/compare.sh\`: payd-loadtest \`--connections $CONNECTIONS --cpus $LOAD_CPU" \
        "--duration-secs $DURATION_S --warmup-secs $WARMUP_S\`, the server alone on CPU $SERVER_CPU," \
        "median of $RUNS round(s) with the rows taking turns, both at $(priority_description);" \
        "$(lscpu | awk -F: '/^Model name/ { gsub(/^ +/, "", $2); print $2; exit }'), $(nproc) CPUs," \
        "Linux $(uname -r); load average $load_before before, $(cut -d' ' -f1-3 /proc/loadavg) after."
    echo
    print_rows
    echo
    print_targets
    echo
    echo "Where the CPU went: the machine's busy ticks (/proc/stat: user, nice, system, irq," \
        "softirq, steal) over each run minus the generator's own utime+stime, beside the" \
        "server's utime+stime (its io_uring io-wq threads included), the kernel threads'," \
        "and the rest (other processes, steal, interrupts on an idle CPU), per request."
    echo
    print_machine_rows
    echo
    print_durability_targets
    echo
    echo "payd's own fdatasync figures in the fsync rows (/metrics, median of the rounds): a" \
        "create with the simulated acquirer waits for one (its records are one group), perhaps" \
        "behind the sync in flight; in the open loop one slow sync also delays every request" \
        "due meanwhile."
    echo
    print_fsync_rows
}

# Keeps the summaries, and the open-loop plot and distribution of the median round.
save_results() {
    mkdir -p "$RESULTS_DIR/summaries"
    rm -f "$RESULTS_DIR"/summaries/*.json
    cp "$work"/*.json "$RESULTS_DIR/summaries/" 2>/dev/null || true
    local durability median_round
    for durability in fsync none; do
        median_round=$(median_round_of "payd-create-$durability-half-rate")
        if [ -n "$median_round" ] && [ -s "$work/open-$durability.round$median_round.svg" ]; then
            cp "$work/open-$durability.round$median_round.svg" "$RESULTS_DIR/latency-open-$durability.svg"
            cp "$work/open-$durability.round$median_round.hdr" "$RESULTS_DIR/latency-open-$durability.hdr"
            log "latency plot of round $median_round: $RESULTS_DIR/latency-open-$durability.svg"
        fi
    done
}

# PERF=1: after the rounds, one more closed-loop fsync create run on a fresh payd, not in
# the tables, under `perf record PERF_RECORD_OPTIONS` (default -a -g: every CPU, call
# graphs) into RESULTS_DIR/perf-fsync.data, with a summary of where the samples fell by
# command and shared object in perf-fsync-by-command.txt. Sampling perturbs what it
# measures, which is why this run is apart from the measured ones.
rows_profile() {
    local data="$RESULTS_DIR/perf-fsync.data"
    mkdir -p "$RESULTS_DIR"
    log "profiling a fsync create run: $data"
    # One word per option.
    # shellcheck disable=SC2086
    $priority perf record $PERF_RECORD_OPTIONS -o "$data" -- \
        "$loadtest" run --cpus "$LOAD_CPU" --connections "$CONNECTIONS" \
        --duration-secs "$DURATION_S" --warmup-secs "$WARMUP_S" --merchant "$MERCHANT" \
        --secret env:PAYD_LOADTEST_SECRET --address "$payd_address" --scenario payments \
        >"$RESULTS_DIR/perf-fsync-loadtest.txt" 2>"$work/perf.stderr" ||
        { log "perf record failed"; sed 's/^/    /' "$work/perf.stderr" >&2; return 0; }
    perf report -i "$data" --stdio --no-children --sort comm,dso -g none --percent-limit 0.5 \
        >"$RESULTS_DIR/perf-fsync-by-command.txt" 2>/dev/null || true
}

main() {
    local tools=(nginx-light)
    [ "$PERF" != 1 ] || tools+=(perf)
    install_tools "${tools[@]}"
    build
    raise_autogroup_priority
    load_before=$(cut -d' ' -f1-3 /proc/loadavg)
    for round in $(seq 1 "$RUNS"); do
        log "round $round of $RUNS"
        run_round
    done
    [ "$PERF" != 1 ] || with_payd fsync rows_profile
    local report
    report=$(print_report)
    save_results
    echo "$report" | tee "$RESULTS_DIR/compare.md"
}

main "$@"
