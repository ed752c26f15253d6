//! Metrics: per-core counters and HDR histograms, merged on scrape into Prometheus text.
//!
//! Each core owns one `CoreMetrics` and records into it without any synchronisation. A
//! scrape asks every core for a copy (`CoreMetrics` is `Send`) over the cross-core mesh,
//! merges the copies and renders the text exposition format 0.0.4.
//!
//! Durations are Prometheus histograms (buckets since start, which Prometheus can rate
//! and aggregate) next to summaries of the last minute from HDR histograms
//! (`distribution`). The label for a core is `core` (its CPU id) everywhere; a shard is
//! `shard`. Names follow Prometheus' conventions (base units, `_total` counters), and
//! `promtool check metrics` accepts the page.

mod distribution;
mod process;

pub use distribution::{Distribution, Scale, COUNT, DURATION, RECENT_SLICE_MS};
pub use process::ProcessFigures;

use distribution::render_family;
use hdrhistogram::Histogram;
use std::fmt::Write;

/// Nanoseconds per microsecond: callers that time in microseconds record through this.
const NANOSECONDS_PER_MICROSECOND: u64 = 1_000;

/// The route a request was answered on: the label of its request metrics.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Route {
    Healthz,
    Readyz,
    Metrics,
    CreatePayment,
    GetPayment,
    GetOrder,
    ListEvents,
    /// `/v1/ws` over HTTP: the WebSocket opening (101) or its refusal.
    WebSocket,
    NotFound,
    /// A request refused before it could be routed (malformed, too large, timed out).
    Unrouted,
}

impl Route {
    pub const ALL: [Route; 10] = [
        Route::Healthz,
        Route::Readyz,
        Route::Metrics,
        Route::CreatePayment,
        Route::GetPayment,
        Route::GetOrder,
        Route::ListEvents,
        Route::WebSocket,
        Route::NotFound,
        Route::Unrouted,
    ];

    pub fn label(self) -> &'static str {
        match self {
            Route::Healthz => "healthz",
            Route::Readyz => "readyz",
            Route::Metrics => "metrics",
            Route::CreatePayment => "create_payment",
            Route::GetPayment => "get_payment",
            Route::GetOrder => "get_order",
            Route::ListEvents => "list_events",
            Route::WebSocket => "websocket",
            Route::NotFound => "not_found",
            Route::Unrouted => "unrouted",
        }
    }

    fn index(self) -> usize {
        self as usize
    }
}

/// A step of handling a payment, timed on its own: the `stage` label.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Stage {
    /// A create's JSON body parsed and validated.
    Parse,
    /// A request signature checked (every signed route).
    Verify,
    /// The acquirer's final answer for a payment, retries included (the simulation's
    /// instant answers too).
    Acquirer,
    /// One wait for a record (or a pair written together) to be durable.
    Persist,
}

impl Stage {
    pub const ALL: [Stage; 4] = [Stage::Parse, Stage::Verify, Stage::Acquirer, Stage::Persist];

    pub fn label(self) -> &'static str {
        match self {
            Stage::Parse => "parse",
            Stage::Verify => "verify",
            Stage::Acquirer => "acquirer",
            Stage::Persist => "persist",
        }
    }
}

/// Every status payd answers with; the counter table has one column per entry.
const STATUSES: [u16; 19] = [
    200, 201, 202, 400, 401, 404, 405, 408, 409, 413, 415, 431, 500, 501, 503, 100, 101, 429, 0,
];

fn status_slot(status: u16) -> usize {
    // The last slot (0) collects anything unexpected, so a new status is never lost.
    STATUSES
        .iter()
        .position(|&known| known == status)
        .unwrap_or(STATUSES.len() - 1)
}

/// What one acquirer attempt came to: the `outcome` label of `payd_acquirer_calls_total`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AcquirerOutcome {
    Approved,
    Declined,
    /// A final 4xx: the payment fails with `acquirer_rejected`.
    Rejected,
    /// 408, 429 or 5xx: retried.
    RetryableStatus,
    /// A 200 whose body was not the contract's JSON, or bytes that were not HTTP.
    BadResponse,
    ConnectionError,
    /// The TLS handshake failed: a certificate that does not verify, above all.
    TlsError,
    /// Over `acquirer.attempt_timeout_ms`.
    Timeout,
    /// Failed fast by the open circuit breaker, without a call.
    BreakerOpen,
    /// Every pooled connection busy and the waiting queue full.
    PoolBusy,
}

impl AcquirerOutcome {
    pub const ALL: [AcquirerOutcome; 10] = [
        AcquirerOutcome::Approved,
        AcquirerOutcome::Declined,
        AcquirerOutcome::Rejected,
        AcquirerOutcome::RetryableStatus,
        AcquirerOutcome::BadResponse,
        AcquirerOutcome::ConnectionError,
        AcquirerOutcome::TlsError,
        AcquirerOutcome::Timeout,
        AcquirerOutcome::BreakerOpen,
        AcquirerOutcome::PoolBusy,
    ];

    pub fn label(self) -> &'static str {
        match self {
            AcquirerOutcome::Approved => "approved",
            AcquirerOutcome::Declined => "declined",
            AcquirerOutcome::Rejected => "rejected",
            AcquirerOutcome::RetryableStatus => "retryable_status",
            AcquirerOutcome::BadResponse => "bad_response",
            AcquirerOutcome::ConnectionError => "connection_error",
            AcquirerOutcome::TlsError => "tls_error",
            AcquirerOutcome::Timeout => "timeout",
            AcquirerOutcome::BreakerOpen => "breaker_open",
            AcquirerOutcome::PoolBusy => "pool_busy",
        }
    }
}

/// The circuit breaker's state as exported: one series per state, 1 for the current.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum BreakerGauge {
    #[default]
    Closed,
    Open,
    HalfOpen,
}

impl BreakerGauge {
    pub const ALL: [BreakerGauge; 3] = [
        BreakerGauge::Closed,
        BreakerGauge::Open,
        BreakerGauge::HalfOpen,
    ];

