//! `payd-loadtest`: a thread-per-core load generator for payd.
//!
//! Layout: `signing` computes API.md section 1 signatures; `workload` writes each
//! connection's requests (health probes, or signed creates, replays and reads);
//! `client` runs one connection in a closed or open loop and parses the responses;
//! `stats` keeps HDR latency histograms and outcome counts per thread; `report` prints
//! them and writes the JSON summary and the percentile distribution.
//!
//! Each generator thread is pinned to one CPU with core_affinity and runs a glommio
//! executor of its own, holding its share of the connections; threads share nothing until
//! the end, when their statistics are merged.

mod client;
mod report;
mod signing;
mod stats;
mod workload;

use clap::{Parser, Subcommand, ValueEnum};
use glommio::{LocalExecutorBuilder, Placement};
use report::RunShape;
use signing::Secret;
use stats::Stats;
use std::cell::RefCell;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::rc::Rc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use workload::{Scenario, Workload, WorkloadConfig};

/// Registered io_uring memory per generator thread: fits an 8 MiB locked-memory limit.
const IO_MEMORY_BYTES: usize = 256 * 1024;
const CONNECTIONS_MAX: usize = 100_000;
const PIPELINE_DEPTH_MAX: usize = 1024;
const DURATION_SECS_MAX: u64 = 24 * 60 * 60;

#[derive(Parser, Debug)]
#[command(name = "payd-loadtest", about = "Load generator for payd")]
struct Arguments {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Drive a running payd with N keep-alive connections and report what it answered.
    Run(RunArguments),
}

#[derive(ValueEnum, Clone, Copy, Debug)]
enum ScenarioArgument {
    Healthz,
    Payments,
}

#[derive(clap::Args, Debug)]
struct RunArguments {
    /// payd's address.
    #[arg(long, default_value = "127.0.0.1:8080")]
    address: SocketAddr,
    /// Keep-alive connections, spread over the generator threads.
    #[arg(long, default_value_t = 64)]
    connections: usize,
    /// CPUs to pin one generator thread each to, such as `1` or `1,2,3`; default: the last CPU.
    #[arg(long, value_delimiter = ',')]
    cpus: Vec<usize>,
    #[arg(long, default_value_t = 10)]
    duration_secs: u64,
    /// Sent but not recorded, before the measured duration.
    #[arg(long, default_value_t = 0)]
    warmup_secs: u64,
    #[arg(long, value_enum, default_value = "payments")]
    scenario: ScenarioArgument,
    /// Open loop at this many requests per second in total; without it, a closed loop.
    #[arg(long)]
    rate: Option<u64>,
    /// Requests written together on a connection (HTTP/1.1 pipelining).
    #[arg(long, default_value_t = 1)]
    pipeline: usize,
    #[arg(long, default_value = "m_demo")]
    merchant: String,
    /// The merchant secret: a literal, `env:NAME` or `file:PATH`.
    #[arg(long, default_value = "env:PAYD_LOADTEST_SECRET")]
    secret: String,
    /// Share of requests, in percent, that read back an earlier payment by order id.
    #[arg(long, default_value_t = 0)]
    reads_percent: u64,
    /// Share of requests, in percent, that replay an earlier create unchanged.
    #[arg(long, default_value_t = 0)]
    replays_percent: u64,
    #[arg(long, default_value_t = 1999)]
    amount: u64,
    #[arg(long, default_value = "CNY")]
    currency: String,
    /// The payment method token; the simulated acquirer answers by token (API.md section 4).
    #[arg(long, default_value = "tok_visa")]
    payment_method: String,
    /// A request with no response byte for this long fails as a timeout.
    #[arg(long, default_value_t = 10_000)]
    timeout_ms: u64,
    /// Write the JSON summary here (`-` for standard output, the text then going to stderr).
    #[arg(long)]
    json: Option<PathBuf>,
    /// Write the HDR percentile distribution of all latencies here.
    #[arg(long)]
    hdr: Option<PathBuf>,
}

