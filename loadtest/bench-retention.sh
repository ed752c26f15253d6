#!/usr/bin/env bash
# Retention under constant load (issue 4): memory and disk stay bounded while payments
# keep coming.
#
# payd runs on SERVER_CPU with storage.retention_hours shortened to RETENTION_S seconds,
# a short retention_check_interval_ms and small segments (so they roll and can be
# deleted). payd-loadtest (on LOAD_CPU) creates payments in an open loop at RATE per
# second for DURATION_S. Every SAMPLE_S seconds this script samples payd's resident
# memory (VmRSS in /proc/PID/status), the bytes of its data directory (du), and from
# /metrics the payments created, the payments retained and the segment count. It prints
# a table, then compares the first sample after the warm-up (one retention, plus the time
# for the oldest segment to close and a check to run) with the last one: the payments
# created keep growing, memory and disk should not.
#
# Usage: loadtest/bench-retention.sh
#        DURATION_S=60 RETENTION_S=15 DURABILITY=none loadtest/bench-retention.sh
# Everything listens on 127.0.0.1; the server and the data directory are removed at exit.
set -euo pipefail

DURATION_S=${DURATION_S:-200}
RATE=${RATE:-2000}
CONNECTIONS=${CONNECTIONS:-16}
# 36 s: storage.retention_hours = 0.01.
RETENTION_S=${RETENTION_S:-36}
RETENTION_CHECK_INTERVAL_MS=${RETENTION_CHECK_INTERVAL_MS:-1000}
# 1 MiB: at 2000 payments/s a segment fills in a few seconds.
SEGMENT_BYTES=${SEGMENT_BYTES:-1048576}
DURABILITY=${DURABILITY:-fsync}
SAMPLE_S=${SAMPLE_S:-5}
WARMUP_S=${WARMUP_S:-$((RETENTION_S + 10))}
# The verdict: memory and disk at the end within this many percent of the warm-up sample.
BOUND_PERCENT=${BOUND_PERCENT:-25}
SERVER_CPU=${SERVER_CPU:-0}
LOAD_CPU=${LOAD_CPU:-1}
READY_TIMEOUT_S=${READY_TIMEOUT_S:-30}
# As root, server and generator run at this nice level (see bench-lib.sh).
PRIORITY_NICE=${PRIORITY_NICE:--10}
PAYD_PORT=${PAYD_PORT:-18492}
MERCHANT=m_bench
# A throwaway secret for a throwaway data directory, never a real merchant's.
export PAYD_LOADTEST_SECRET=retention-only-secret-0123456789abcdef

case $DURABILITY in
    fsync | none) ;;
    *) echo "DURABILITY must be fsync or none" >&2; exit 2 ;;
esac
if [ "$WARMUP_S" -ge "$DURATION_S" ]; then
    echo "DURATION_S ($DURATION_S) must be above the warm-up ($WARMUP_S s)" >&2
    exit 2
fi

work=$(mktemp -d /tmp/payd-retention.XXXXXX)
# shellcheck source=loadtest/bench-lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/bench-lib.sh"
loadtest_pid=""