    pub fn label(self) -> &'static str {
        match self {
            BreakerGauge::Closed => "closed",
            BreakerGauge::Open => "open",
            BreakerGauge::HalfOpen => "half_open",
        }
    }
}

/// One core's acquirer client: attempts, their latency, its pool and its breaker.
#[derive(Clone, Debug, Default)]
pub struct AcquirerMetrics {
    calls: [u64; AcquirerOutcome::ALL.len()],
    /// Each attempt's duration.
    pub attempt_duration: Distribution,
    /// Attempts after the first of a payment.
    pub retries: u64,
    pub pool_size: u64,
    pub pool_connections_in_use: u64,
    /// The most connections ever in use at once on this core.
    pub pool_connections_in_use_max: u64,
    pub pool_connections_open: u64,
    pub pool_waiting: u64,
    pub pool_connects: u64,
    pub breaker_state: BreakerGauge,
    pub breaker_opened: u64,
}

impl AcquirerMetrics {
    pub fn record_call(&mut self, outcome: AcquirerOutcome, latency_us: u64) {
        self.calls[outcome as usize] += 1;
        self.attempt_duration
            .record(latency_us.saturating_mul(NANOSECONDS_PER_MICROSECOND));
    }

    pub fn calls(&self, outcome: AcquirerOutcome) -> u64 {
        self.calls[outcome as usize]
    }
}

/// What one webhook attempt came to: the `outcome` label of `payd_webhook_attempts_total`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WebhookAttemptOutcome {
    /// A 2xx answer.
    Success,
    /// Any other answer (3xx, 4xx, 5xx).
    Rejected,
    /// No answer within `webhooks.timeout_ms`.
    Timeout,
    /// No answer at all: refused, reset, not HTTP.
    ConnectionError,
    /// The TLS handshake failed: a certificate that does not verify, above all.
    TlsError,
}

impl WebhookAttemptOutcome {
    pub const ALL: [WebhookAttemptOutcome; 5] = [
        WebhookAttemptOutcome::Success,
        WebhookAttemptOutcome::Rejected,
        WebhookAttemptOutcome::Timeout,
        WebhookAttemptOutcome::ConnectionError,
        WebhookAttemptOutcome::TlsError,
    ];

    pub fn label(self) -> &'static str {
        match self {
            WebhookAttemptOutcome::Success => "success",
            WebhookAttemptOutcome::Rejected => "rejected",
            WebhookAttemptOutcome::Timeout => "timeout",
            WebhookAttemptOutcome::ConnectionError => "connection_error",
            WebhookAttemptOutcome::TlsError => "tls_error",
        }
    }
}

/// How an event's delivery ended: the `fate` label of `payd_webhook_deliveries_total`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WebhookFate {
    Delivered,
    DeadLettered,
    Gone,
}

impl WebhookFate {
    pub const ALL: [WebhookFate; 3] = [
        WebhookFate::Delivered,
        WebhookFate::DeadLettered,
        WebhookFate::Gone,
    ];

    pub fn label(self) -> &'static str {
        match self {
            WebhookFate::Delivered => "delivered",
            WebhookFate::DeadLettered => "dead_lettered",
            WebhookFate::Gone => "gone",
        }
    }
}

/// What one shard's webhook dispatcher holds, read when a copy is taken for a scrape.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct WebhookGauges {
    /// Events held in memory, in flight included.
    pub backlog: u64,
    pub in_flight: u64,
    /// Merchants with events waiting on disk because the backlog was full.
    pub merchants_waiting_on_disk: u64,
    /// Times an event was left on disk (or sent back there) by a full backlog.
    pub left_on_disk_total: u64,
    /// Reloads of waiting events from disk.
    pub reloads_total: u64,
    /// Dead letters held for `GET /v1/events?delivery=failed`.
    pub dead_letters: u64,
    /// Dead letters dropped from memory because the index was full.
    pub dead_letters_dropped_total: u64,
}

impl WebhookGauges {
    pub fn add(&mut self, other: &WebhookGauges) {
        self.backlog += other.backlog;
        self.in_flight += other.in_flight;
        self.merchants_waiting_on_disk += other.merchants_waiting_on_disk;
        self.left_on_disk_total += other.left_on_disk_total;
        self.reloads_total += other.reloads_total;
        self.dead_letters += other.dead_letters;
        self.dead_letters_dropped_total += other.dead_letters_dropped_total;
    }
}

/// One core's webhook dispatchers: attempts, their latency, finished deliveries, and the
/// gauges of its shards (summed when a copy is taken).
#[derive(Clone, Debug, Default)]
pub struct WebhookMetrics {
    attempts: [u64; WebhookAttemptOutcome::ALL.len()],
    deliveries: [u64; WebhookFate::ALL.len()],
    pub attempt_duration: Distribution,
    pub gauges: WebhookGauges,
}

impl WebhookMetrics {
    pub fn record_attempt(&mut self, outcome: WebhookAttemptOutcome, latency_us: u64) {
        self.attempts[outcome as usize] += 1;
        self.attempt_duration
            .record(latency_us.saturating_mul(NANOSECONDS_PER_MICROSECOND));
    }

    pub fn record_fate(&mut self, fate: WebhookFate) {
        self.deliveries[fate as usize] += 1;
    }

    pub fn attempts(&self, outcome: WebhookAttemptOutcome) -> u64 {
        self.attempts[outcome as usize]
    }

    pub fn deliveries(&self, fate: WebhookFate) -> u64 {
        self.deliveries[fate as usize]
    }
}

/// The close codes counted by `payd_websocket_closes_total`; anything else is "other",
/// and a connection that ended without any close frame is "none".
pub const WEBSOCKET_CLOSE_CODES: [u16; 7] = [1000, 1001, 1002, 1003, 1007, 1009, 1011];
const WEBSOCKET_CLOSE_SLOTS: usize = WEBSOCKET_CLOSE_CODES.len() + 2;
/// The `method` label of a WebSocket message; `invalid` for one without a request.
pub const WEBSOCKET_METHODS: [&str; 4] = ["GET", "POST", "OTHER", "invalid"];