fn main() -> ExitCode {
    let Command::Run(arguments) = Arguments::parse().command;
    match run(arguments) {
        Ok(code) => code,
        Err(message) => {
            eprintln!("payd-loadtest: {message}");
            ExitCode::from(2)
        }
    }
}

fn run(arguments: RunArguments) -> Result<ExitCode, String> {
    validate(&arguments)?;
    let cpus = chosen_cpus(&arguments.cpus)?;
    let config: &'static WorkloadConfig = Box::leak(Box::new(workload_config(&arguments)?));
    let warmup = Duration::from_secs(arguments.warmup_secs);
    let measured = Duration::from_secs(arguments.duration_secs);
    let start = Instant::now();
    let plan: &'static client::Plan = Box::leak(Box::new(client::Plan {
        address: arguments.address,
        pipeline_depth: arguments.pipeline,
        request_timeout: Duration::from_millis(arguments.timeout_ms),
        measure_from: start + warmup,
        end: start + warmup + measured,
        batch_interval: batch_interval(&arguments),
    }));
    let stats = run_threads(&cpus, arguments.connections, config, plan, start);
    let shape = RunShape {
        scenario: match config.scenario {
            Scenario::Healthz => "healthz",
            Scenario::Payments => "payments",
        },
        address: arguments.address.to_string(),
        connections: arguments.connections,
        cpus,
        pipeline_depth: arguments.pipeline,
        rate_per_s: arguments.rate,
        warmup,
        measured,
    };
    write_outputs(&arguments, &stats, &shape)?;
    Ok(if stats.responses() == 0 {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    })
}

fn validate(arguments: &RunArguments) -> Result<(), String> {
    if arguments.connections == 0 || arguments.connections > CONNECTIONS_MAX {
        return Err(format!("--connections must be 1..={CONNECTIONS_MAX}"));
    }
    if arguments.pipeline == 0 || arguments.pipeline > PIPELINE_DEPTH_MAX {
        return Err(format!("--pipeline must be 1..={PIPELINE_DEPTH_MAX}"));
    }
    if arguments.duration_secs == 0 || arguments.duration_secs > DURATION_SECS_MAX {
        return Err(format!("--duration-secs must be 1..={DURATION_SECS_MAX}"));
    }
    if arguments.reads_percent + arguments.replays_percent > 100 {
        return Err("--reads-percent and --replays-percent add up to more than 100".to_string());
    }
    if arguments.rate == Some(0) {
        return Err("--rate must be above 0".to_string());
    }
    if arguments.timeout_ms == 0 {
        return Err("--timeout-ms must be above 0".to_string());
    }
    Ok(())
}

/// The CPUs asked for, each checked to exist; by default the last one, since payd is
/// usually pinned from CPU 0 up.
fn chosen_cpus(asked: &[usize]) -> Result<Vec<usize>, String> {
    let available: Vec<usize> = core_affinity::get_core_ids()
        .ok_or("cannot list the CPUs")?
        .iter()
        .map(|core| core.id)
        .collect();
    if asked.is_empty() {
        return Ok(vec![*available.last().ok_or("no CPU is available")?]);
    }
    for cpu in asked {
        if !available.contains(cpu) {
            return Err(format!(
                "CPU {cpu} is not available (available: {available:?})"
            ));
        }
    }
    Ok(asked.to_vec())
}

fn workload_config(arguments: &RunArguments) -> Result<WorkloadConfig, String> {
    let scenario = match arguments.scenario {
        ScenarioArgument::Healthz => Scenario::Healthz,
        ScenarioArgument::Payments => Scenario::Payments,
    };
    // Health probes are unsigned, so they need no secret.
    let secret = match scenario {
        Scenario::Healthz => Secret::resolve("unused")?,
        Scenario::Payments => Secret::resolve(&arguments.secret)?,
    };
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    Ok(WorkloadConfig {
        scenario,
        host: arguments.address.to_string(),
        merchant: arguments.merchant.clone(),
        secret,
        reads_percent: arguments.reads_percent,
        replays_percent: arguments.replays_percent,
        amount: arguments.amount,
        currency: arguments.currency.clone(),
        payment_method: arguments.payment_method.clone(),
        run_id: format!("lt{:x}{:x}", now.as_millis(), std::process::id()),
    })
}

