//! The command line: what to send (shared by `run` and `presign`) and how to run.

use crate::signing::Secret;
use crate::workload::{Scenario, Transport, WorkloadConfig};
use clap::ValueEnum;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::{SystemTime, UNIX_EPOCH};

pub const CONNECTIONS_MAX: usize = 100_000;
pub const PIPELINE_DEPTH_MAX: usize = 1024;
pub const DURATION_SECS_MAX: u64 = 24 * 60 * 60;
/// Pre-signed requests in one file: signatures expire after payd's timestamp tolerance,
/// so a file is for one run, not an archive.
pub const PRESIGN_COUNT_MAX: u64 = 10_000_000;

#[derive(ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum TransportArgument {
    /// HTTP/1.1 keep-alive requests (`--pipeline` of them written together).
    Http,
    /// WebSocket messages on `GET /v1/ws` (`--pipeline` of them in flight per connection).
    Ws,
}

#[derive(ValueEnum, Clone, Copy, Debug)]
pub enum ScenarioArgument {
    Healthz,
    Payments,
}

/// What each request is: the same for a live run and for pre-signed files.
#[derive(clap::Args, Debug)]
pub struct WorkloadArguments {
    /// payd's address.
    #[arg(long, default_value = "127.0.0.1:8080")]
    pub address: SocketAddr,
    #[arg(long, value_enum, default_value = "payments")]
    pub scenario: ScenarioArgument,
    #[arg(long, default_value = "m_demo")]
    pub merchant: String,
    /// The merchant secret: a literal, `env:NAME` or `file:PATH`.
    #[arg(long, default_value = "env:PAYD_LOADTEST_SECRET")]
    pub secret: String,
    /// Share of requests, in percent, that read back an earlier payment by order id.
    #[arg(long, default_value_t = 0)]
    pub reads_percent: u64,
    /// Share of requests, in percent, that replay an earlier create unchanged.
    #[arg(long, default_value_t = 0)]
    pub replays_percent: u64,
    #[arg(long, default_value_t = 1999)]
    pub amount: u64,
    #[arg(long, default_value = "CNY")]
    pub currency: String,
    /// The payment method token; the simulated acquirer answers by token (API.md section 4).
    #[arg(long, default_value = "tok_visa")]
    pub payment_method: String,
    /// `ws` sends each request as a WebSocket message instead (payments scenario only).
    #[arg(long, value_enum, default_value = "http")]
    pub transport: TransportArgument,
}

#[derive(clap::Args, Debug)]
pub struct RunArguments {
    #[command(flatten)]
    pub workload: WorkloadArguments,
    /// Keep-alive connections, spread over the generator threads.
    #[arg(long, default_value_t = 64)]
    pub connections: usize,
    /// CPUs to pin one generator thread each to, such as `1` or `1,2,3`; default: the last CPU.
    #[arg(long, value_delimiter = ',')]
    pub cpus: Vec<usize>,
    #[arg(long, default_value_t = 10)]
    pub duration_secs: u64,
    /// Sent but not recorded, before the measured duration.
    #[arg(long, default_value_t = 0)]
    pub warmup_secs: u64,
    /// Open loop at this many requests per second in total; without it, a closed loop.
    #[arg(long)]
    pub rate: Option<u64>,
    /// Requests written together on a connection (HTTP/1.1 pipelining).
    #[arg(long, default_value_t = 1)]
    pub pipeline: usize,
    /// A request with no response byte for this long fails as a timeout.
    #[arg(long, default_value_t = 10_000)]
    pub timeout_ms: u64,
    /// Write the JSON summary here (`-` for standard output, the text then going to stderr).
    #[arg(long)]
    pub json: Option<PathBuf>,
    /// Write the HDR percentile distribution of all latencies here.
    #[arg(long)]
    pub hdr: Option<PathBuf>,
    /// Write an SVG plot of the latency percentile curve, one line per request kind, here.
    #[arg(long)]
    pub svg: Option<PathBuf>,
    /// Speak TLS, trusting the CA certificates of this PEM file; the certificate must name
    /// the address's IP. Sessions are never resumed: every connection makes a full
    /// handshake.
    #[arg(long)]
    pub tls_ca: Option<PathBuf>,
    /// Close each connection after this many requests and open a new one (0: keep every
    /// connection to the end). With --tls-ca, 1 makes a full TLS handshake per request.
    #[arg(long, default_value_t = 0)]
    pub requests_per_connection: u64,
}

#[derive(clap::Args, Debug)]
pub struct PresignArguments {
    #[command(flatten)]
    pub workload: WorkloadArguments,
    /// How many requests to write.
    #[arg(long, default_value_t = 100_000)]
    pub count: u64,
    /// The file to write: whole HTTP/1.1 requests, each followed by one NUL byte.
    #[arg(long)]
    pub out: PathBuf,
}

impl WorkloadArguments {
    pub fn validate(&self) -> Result<(), String> {
        if self.reads_percent + self.replays_percent > 100 {
            return Err("--reads-percent and --replays-percent add up to more than 100".into());
        }
        if self.transport == TransportArgument::Ws
            && matches!(self.scenario, ScenarioArgument::Healthz)
        {
            return Err(
                "--transport ws carries signed payment requests: use --scenario payments".into(),
            );
        }
        Ok(())
    }

    /// The workload's config, its secret resolved; health probes are unsigned and need none.
    pub fn config(&self) -> Result<WorkloadConfig, String> {
        let scenario = match self.scenario {
            ScenarioArgument::Healthz => Scenario::Healthz,
            ScenarioArgument::Payments => Scenario::Payments,
        };
        let secret = match scenario {
            Scenario::Healthz => Secret::resolve("unused")?,
            Scenario::Payments => Secret::resolve(&self.secret)?,
        };
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default();
        Ok(WorkloadConfig {
            scenario,
            host: self.address.to_string(),
            merchant: self.merchant.clone(),
            secret,
            reads_percent: self.reads_percent,
            replays_percent: self.replays_percent,
            amount: self.amount,
            currency: self.currency.clone(),
            payment_method: self.payment_method.clone(),
            run_id: format!("lt{:x}{:x}", now.as_millis(), std::process::id()),
            transport: match self.transport {
                TransportArgument::Http => Transport::Http,
                TransportArgument::Ws => Transport::WebSocket,
            },
        })
    }
}

impl RunArguments {
    pub fn validate(&self) -> Result<(), String> {
        self.workload.validate()?;
        if self.connections == 0 || self.connections > CONNECTIONS_MAX {
            return Err(format!("--connections must be 1..={CONNECTIONS_MAX}"));
        }
        if self.pipeline == 0 || self.pipeline > PIPELINE_DEPTH_MAX {
            return Err(format!("--pipeline must be 1..={PIPELINE_DEPTH_MAX}"));
        }
        if self.duration_secs == 0 || self.duration_secs > DURATION_SECS_MAX {
            return Err(format!("--duration-secs must be 1..={DURATION_SECS_MAX}"));
        }
        if self.rate == Some(0) {
            return Err("--rate must be above 0".into());
        }
        if self.timeout_ms == 0 {
            return Err("--timeout-ms must be above 0".into());
        }
        Ok(())
    }
}

impl PresignArguments {
    pub fn validate(&self) -> Result<(), String> {
        self.workload.validate()?;
        if self.workload.transport != TransportArgument::Http {
            return Err(
                "presign writes HTTP requests for wrk: --transport ws does not apply".into(),
            );
        }
        if self.count == 0 || self.count > PRESIGN_COUNT_MAX {
            return Err(format!("--count must be 1..={PRESIGN_COUNT_MAX}"));
        }
        Ok(())
    }
}