/// One core's WebSocket connections: opened and open, messages answered by method and
/// status, and how connections ended.
#[derive(Clone, Debug)]
pub struct WebSocketMetrics {
    pub connections_opened: u64,
    pub connections_open: u64,
    messages: [[u64; STATUSES.len()]; WEBSOCKET_METHODS.len()],
    closes: [u64; WEBSOCKET_CLOSE_SLOTS],
    /// Status pushes of payments that became final.
    pub pushes: u64,
}

impl Default for WebSocketMetrics {
    fn default() -> WebSocketMetrics {
        WebSocketMetrics {
            connections_opened: 0,
            connections_open: 0,
            messages: [[0; STATUSES.len()]; WEBSOCKET_METHODS.len()],
            closes: [0; WEBSOCKET_CLOSE_SLOTS],
            pushes: 0,
        }
    }
}

impl WebSocketMetrics {
    /// `method` is an index into `WEBSOCKET_METHODS`.
    pub fn record_message(&mut self, method: usize, status: u16) {
        self.messages[method][status_slot(status)] += 1;
    }

    /// `code` is the close code sent or received; `None` when the connection simply ended.
    pub fn record_close(&mut self, code: Option<u16>) {
        let slot = match code {
            None => WEBSOCKET_CLOSE_SLOTS - 1,
            Some(code) => WEBSOCKET_CLOSE_CODES
                .iter()
                .position(|&known| known == code)
                .unwrap_or(WEBSOCKET_CLOSE_CODES.len()),
        };
        self.closes[slot] += 1;
    }

    fn close_label(slot: usize) -> String {
        match WEBSOCKET_CLOSE_CODES.get(slot) {
            Some(code) => code.to_string(),
            None if slot == WEBSOCKET_CLOSE_CODES.len() => "other".to_string(),
            None => "none".to_string(),
        }
    }
}

fn render_websocket(cores: &[CoreMetrics], out: &mut String) {
    let name = "payd_websocket_messages_total";
    let _ = writeln!(
        out,
        "# HELP {name} WebSocket messages answered, by method and status.\n# TYPE {name} counter"
    );
    for (method_index, method) in WEBSOCKET_METHODS.iter().enumerate() {
        for (slot, status) in STATUSES.iter().enumerate() {
            let total: u64 = cores
                .iter()
                .map(|core| core.websocket.messages[method_index][slot])
                .sum();
            if total > 0 {
                let _ = writeln!(
                    out,
                    "{name}{{method=\"{method}\",status=\"{status}\"}} {total}"
                );
            }
        }
    }
    let name = "payd_websocket_closes_total";
    let _ = writeln!(
        out,
        "# HELP {name} WebSocket connections ended, by the close code sent or received (none: no close frame).\n# TYPE {name} counter"
    );
    for slot in 0..WEBSOCKET_CLOSE_SLOTS {
        let total: u64 = cores.iter().map(|core| core.websocket.closes[slot]).sum();
        let label = WebSocketMetrics::close_label(slot);
        let _ = writeln!(out, "{name}{{code=\"{label}\"}} {total}");
    }
    let name = "payd_websocket_pushes_total";
    let pushes: u64 = cores.iter().map(|core| core.websocket.pushes).sum();
    let _ = writeln!(
        out,
        "# HELP {name} Payments pushed to the WebSocket connection that created them when they became final.\n# TYPE {name} counter\n{name} {pushes}"
    );
    let per_core: [PerCoreMetric; 2] = [
        (
            "payd_websocket_connections_open",
            "gauge",
            "Open WebSocket connections.",
            |m| m.websocket.connections_open,
        ),
        (
            "payd_websocket_connections_total",
            "counter",
            "WebSocket connections opened (101 answered).",
            |m| m.websocket.connections_opened,
        ),
    ];
    render_per_core(cores, &per_core, out);
}

/// One shard's retention, as its task last published it: counters since start, gauges as
/// of its last pass (every `storage.retention_check_interval_ms`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RetentionMetrics {
    pub shard: u16,
    pub passes: u64,
    /// Final payments (and their order ids) that left memory.
    pub payments_expired: u64,
    /// Payments appended again so that the segments holding them could go.
    pub payments_carried: u64,
    pub segments_deleted: u64,
    pub bytes_deleted: u64,
    /// Payments in the shard's memory.
    pub payments_retained: u64,
    /// Segment files of the shard's log, and their bytes on disk.
    pub log_segments: u64,
    pub log_bytes: u64,
    pub last_pass_duration_us: u64,
}

/// A retention counter: name, help, and how to read it from one shard's metrics.
type RetentionMetric = (&'static str, &'static str, fn(&RetentionMetrics) -> u64);

/// Counters summed over every shard; gauges per shard (a shard lives on one core).
fn render_retention(cores: &[CoreMetrics], out: &mut String) {
    let mut shards: Vec<&RetentionMetrics> =
        cores.iter().flat_map(|core| &core.retention).collect();
    shards.sort_by_key(|shard| shard.shard);
    let counters: [RetentionMetric; 5] = [
        ("payd_retention_passes_total", "Retention passes.", |m| {
            m.passes
        }),
        (
            "payd_retention_payments_expired_total",
            "Final payments that left memory after storage.retention_hours.",
            |m| m.payments_expired,
        ),
        (
            "payd_retention_payments_carried_total",
            "Payments appended again so that their old segments could be deleted.",
            |m| m.payments_carried,
        ),
        (
            "payd_retention_segments_deleted_total",
            "Log segment files deleted by retention.",
            |m| m.segments_deleted,
        ),
        (
            "payd_retention_bytes_deleted_total",
            "Bytes of the log segment files deleted by retention.",
            |m| m.bytes_deleted,
        ),
    ];
    for (name, help, read) in counters {
        let total: u64 = shards.iter().map(|shard| read(shard)).sum();
        let _ = writeln!(
            out,
            "# HELP {name} {help}\n# TYPE {name} counter\n{name} {total}"
        );
    }
    let gauges: [RetentionMetric; 3] = [
        (
            "payd_retention_payments_retained",
            "Payments held in memory, as of the last retention pass.",
            |m| m.payments_retained,
        ),
        (
            "payd_wal_segments",
            "Log segment files, as of the last retention pass.",
            |m| m.log_segments,
        ),
        (
            "payd_wal_disk_bytes",
            "Bytes of log segment files on disk, as of the last retention pass.",
            |m| m.log_bytes,
        ),
    ];
    for (name, help, read) in gauges {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} gauge");
        for shard in &shards {
            let _ = writeln!(out, "{name}{{shard=\"{}\"}} {}", shard.shard, read(shard));
        }
    }
    let name = "payd_retention_last_pass_duration_seconds";
    let _ = writeln!(
        out,
        "# HELP {name} How long the last retention pass took, deletion and carrying forward \
         included.\n# TYPE {name} gauge"
    );
    for shard in &shards {
        let seconds = shard.last_pass_duration_us as f64 / 1e6;
        let _ = writeln!(out, "{name}{{shard=\"{}\"}} {seconds}", shard.shard);
    }
}