/// Open loop: each connection sends `pipeline` requests every `connections * pipeline / rate`.
fn batch_interval(arguments: &RunArguments) -> Option<Duration> {
    let rate = arguments.rate?;
    let requests_per_batch_round = (arguments.connections * arguments.pipeline) as f64;
    Some(Duration::from_secs_f64(
        requests_per_batch_round / rate as f64,
    ))
}

/// Starts one pinned thread per CPU with its share of the connections; merges their stats.
fn run_threads(
    cpus: &[usize],
    connections: usize,
    config: &'static WorkloadConfig,
    plan: &'static client::Plan,
    start: Instant,
) -> Stats {
    let threads = cpus.len().min(connections);
    let handles: Vec<_> = cpus[..threads]
        .iter()
        .enumerate()
        .map(|(thread, &cpu)| {
            let mine: Vec<usize> = (thread..connections).step_by(threads).collect();
            std::thread::Builder::new()
                .name(format!("loadtest-{cpu}"))
                .spawn(move || run_thread(cpu, thread, mine, connections, config, plan, start))
                .expect("a generator thread starts")
        })
        .collect();
    let mut total = Stats::new();
    for handle in handles {
        total.merge(&handle.join().expect("a generator thread finishes"));
    }
    total
}

fn run_thread(
    cpu: usize,
    thread: usize,
    connections_of_thread: Vec<usize>,
    connections: usize,
    config: &'static WorkloadConfig,
    plan: &'static client::Plan,
    start: Instant,
) -> Stats {
    assert!(
        core_affinity::set_for_current(core_affinity::CoreId { id: cpu }),
        "cannot pin a generator thread to CPU {cpu}"
    );
    let executor = LocalExecutorBuilder::new(Placement::Unbound)
        .name(&format!("loadtest-{cpu}"))
        .io_memory(IO_MEMORY_BYTES)
        .make()
        .expect("the generator executor starts");
    executor.run(async move {
        let stats = Rc::new(RefCell::new(Stats::new()));
        let tasks: Vec<_> = connections_of_thread
            .into_iter()
            .map(|connection| {
                // Spread the open-loop schedule so connections do not all send at once.
                let offset = plan
                    .batch_interval
                    .map(|interval| interval.mul_f64(connection as f64 / connections as f64))
                    .unwrap_or_default();
                let workload = Workload::new(config, thread, connection);
                glommio::spawn_local(client::run_connection(
                    plan,
                    workload,
                    stats.clone(),
                    start + offset,
                ))
            })
            .collect();
        for task in tasks {
            task.await;
        }
        Rc::try_unwrap(stats)
            .ok()
            .expect("every connection task has finished")
            .into_inner()
    })
}

fn write_outputs(arguments: &RunArguments, stats: &Stats, shape: &RunShape) -> Result<(), String> {
    let text = report::summary_text(stats, shape);
    let json = serde_json::to_string_pretty(&report::summary_json(stats, shape))
        .expect("a JSON value serialises");
    match arguments.json.as_deref() {
        Some(path) if path.as_os_str() == "-" => {
            eprint!("{text}");
            println!("{json}");
        }
        Some(path) => {
            print!("{text}");
            std::fs::write(path, json + "\n")
                .map_err(|error| format!("cannot write {}: {error}", path.display()))?;
        }
        None => print!("{text}"),
    }
    if let Some(path) = &arguments.hdr {
        let distribution = stats::percentile_distribution(&stats.latency_all_us());
        std::fs::write(path, distribution)
            .map_err(|error| format!("cannot write {}: {error}", path.display()))?;
    }
    Ok(())
}
