//! Metrics: per-core counters and HDR histograms, merged on scrape into Prometheus text.
//!
//! Each core owns one `CoreMetrics` and records into it without any synchronisation. A
//! scrape asks every core for a copy (`CoreMetrics` is `Send`) over the cross-core mesh,
//! merges the copies and renders the text exposition format 0.0.4.

use hdrhistogram::Histogram;
use std::fmt::Write;

/// Latencies are recorded in microseconds, up to this ceiling (larger values saturate).
pub const LATENCY_US_MAX: u64 = 60_000_000;
/// Two significant figures: 1% precision, about 20 KiB per histogram.
const LATENCY_SIGNIFICANT_FIGURES: u8 = 2;
/// Quantiles of every latency summary; 1.0 is rendered as the maximum.
pub const SUMMARY_QUANTILES: [f64; 5] = [0.5, 0.9, 0.99, 0.999, 1.0];

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
    NotFound,
    /// A request refused before it could be routed (malformed, too large, timed out).
    Unrouted,
}

impl Route {
    pub const ALL: [Route; 9] = [
        Route::Healthz,
        Route::Readyz,
        Route::Metrics,
        Route::CreatePayment,
        Route::GetPayment,
        Route::GetOrder,
        Route::ListEvents,
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
            Route::NotFound => "not_found",
            Route::Unrouted => "unrouted",
        }
    }

    fn index(self) -> usize {
        self as usize
    }
}

/// Every status payd answers with; the counter table has one column per entry.
const STATUSES: [u16; 17] = [
    200, 201, 202, 400, 401, 404, 405, 408, 409, 413, 415, 431, 500, 501, 503, 100, 0,
];

fn status_slot(status: u16) -> usize {
    // The last slot (0) collects anything unexpected, so a new status is never lost.
    STATUSES
        .iter()
        .position(|&known| known == status)
        .unwrap_or(STATUSES.len() - 1)
}

fn latency_histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, LATENCY_US_MAX, LATENCY_SIGNIFICANT_FIGURES)
        .expect("static histogram bounds are valid")
}

/// A latency distribution with its exact sum, for a Prometheus summary.
#[derive(Clone, Debug)]
pub struct LatencySummary {
    histogram: Histogram<u64>,
    sum_us: u64,
}

impl Default for LatencySummary {
    fn default() -> LatencySummary {
        LatencySummary {
            histogram: latency_histogram(),
            sum_us: 0,
        }
    }
}

impl LatencySummary {
    pub fn record(&mut self, latency_us: u64) {
        let clamped = latency_us.clamp(1, LATENCY_US_MAX);
        self.histogram.saturating_record(clamped);
        self.sum_us = self.sum_us.saturating_add(latency_us);
    }

    pub fn count(&self) -> u64 {
        self.histogram.len()
    }

    /// Adds a histogram recorded elsewhere (the log's); its sum is estimated from its mean.
    pub fn add_histogram(&mut self, other: &Histogram<u64>) {
        // Values recorded elsewhere fit these bounds (1 to a minute), so adding cannot fail.
        self.histogram
            .add(other)
            .expect("histogram values within bounds");
        self.sum_us = self
            .sum_us
            .saturating_add((other.mean() * other.len() as f64) as u64);
    }

    pub fn merge(&mut self, other: &LatencySummary) {
        // Same bounds on every core, so adding cannot fail.
        self.histogram
            .add(&other.histogram)
            .expect("histograms share bounds");
        self.sum_us = self.sum_us.saturating_add(other.sum_us);
    }

    pub fn quantile_us(&self, quantile: f64) -> u64 {
        if quantile >= 1.0 {
            self.histogram.max()
        } else {
            self.histogram.value_at_quantile(quantile)
        }
    }

    /// Renders the summary lines for one label set, e.g. `route="healthz"`.
    pub fn render(&self, out: &mut String, name: &str, labels: &str) {
        for quantile in SUMMARY_QUANTILES {
            let _ = writeln!(
                out,
                "{name}{{{labels},quantile=\"{quantile}\"}} {}",
                self.quantile_us(quantile)
            );
        }
        let _ = writeln!(out, "{name}_sum{{{labels}}} {}", self.sum_us);
        let _ = writeln!(out, "{name}_count{{{labels}}} {}", self.count());
    }
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
    pub attempt_latency: LatencySummary,
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
        self.attempt_latency.record(latency_us);
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
    pub attempt_latency: LatencySummary,
    pub gauges: WebhookGauges,
}