/// The cumulative histograms of this core's shard logs, as the write-ahead log keeps
/// them: fdatasync latency in microseconds, and records per batch.
#[derive(Clone, Debug)]
pub struct WalTotals {
    pub fsync_latency_us: Histogram<u64>,
    pub records_per_batch: Histogram<u64>,
}

impl Default for WalTotals {
    fn default() -> WalTotals {
        let histogram =
            || Histogram::new(WAL_SIGNIFICANT_FIGURES).expect("valid significant figures");
        WalTotals {
            fsync_latency_us: histogram(),
            records_per_batch: histogram(),
        }
    }
}

impl WalTotals {
    /// Adds one shard log's histograms.
    pub fn add(&mut self, fsync_latency_us: &Histogram<u64>, records_per_batch: &Histogram<u64>) {
        // These histograms resize to take any value, so adding cannot fail.
        let _ = self.fsync_latency_us.add(fsync_latency_us);
        let _ = self.records_per_batch.add(records_per_batch);
    }

    /// What was recorded since `earlier`, a snapshot of the same logs; everything when
    /// `earlier` does not fit under these totals (it always does: logs only add).
    fn since(&self, earlier: &WalTotals) -> WalTotals {
        let difference = |now: &Histogram<u64>, then: &Histogram<u64>| {
            let mut recent = now.clone();
            if then.len() > now.len() || recent.subtract(then).is_err() {
                return now.clone();
            }
            recent
        };
        WalTotals {
            fsync_latency_us: difference(&self.fsync_latency_us, &earlier.fsync_latency_us),
            records_per_batch: difference(&self.records_per_batch, &earlier.records_per_batch),
        }
    }
}

/// The write-ahead log histograms' precision, as the log records them.
const WAL_SIGNIFICANT_FIGURES: u8 = 2;
/// Microseconds (the log's unit) into the nanoseconds of `DURATION`.
const WAL_LATENCY_RECORDED_PER_VALUE: u64 = NANOSECONDS_PER_MICROSECOND;

/// Snapshots of `WalTotals` taken at each rotation, oldest first: the totals now less the
/// oldest are the log's recent window. A scrape's copy carries none (see `Clone`).
#[derive(Debug, Default)]
struct WalHistory {
    snapshots: std::collections::VecDeque<WalTotals>,
}

impl Clone for WalHistory {
    /// Only the core that rotates needs its history; a scrape's copy travels without it.
    fn clone(&self) -> WalHistory {
        WalHistory::default()
    }
}

/// One core's metrics. Recorded without locks by its own core; copied on scrape.
#[derive(Clone, Debug)]
pub struct CoreMetrics {
    pub cpu: usize,
    requests: [[u64; STATUSES.len()]; Route::ALL.len()],
    /// Request durations, by route.
    durations: Vec<Distribution>,
    stages: Vec<Distribution>,
    /// The write-ahead log of this core's shards, filled in when a copy is taken.
    pub wal_fsync_duration: Distribution,
    pub wal_records_per_batch: Distribution,
    wal_history: WalHistory,
    /// Whether each shard of this core can still make records durable, by shard id;
    /// filled in when a copy is taken.
    pub shards_can_persist: Vec<(u16, bool)>,
    pub connections_open: u64,
    pub connections_accepted: u64,
    pub connections_rejected: u64,
    pub access_log_lines_dropped: u64,
    /// TLS handshakes of the listener that completed, and those that did not (a plain
    /// HTTP request on the TLS port, a client that distrusts the certificate, a timeout).
    pub tls_handshakes: u64,
    pub tls_handshake_failures: u64,
    pub acquirer: AcquirerMetrics,
    pub webhooks: WebhookMetrics,
    /// One entry per shard of this core, once its retention task has run.
    pub retention: Vec<RetentionMetrics>,
    pub websocket: WebSocketMetrics,
}

impl CoreMetrics {
    pub fn new(cpu: usize) -> CoreMetrics {
        CoreMetrics {
            cpu,
            requests: [[0; STATUSES.len()]; Route::ALL.len()],
            durations: Route::ALL.iter().map(|_| Distribution::default()).collect(),
            stages: Stage::ALL.iter().map(|_| Distribution::default()).collect(),
            wal_fsync_duration: Distribution::default(),
            wal_records_per_batch: Distribution::new(&COUNT),
            wal_history: WalHistory::default(),
            shards_can_persist: Vec::new(),
            connections_open: 0,
            connections_accepted: 0,
            connections_rejected: 0,
            access_log_lines_dropped: 0,
            tls_handshakes: 0,
            tls_handshake_failures: 0,
            acquirer: AcquirerMetrics::default(),
            webhooks: WebhookMetrics::default(),
            retention: Vec::new(),
            websocket: WebSocketMetrics::default(),
        }
    }

    pub fn record_request(&mut self, route: Route, status: u16, duration_ns: u64) {
        self.requests[route.index()][status_slot(status)] += 1;
        self.durations[route.index()].record(duration_ns);
    }

    pub fn record_stage(&mut self, stage: Stage, duration_ns: u64) {
        self.stages[stage as usize].record(duration_ns);
    }

    pub fn requests(&self, route: Route, status: u16) -> u64 {
        self.requests[route.index()][status_slot(status)]
    }