cleanup() {
    if [ -n "$loadtest_pid" ]; then
        kill -TERM "$loadtest_pid" 2>/dev/null || true
        wait "$loadtest_pid" 2>/dev/null || true
    fi
    stop_server
    rm -rf "$work"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# The sum of every series of a metric in payd's /metrics (0 when absent).
metric_sum() {
    awk -v name="$2" '
        { series = $1; sub(/\{.*/, "", series) }
        series == name { total += $2 }
        END { printf "%.0f\n", total }
    ' "$1"
}

# The 201 answers to creates so far.
created_count() {
    awk '/^payd_requests_total\{route="create_payment",status="201"\}/ { print $2; found = 1 }
         END { if (!found) print 0 }' "$1"
}

# One row: seconds since the load began, created, retained, RSS, data dir bytes, segments.
sample() {
    local elapsed=$1 page="$work/metrics.txt" rss_kib disk_bytes
    curl -s -m 5 "http://127.0.0.1:$PAYD_PORT/metrics" >"$page" || : >"$page"
    rss_kib=$(awk '/^VmRSS:/ { print $2 }' "/proc/$server_pid/status" 2>/dev/null || echo 0)
    disk_bytes=$(du -sb "$work/payd-data" 2>/dev/null | awk '{ print $1 }')
    echo "$elapsed $(created_count "$page") $(metric_sum "$page" payd_retention_payments_retained)" \
        "$((rss_kib * 1024)) ${disk_bytes:-0} $(metric_sum "$page" payd_wal_segments)"
}

install_tools
build
config="$work/payd.toml"
payd_config "$config" "$PAYD_PORT" false "$DURABILITY" "$MERCHANT" "$PAYD_LOADTEST_SECRET"
retention_hours=$(awk -v s="$RETENTION_S" 'BEGIN { printf "%.10f", s / 3600 }')
sed -i "/^durability = /a retention_hours = $retention_hours\n\
retention_check_interval_ms = $RETENTION_CHECK_INTERVAL_MS\nsegment_bytes = $SEGMENT_BYTES" \
    "$config"
start_server "http://127.0.0.1:$PAYD_PORT/readyz" "$work/payd.stderr" \
    "$repository/target/release/payd" serve --config "$config"
log "payd pid $server_pid on CPU $SERVER_CPU, durability $DURABILITY," \
    "retention ${RETENTION_S} s, segments of $SEGMENT_BYTES bytes"

# The generator stops by itself after DURATION_S; `timeout` bounds it if it hangs.
$priority timeout $((DURATION_S + 30)) "$repository/target/release/payd-loadtest" run \
    --address "127.0.0.1:$PAYD_PORT" --cpus "$LOAD_CPU" --connections "$CONNECTIONS" \
    --rate "$RATE" --duration-secs "$DURATION_S" --merchant "$MERCHANT" \
    --secret env:PAYD_LOADTEST_SECRET --json "$work/load.json" >"$work/load.txt" 2>&1 &
loadtest_pid=$!
started=$SECONDS
samples="$work/samples.txt"
: >"$samples"
printf '%6s %10s %9s %9s %10s %9s\n' t_s created retained rss_mib data_mib segments
while kill -0 "$loadtest_pid" 2>/dev/null; do
    sleep "$SAMPLE_S"
    row=$(sample $((SECONDS - started)))
    echo "$row" >>"$samples"
    echo "$row" | awk '{ printf "%6d %10d %9d %9.1f %10.1f %9d\n", $1, $2, $3, $4 / 1048576, $5 / 1048576, $6 }'
done
wait "$loadtest_pid" || log "payd-loadtest exited with $?"
loadtest_pid=""
sed 's/^/    /' "$work/load.txt" >&2 || true

awk -v warmup="$WARMUP_S" -v retention="$RETENTION_S" -v bound="$BOUND_PERCENT" -v rate="$RATE" -v durability="$DURABILITY" '
    function row(label, r) {
        printf "%-22s t=%4d s  created %9d  retained %8d  RSS %7.1f MiB  data dir %7.1f MiB  segments %d\n",
            label, t[r], created[r], retained[r], rss[r] / 1048576, disk[r] / 1048576, segments[r]
    }
    function change(now, then) { return then ? (now - then) * 100 / then : 0 }
    {
        n++; t[n] = $1; created[n] = $2; retained[n] = $3; rss[n] = $4; disk[n] = $5; segments[n] = $6
        if (!first && $1 >= warmup) first = n
        if (!second && $1 >= 2 * retention) second = n
        if (first) {
            if ($4 > rss_max) rss_max = $4
            if ($5 > disk_max) disk_max = $5
        }
    }
    END {
        if (!first || first == n) { print "not enough samples after the warm-up"; exit 1 }
        print ""
        printf "open loop at %d payments/s, durability %s\n", rate, durability
        row("after warm-up:", first)
        if (second && second != first && second != n) row("after two retentions:", second)
        row("at the end:", n)
        rss_change = change(rss[n], rss[first]); disk_change = change(disk[n], disk[first])
        printf "payments created x%.2f; RSS %+.1f %% (max %+.1f %%); data dir %+.1f %% (max %+.1f %%)\n",
            created[first] ? created[n] / created[first] : 0, rss_change, change(rss_max, rss[first]),
            disk_change, change(disk_max, disk[first])
        bounded = (rss_change <= bound && disk_change <= bound && created[n] > created[first])
        printf "bounded within %d %%: %s\n", bound, bounded ? "yes" : "NO"
    }
' "$samples"