impl WebhookMetrics {
    pub fn record_attempt(&mut self, outcome: WebhookAttemptOutcome, latency_us: u64) {
        self.attempts[outcome as usize] += 1;
        self.attempt_latency.record(latency_us);
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
    let gauges: [RetentionMetric; 4] = [
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
        (
            "payd_retention_last_pass_duration_microseconds",
            "How long the last retention pass took, deletion and carrying forward included.",
            |m| m.last_pass_duration_us,
        ),
    ];
    for (name, help, read) in gauges {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} gauge");
        for shard in &shards {
            let _ = writeln!(out, "{name}{{shard=\"{}\"}} {}", shard.shard, read(shard));
        }
    }
}

/// One core's metrics. Recorded without locks by its own core; copied on scrape.
#[derive(Clone, Debug)]
pub struct CoreMetrics {
    pub cpu: usize,
    requests: [[u64; STATUSES.len()]; Route::ALL.len()],
    latency: Vec<LatencySummary>,
    /// The write-ahead log of this core's shards, filled in when a copy is taken.
    pub wal_fsync_latency: LatencySummary,
    pub wal_records_per_batch: LatencySummary,
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
}

impl CoreMetrics {
    pub fn new(cpu: usize) -> CoreMetrics {
        CoreMetrics {
            cpu,
            requests: [[0; STATUSES.len()]; Route::ALL.len()],
            latency: Route::ALL
                .iter()
                .map(|_| LatencySummary::default())
                .collect(),
            wal_fsync_latency: LatencySummary::default(),
            wal_records_per_batch: LatencySummary::default(),
            connections_open: 0,
            connections_accepted: 0,
            connections_rejected: 0,
            access_log_lines_dropped: 0,
            tls_handshakes: 0,
            tls_handshake_failures: 0,
            acquirer: AcquirerMetrics::default(),
            webhooks: WebhookMetrics::default(),
            retention: Vec::new(),
        }
    }

    pub fn record_request(&mut self, route: Route, status: u16, latency_us: u64) {
        self.requests[route.index()][status_slot(status)] += 1;
        self.latency[route.index()].record(latency_us);
    }