    /// Starts a new slice of every recent window (every `RECENT_SLICE_MS`, by the core's
    /// rotation task), with `wal` the totals of this core's logs at this moment.
    pub fn rotate(&mut self, wal: WalTotals) {
        for distribution in self.durations.iter_mut().chain(&mut self.stages) {
            distribution.rotate();
        }
        self.acquirer.attempt_duration.rotate();
        self.webhooks.attempt_duration.rotate();
        let snapshots = &mut self.wal_history.snapshots;
        if snapshots.len() == distribution::RECENT_SLICES {
            snapshots.pop_front();
        }
        snapshots.push_back(wal);
    }

    /// A copy for a scrape: everything recorded here, the log distributions made from
    /// `wal` (this core's log totals now: buckets since start, and the recent window
    /// since the oldest snapshot, or since start while the process is younger than the
    /// window), and whether each shard can persist.
    pub fn scrape_copy(
        &self,
        wal: &WalTotals,
        shards_can_persist: Vec<(u16, bool)>,
    ) -> CoreMetrics {
        let history = &self.wal_history.snapshots;
        let recent = match history.front() {
            Some(oldest) if history.len() == distribution::RECENT_SLICES => wal.since(oldest),
            _ => wal.clone(),
        };
        let mut copy = self.clone();
        copy.wal_fsync_duration = Distribution::from_histograms(
            &DURATION,
            &wal.fsync_latency_us,
            &recent.fsync_latency_us,
            WAL_LATENCY_RECORDED_PER_VALUE,
        );
        copy.wal_records_per_batch = Distribution::from_histograms(
            &COUNT,
            &wal.records_per_batch,
            &recent.records_per_batch,
            1,
        );
        copy.shards_can_persist = shards_can_persist;
        copy
    }

    /// Replaces what this core shows of one shard's retention.
    pub fn set_retention(&mut self, shard: RetentionMetrics) {
        match self.retention.iter_mut().find(|m| m.shard == shard.shard) {
            Some(slot) => *slot = shard,
            None => self.retention.push(shard),
        }
    }
}

/// A per-core metric: name, type, help, and how to read it from a core's metrics.
type PerCoreMetric = (
    &'static str,
    &'static str,
    &'static str,
    fn(&CoreMetrics) -> u64,
);

/// What a scrape shows besides the cores' metrics.
pub struct ProcessView {
    pub figures: ProcessFigures,
    /// Shards in the data directory: every one should report that it can persist.
    pub shard_count: u16,
    /// Recovered, listening and not shutting down (the lifecycle's part of `/readyz`).
    pub started: bool,
}

/// Renders every core's metrics, merged where a metric is per process.
pub fn render(cores: &[CoreMetrics], process: &ProcessView, out: &mut String) {
    render_requests(cores, out);
    render_durations(cores, out);
    render_wal(cores, out);
    render_shards(cores, process, out);
    render_acquirer(cores, out);
    render_webhooks(cores, out);
    render_retention(cores, out);
    render_websocket(cores, out);
    let per_core: [PerCoreMetric; 6] = [
        (
            "payd_connections_open",
            "gauge",
            "Open client connections.",
            |m| m.connections_open,
        ),
        (
            "payd_connections_accepted_total",
            "counter",
            "Client connections accepted.",
            |m| m.connections_accepted,
        ),
        (
            "payd_connections_rejected_total",
            "counter",
            "Connections refused with 503 because the core was at its connection limit.",
            |m| m.connections_rejected,
        ),
        (
            "payd_access_log_lines_dropped_total",
            "counter",
            "Access log lines dropped because the log could not keep up.",
            |m| m.access_log_lines_dropped,
        ),
        (
            "payd_tls_handshakes_total",
            "counter",
            "TLS handshakes of the listener that completed.",
            |m| m.tls_handshakes,
        ),
        (
            "payd_tls_handshake_failures_total",
            "counter",
            "TLS handshakes of the listener that failed or timed out (plain HTTP on the TLS port included).",
            |m| m.tls_handshake_failures,
        ),
    ];
    render_per_core(cores, &per_core, out);
    process.figures.render(out);
    process::render_build_info(out);
}

/// `payd_shard_can_persist` per shard, `payd_shards` and `payd_ready`: a shard whose log
/// failed (disk full, a failed fsync) shows 0; a shard whose core did not answer the
/// scrape is absent. `payd_ready` is 1 when `/readyz` would answer 200.
fn render_shards(cores: &[CoreMetrics], process: &ProcessView, out: &mut String) {
    let shard_count = process.shard_count;
    let mut shards: Vec<(u16, bool)> = cores
        .iter()
        .flat_map(|core| core.shards_can_persist.iter().copied())
        .collect();
    shards.sort_unstable();
    let every_shard_persists = shards.len() == usize::from(shard_count)
        && shards.iter().all(|&(_, can_persist)| can_persist);
    let ready = u8::from(process.started && every_shard_persists);
    let name = "payd_ready";
    let _ = writeln!(
        out,
        "# HELP {name} 1 when /readyz answers 200: recovered, listening, not stopping, and \
         every shard can persist.\n# TYPE {name} gauge\n{name} {ready}"
    );
    let name = "payd_shard_can_persist";
    let _ = writeln!(
        out,
        "# HELP {name} 1 while the shard can make records durable, 0 once its write-ahead log \
         failed (disk full, a failed fsync) and it answers 503.\n# TYPE {name} gauge"
    );
    for (shard, can_persist) in shards {
        let _ = writeln!(out, "{name}{{shard=\"{shard}\"}} {}", u8::from(can_persist));
    }
    let name = "payd_shards";
    let _ = writeln!(
        out,
        "# HELP {name} Shards in the data directory.\n# TYPE {name} gauge\n{name} {shard_count}"
    );
}