    pub fn requests(&self, route: Route, status: u16) -> u64 {
        self.requests[route.index()][status_slot(status)]
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

/// Renders every core's metrics, merged where a metric is per process.
pub fn render(cores: &[CoreMetrics], resident_memory_bytes: u64, out: &mut String) {
    render_requests(cores, out);
    render_latency(cores, out);
    render_wal(cores, out);
    render_acquirer(cores, out);
    render_webhooks(cores, out);
    render_retention(cores, out);
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
    let _ = writeln!(
        out,
        "# HELP process_resident_memory_bytes Resident memory size in bytes.\n\
         # TYPE process_resident_memory_bytes gauge\n\
         process_resident_memory_bytes {resident_memory_bytes}"
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

fn render_latency(cores: &[CoreMetrics], out: &mut String) {
    let name = "payd_request_latency_microseconds";
    let _ = writeln!(
        out,
        "# HELP {name} Request latency from a complete request to its response, by route.\n\
         # TYPE {name} summary"
    );
    for route in Route::ALL {
        let mut merged = LatencySummary::default();
        for core in cores {
            merged.merge(&core.latency[route.index()]);
        }
        if merged.count() > 0 {
            merged.render(out, name, &format!("route=\"{}\"", route.label()));
        }
    }
}

fn render_wal(cores: &[CoreMetrics], out: &mut String) {
    let mut fsync = LatencySummary::default();
    let mut batch = LatencySummary::default();
    for core in cores {
        fsync.merge(&core.wal_fsync_latency);
        batch.merge(&core.wal_records_per_batch);
    }
    for (name, help, summary) in [
        (
            "payd_wal_fsync_latency_microseconds",
            "Write-ahead log fdatasync latency.",
            &fsync,
        ),
        (
            "payd_wal_records_per_batch",
            "Records made durable by each group commit.",
            &batch,
        ),
    ] {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} summary");
        summary.render(out, name, "log=\"all\"");
    }
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
    let mut latency = LatencySummary::default();
    for core in cores {
        latency.merge(&core.acquirer.attempt_latency);
    }
    let name = "payd_acquirer_attempt_latency_microseconds";
    let _ = writeln!(
        out,
        "# HELP {name} Latency of one attempt to authorise with the acquirer.\n# TYPE {name} summary"
    );
    latency.render(out, name, "acquirer=\"all\"");
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
    let mut latency = LatencySummary::default();
    for core in cores {
        latency.merge(&core.webhooks.attempt_latency);
    }
    let name = "payd_webhook_attempt_latency_microseconds";
    let _ = writeln!(
        out,
        "# HELP {name} Latency of one webhook delivery attempt.\n# TYPE {name} summary"
    );
    latency.render(out, name, "webhook=\"all\"");
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
                "{name}{{cpu=\"{}\"}} {}",
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

/// Resident set size of this process, from /proc/self/statm (0 if unavailable).
pub fn resident_memory_bytes() -> u64 {
    let statm = std::fs::read_to_string("/proc/self/statm").unwrap_or_default();
    let pages: u64 = statm
        .split_whitespace()
        .nth(1)
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    // SAFETY: sysconf has no preconditions.
    let page_bytes = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    pages * u64::try_from(page_bytes).unwrap_or(4096)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn merges_cores_and_renders_summaries() {
        let mut first = CoreMetrics::new(0);
        let mut second = CoreMetrics::new(1);
        first.record_request(Route::Healthz, 200, 10);
        second.record_request(Route::Healthz, 200, 1000);
        second.record_request(Route::NotFound, 404, 5);
        second.connections_accepted = 3;
        let mut text = String::new();
        render(&[first, second], 4096, &mut text);
        assert!(text.contains("payd_requests_total{route=\"healthz\",status=\"200\"} 2\n"));
        assert!(text.contains("payd_requests_total{route=\"not_found\",status=\"404\"} 1\n"));
        assert!(text.contains(
            "payd_request_latency_microseconds{route=\"healthz\",quantile=\"0.5\"} 10\n"
        ));
        let max_line = text
            .lines()
            .find(|line| {
                line.starts_with(
                    "payd_request_latency_microseconds{route=\"healthz\",quantile=\"1\"}",
                )
            })
            .expect("max quantile line");
        let max: u64 = max_line.rsplit(' ').next().unwrap().parse().unwrap();
        assert!((995..=1005).contains(&max), "max {max}");
        assert!(text.contains("payd_request_latency_microseconds_count{route=\"healthz\"} 2\n"));
        assert!(text.contains("payd_connections_accepted_total{core=\"1\"} 3\n"));
        assert!(text.contains("process_resident_memory_bytes 4096\n"));
        assert!(!text.contains("route=\"get_payment\""));
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
        render(&[first, second], 0, &mut text);
        assert!(text.contains("payd_acquirer_calls_total{outcome=\"approved\"} 2\n"));
        assert!(text.contains("payd_acquirer_calls_total{outcome=\"timeout\"} 1\n"));
        assert!(text.contains("payd_acquirer_calls_total{outcome=\"breaker_open\"} 0\n"));
        assert!(
            text.contains("payd_acquirer_attempt_latency_microseconds_count{acquirer=\"all\"} 3\n")
        );
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
        render(&[first, second], 0, &mut text);
        assert!(text.contains("payd_retention_payments_expired_total 15\n"));
        assert!(text.contains("payd_retention_segments_deleted_total 0\n"));
        assert!(text.contains(
            "payd_wal_disk_bytes{shard=\"0\"} 30\npayd_wal_disk_bytes{shard=\"1\"} 1000\n\
             payd_wal_disk_bytes{shard=\"2\"} 100\n"
        ));
        assert!(text.contains("# TYPE payd_retention_payments_retained gauge\n"));
    }

    #[test]
    fn unexpected_status_is_still_counted() {
        let mut metrics = CoreMetrics::new(0);
        metrics.record_request(Route::Unrouted, 418, 1);
        assert_eq!(metrics.requests(Route::Unrouted, 418), 1);
    }
}