fn render_requests(cores: &[CoreMetrics], out: &mut String) {
    let name = "payd_requests_total";
    let _ = writeln!(
        out,
        "# HELP {name} Requests answered, by route and status.\n# TYPE {name} counter"
    );
    for route in Route::ALL {
        for (slot, status) in STATUSES.iter().enumerate() {
            let total: u64 = cores
                .iter()
                .map(|core| core.requests[route.index()][slot])
                .sum();
            if total > 0 {
                let _ = writeln!(
                    out,
                    "{name}{{route=\"{}\",status=\"{status}\"}} {total}",
                    route.label()
                );
            }
        }
    }
}

fn render_durations(cores: &[CoreMetrics], out: &mut String) {
    let mut series = Vec::new();
    let mut merged_routes = Vec::new();
    for route in Route::ALL {
        let mut merged = Distribution::default();
        for core in cores {
            merged.merge(&core.durations[route.index()]);
        }
        merged_routes.push((route, merged));
    }
    for (route, merged) in &merged_routes {
        if merged.count() > 0 {
            series.push((format!("route=\"{}\"", route.label()), merged));
        }
    }
    render_family(
        out,
        "payd_request_duration_seconds",
        "Time from a complete request to its response, by route.",
        &series,
    );
    let merged_stages: Vec<(Stage, Distribution)> = Stage::ALL
        .iter()
        .map(|&stage| {
            let mut merged = Distribution::default();
            for core in cores {
                merged.merge(&core.stages[stage as usize]);
            }
            (stage, merged)
        })
        .collect();
    let series: Vec<(String, &Distribution)> = merged_stages
        .iter()
        .map(|(stage, merged)| (format!("stage=\"{}\"", stage.label()), merged))
        .collect();
    render_family(
        out,
        "payd_stage_duration_seconds",
        "Time spent in one stage of handling a payment: parse (a create's body), verify (a \
         signature), acquirer (the final answer, retries included), persist (one wait for \
         durability).",
        &series,
    );
}

fn render_wal(cores: &[CoreMetrics], out: &mut String) {
    let mut fsync = Distribution::default();
    let mut batch = Distribution::new(&COUNT);
    for core in cores {
        fsync.merge(&core.wal_fsync_duration);
        batch.merge(&core.wal_records_per_batch);
    }
    render_family(
        out,
        "payd_wal_fsync_duration_seconds",
        "Write-ahead log fdatasync latency, every shard.",
        &[(String::new(), &fsync)],
    );
    render_family(
        out,
        "payd_wal_records_per_batch",
        "Records made durable by each group commit, every shard.",
        &[(String::new(), &batch)],
    );
}

fn render_acquirer(cores: &[CoreMetrics], out: &mut String) {
    let name = "payd_acquirer_calls_total";
    let _ = writeln!(
        out,
        "# HELP {name} Attempts to authorise with the acquirer, by outcome.\n# TYPE {name} counter"
    );
    for outcome in AcquirerOutcome::ALL {
        let total: u64 = cores.iter().map(|core| core.acquirer.calls(outcome)).sum();
        let _ = writeln!(out, "{name}{{outcome=\"{}\"}} {total}", outcome.label());
    }
    let mut duration = Distribution::default();
    for core in cores {
        duration.merge(&core.acquirer.attempt_duration);
    }
    render_family(
        out,
        "payd_acquirer_attempt_duration_seconds",
        "Duration of one attempt to authorise with the acquirer.",
        &[(String::new(), &duration)],
    );
    let name = "payd_acquirer_retries_total";
    let retries: u64 = cores.iter().map(|core| core.acquirer.retries).sum();
    let _ = writeln!(
        out,
        "# HELP {name} Attempts after the first for a payment.\n# TYPE {name} counter\n{name} {retries}"
    );
    render_acquirer_pool(cores, out);
    let name = "payd_acquirer_breaker_state";
    let _ = writeln!(
        out,
        "# HELP {name} The acquirer circuit breaker of each core: 1 for its current state.\n# TYPE {name} gauge"
    );
    for core in cores {
        for state in BreakerGauge::ALL {
            let value = u8::from(core.acquirer.breaker_state == state);
            let _ = writeln!(
                out,
                "{name}{{core=\"{}\",state=\"{}\"}} {value}",
                core.cpu,
                state.label()
            );
        }
    }
}

fn render_webhooks(cores: &[CoreMetrics], out: &mut String) {
    let name = "payd_webhook_attempts_total";
    let _ = writeln!(
        out,
        "# HELP {name} Webhook delivery attempts, by outcome.\n# TYPE {name} counter"
    );
    for outcome in WebhookAttemptOutcome::ALL {
        let total: u64 = cores
            .iter()
            .map(|core| core.webhooks.attempts(outcome))
            .sum();
        let _ = writeln!(out, "{name}{{outcome=\"{}\"}} {total}", outcome.label());
    }
    let name = "payd_webhook_deliveries_total";
    let _ = writeln!(
        out,
        "# HELP {name} Webhook events whose delivery ended, by how.\n# TYPE {name} counter"
    );
    for fate in WebhookFate::ALL {
        let total: u64 = cores
            .iter()
            .map(|core| core.webhooks.deliveries(fate))
            .sum();
        let _ = writeln!(out, "{name}{{outcome=\"{}\"}} {total}", fate.label());
    }
    let name = "payd_webhook_dead_letters_total";
    let dead: u64 = cores
        .iter()
        .map(|core| core.webhooks.deliveries(WebhookFate::DeadLettered))
        .sum();
    let _ = writeln!(
        out,
        "# HELP {name} Webhook events dead-lettered after the last retry.\n# TYPE {name} counter\n{name} {dead}"
    );
    let mut duration = Distribution::default();
    for core in cores {
        duration.merge(&core.webhooks.attempt_duration);
    }
    render_family(
        out,
        "payd_webhook_attempt_duration_seconds",
        "Duration of one webhook delivery attempt.",
        &[(String::new(), &duration)],
    );
    type Read = fn(&WebhookGauges) -> u64;
    let per_core: [(&str, &str, &str, Read); 7] = [
        (
            "payd_webhook_backlog",
            "gauge",
            "Webhook events held in memory per core, in flight included.",
            |g| g.backlog,
        ),
        (
            "payd_webhook_in_flight",
            "gauge",
            "Webhook attempts in flight per core.",
            |g| g.in_flight,
        ),
        (
            "payd_webhook_merchants_waiting_on_disk",
            "gauge",
            "Merchants (per shard, summed per core) with events waiting in the log because the backlog was full.",
            |g| g.merchants_waiting_on_disk,
        ),
        (
            "payd_webhook_left_on_disk_total",
            "counter",
            "Times a full backlog left a webhook event in the log (or sent one back there).",
            |g| g.left_on_disk_total,
        ),
        (
            "payd_webhook_reloads_total",
            "counter",
            "Reloads of waiting webhook events from the log.",
            |g| g.reloads_total,
        ),
        (
            "payd_webhook_dead_letters_held",
            "gauge",
            "Dead-lettered webhook events listed by GET /v1/events?delivery=failed.",
            |g| g.dead_letters,
        ),
        (
            "payd_webhook_dead_letters_dropped_total",
            "counter",
            "Dead letters dropped from memory because the per-shard index was full.",
            |g| g.dead_letters_dropped_total,
        ),
    ];
    for (name, kind, help, read) in per_core {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
        for core in cores {
            let _ = writeln!(
                out,
                "{name}{{core=\"{}\"}} {}",
                core.cpu,
                read(&core.webhooks.gauges)
            );
        }
    }
}

fn render_acquirer_pool(cores: &[CoreMetrics], out: &mut String) {
    let per_core: [PerCoreMetric; 7] = [
        (
            "payd_acquirer_pool_size",
            "gauge",
            "Connections the acquirer pool may open (acquirer.pool_size; 0 when simulated).",
            |m| m.acquirer.pool_size,
        ),
        (
            "payd_acquirer_pool_connections_in_use",
            "gauge",
            "Acquirer connections carrying a request.",
            |m| m.acquirer.pool_connections_in_use,
        ),
        (
            "payd_acquirer_pool_connections_in_use_max",
            "gauge",
            "The most acquirer connections ever in use at once.",
            |m| m.acquirer.pool_connections_in_use_max,
        ),
        (
            "payd_acquirer_pool_connections_open",
            "gauge",
            "Acquirer connections open, idle or in use.",
            |m| m.acquirer.pool_connections_open,
        ),
        (
            "payd_acquirer_pool_waiting",
            "gauge",
            "Attempts waiting for a free acquirer connection.",
            |m| m.acquirer.pool_waiting,
        ),
        (
            "payd_acquirer_pool_connects_total",
            "counter",
            "Connections opened to the acquirer.",
            |m| m.acquirer.pool_connects,
        ),
        (
            "payd_acquirer_breaker_opened_total",
            "counter",
            "Times the acquirer circuit breaker opened.",
            |m| m.acquirer.breaker_opened,
        ),
    ];
    render_per_core(cores, &per_core, out);
}

fn render_per_core(cores: &[CoreMetrics], metrics: &[PerCoreMetric], out: &mut String) {
    for (name, kind, help, value) in metrics {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
        for core in cores {
            let _ = writeln!(out, "{name}{{core=\"{}\"}} {}", core.cpu, value(core));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn view() -> ProcessView {
        ProcessView {
            figures: ProcessFigures {
                resident_memory_bytes: 4096,
                ..ProcessFigures::default()
            },
            shard_count: 2,
            started: true,
        }
    }

    #[test]
    fn merges_cores_into_histograms_and_recent_summaries() {
        let mut first = CoreMetrics::new(0);
        let mut second = CoreMetrics::new(1);
        first.record_request(Route::Healthz, 200, 10_000);
        second.record_request(Route::Healthz, 200, 1_000_000);
        second.record_request(Route::NotFound, 404, 5_000);
        second.connections_accepted = 3;
        first.record_stage(Stage::Verify, 1_500);
        let mut text = String::new();
        render(&[first, second], &view(), &mut text);
        assert!(text.contains("payd_requests_total{route=\"healthz\",status=\"200\"} 2\n"));
        assert!(text.contains("payd_requests_total{route=\"not_found\",status=\"404\"} 1\n"));
        assert!(text.contains("# TYPE payd_request_duration_seconds histogram\n"));
        assert!(text.contains(
            "payd_request_duration_seconds_bucket{route=\"healthz\",le=\"0.00001\"} 1\n"
        ));
        assert!(text
            .contains("payd_request_duration_seconds_bucket{route=\"healthz\",le=\"0.001\"} 2\n"));
        assert!(text.contains("payd_request_duration_seconds_count{route=\"healthz\"} 2\n"));
        assert!(text.contains("# TYPE payd_request_duration_recent_seconds summary\n"));
        let max_line = text
            .lines()
            .find(|line| {
                line.starts_with(
                    "payd_request_duration_recent_seconds{route=\"healthz\",quantile=\"1\"}",
                )
            })
            .expect("max quantile line");
        let max: f64 = max_line.rsplit(' ').next().unwrap().parse().unwrap();
        assert!((0.000995..=0.001005).contains(&max), "max {max}");
        assert!(text
            .contains("payd_stage_duration_seconds_bucket{stage=\"verify\",le=\"0.0000025\"} 1\n"));
        assert!(text.contains("payd_stage_duration_seconds_count{stage=\"persist\"} 0\n"));
        assert!(text.contains("payd_connections_accepted_total{core=\"1\"} 3\n"));
        assert!(text.contains("process_resident_memory_bytes 4096\n"));
        assert!(text.contains("payd_build_info{version=\""));
        assert!(!text.contains("route=\"get_payment\""));
    }

    #[test]
    fn shards_say_whether_they_can_persist() {
        let first = CoreMetrics::new(0).scrape_copy(&WalTotals::default(), vec![(0, true)]);
        let second = CoreMetrics::new(1).scrape_copy(&WalTotals::default(), vec![(1, false)]);
        let mut text = String::new();
        render(&[second, first], &view(), &mut text);
        assert!(text.contains(
            "payd_shard_can_persist{shard=\"0\"} 1\npayd_shard_can_persist{shard=\"1\"} 0\n"
        ));
        assert!(text.contains("payd_shards 2\n"));
        assert!(text.contains("payd_ready 0\n"), "a shard cannot persist");
    }

    #[test]
    fn the_logs_recent_window_is_the_totals_less_the_oldest_snapshot() {
        let mut metrics = CoreMetrics::new(0);
        let mut totals = WalTotals::default();
        let fsync = |values: &[u64]| {
            let mut histogram = Histogram::<u64>::new(2).unwrap();
            for &value in values {
                histogram.record(value).unwrap();
            }
            histogram
        };
        let batches = Histogram::<u64>::new(2).unwrap();
        totals.add(&fsync(&[9_000]), &batches);
        for _ in 0..distribution::RECENT_SLICES {
            metrics.rotate(totals.clone());
        }
        // A minute later, two faster syncs: only they are recent.
        totals.add(&fsync(&[100, 200]), &batches);
        let copy = metrics.scrape_copy(&totals, Vec::new());
        let mut text = String::new();
        render(&[copy], &view(), &mut text);
        assert!(
            text.contains("payd_wal_fsync_duration_seconds_count 3\n"),
            "{text}"
        );
        assert!(text.contains("payd_wal_fsync_duration_seconds_bucket{le=\"0.01\"} 3\n"));
        assert!(text.contains("payd_wal_fsync_duration_recent_seconds_count 2\n"));
        assert!(text.contains("payd_wal_fsync_duration_recent_seconds{quantile=\"1\"} 0.0002"));
    }

    #[test]
    fn acquirer_metrics_merge_calls_and_keep_gauges_per_core() {
        let mut first = CoreMetrics::new(0);
        let mut second = CoreMetrics::new(1);
        first
            .acquirer
            .record_call(AcquirerOutcome::Approved, 20_000);
        second
            .acquirer
            .record_call(AcquirerOutcome::Approved, 40_000);
        second
            .acquirer
            .record_call(AcquirerOutcome::Timeout, 5_000_000);
        second.acquirer.retries = 1;
        first.acquirer.pool_size = 64;
        first.acquirer.pool_connections_in_use_max = 7;
        second.acquirer.breaker_state = BreakerGauge::Open;
        let mut text = String::new();
        render(&[first, second], &view(), &mut text);
        assert!(text.contains("payd_acquirer_calls_total{outcome=\"approved\"} 2\n"));
        assert!(text.contains("payd_acquirer_calls_total{outcome=\"timeout\"} 1\n"));
        assert!(text.contains("payd_acquirer_calls_total{outcome=\"breaker_open\"} 0\n"));
        assert!(text.contains("payd_acquirer_attempt_duration_seconds_count 3\n"));
        assert!(text.contains("payd_acquirer_retries_total 1\n"));
        assert!(text.contains("payd_acquirer_pool_size{core=\"0\"} 64\n"));
        assert!(text.contains("payd_acquirer_pool_connections_in_use_max{core=\"0\"} 7\n"));
        assert!(text.contains("payd_acquirer_breaker_state{core=\"0\",state=\"closed\"} 1\n"));
        assert!(text.contains("payd_acquirer_breaker_state{core=\"1\",state=\"closed\"} 0\n"));
        assert!(text.contains("payd_acquirer_breaker_state{core=\"1\",state=\"open\"} 1\n"));
    }

    #[test]
    fn retention_counters_sum_every_shard_and_gauges_stay_per_shard() {
        let mut first = CoreMetrics::new(0);
        let mut second = CoreMetrics::new(1);
        let shard = |shard, expired, bytes| RetentionMetrics {
            shard,
            payments_expired: expired,
            log_bytes: bytes,
            ..RetentionMetrics::default()
        };
        first.set_retention(shard(2, 5, 100));
        first.set_retention(shard(0, 1, 10));
        second.set_retention(shard(1, 7, 1_000));
        // A later pass replaces its shard's entry rather than adding one.
        first.set_retention(shard(0, 3, 30));
        assert_eq!(first.retention.len(), 2);
        let mut text = String::new();
        render(&[first, second], &view(), &mut text);
        assert!(text.contains("payd_retention_payments_expired_total 15\n"));
        assert!(text.contains("payd_retention_segments_deleted_total 0\n"));
        assert!(text.contains(
            "payd_wal_disk_bytes{shard=\"0\"} 30\npayd_wal_disk_bytes{shard=\"1\"} 1000\n\
             payd_wal_disk_bytes{shard=\"2\"} 100\n"
        ));
        assert!(text.contains("# TYPE payd_retention_payments_retained gauge\n"));
    }

    #[test]
    fn websocket_messages_and_closes_merge_over_cores() {
        let mut first = CoreMetrics::new(0);
        let mut second = CoreMetrics::new(1);
        first.websocket.record_message(1, 201);
        second.websocket.record_message(1, 201);
        second.websocket.record_message(3, 400);
        second.websocket.record_message(1, 429);
        first.websocket.record_close(Some(1002));
        second.websocket.record_close(Some(4000));
        second.websocket.record_close(None);
        first.websocket.connections_open = 2;
        let mut text = String::new();
        render(&[first, second], &view(), &mut text);
        assert!(text.contains("payd_websocket_messages_total{method=\"POST\",status=\"201\"} 2\n"));
        assert!(
            text.contains("payd_websocket_messages_total{method=\"invalid\",status=\"400\"} 1\n")
        );
        assert!(text.contains("payd_websocket_messages_total{method=\"POST\",status=\"429\"} 1\n"));
        assert!(text.contains("payd_websocket_closes_total{code=\"1002\"} 1\n"));
        assert!(text.contains("payd_websocket_closes_total{code=\"other\"} 1\n"));
        assert!(text.contains("payd_websocket_closes_total{code=\"none\"} 1\n"));
        assert!(text.contains("payd_websocket_closes_total{code=\"1000\"} 0\n"));
        assert!(text.contains("payd_websocket_connections_open{core=\"0\"} 2\n"));
    }

    #[test]
    fn unexpected_status_is_still_counted() {
        let mut metrics = CoreMetrics::new(0);
        metrics.record_request(Route::Unrouted, 418, 1);
        assert_eq!(metrics.requests(Route::Unrouted, 418), 1);
    }
}
