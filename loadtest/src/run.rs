//! `payd-loadtest run`: pinned generator threads, each a glommio executor with its share of
//! the connections, and the report once every thread is done.

use crate::arguments::RunArguments;
use crate::client::{self, Plan};
use crate::report::{self, RunShape};
use crate::stats::{self, Stats};
use crate::workload::{Scenario, Transport, Workload, WorkloadConfig};
use glommio::{LocalExecutorBuilder, Placement};
use std::cell::RefCell;
use std::process::ExitCode;
use std::rc::Rc;
use std::time::{Duration, Instant};

/// Registered io_uring memory per generator thread: fits an 8 MiB locked-memory limit.
const IO_MEMORY_BYTES: usize = 256 * 1024;

pub fn run(arguments: RunArguments) -> Result<ExitCode, String> {
    arguments.validate()?;
    let cpus = chosen_cpus(&arguments.cpus)?;
    // Both live as long as the process; leaking them lets every task borrow them.
    let config: &'static WorkloadConfig = Box::leak(Box::new(arguments.workload.config()?));
    let warmup = Duration::from_secs(arguments.warmup_secs);
    let measured = Duration::from_secs(arguments.duration_secs);
    let start = Instant::now();
    let tls = match &arguments.tls_ca {
        Some(path) => Some(crate::tls::connector(path, arguments.workload.address)?),
        None => None,
    };
    let plan: &'static Plan = Box::leak(Box::new(Plan {
        address: arguments.workload.address,
        tls,
        requests_per_connection: arguments.requests_per_connection,
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
        transport: match config.transport {
            Transport::Http => "http",
            Transport::WebSocket => "ws",
        },
        address: arguments.workload.address.to_string(),
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

/// Open loop: each connection sends `pipeline` requests every `connections * pipeline / rate`.
fn batch_interval(arguments: &RunArguments) -> Option<Duration> {
    let rate = arguments.rate?;
    let requests_per_round = (arguments.connections * arguments.pipeline) as f64;
    Some(Duration::from_secs_f64(requests_per_round / rate as f64))
}

/// Starts one pinned thread per CPU with its share of the connections; merges their stats.
fn run_threads(
    cpus: &[usize],
    connections: usize,
    config: &'static WorkloadConfig,
    plan: &'static Plan,
    start: Instant,
) -> Stats {
    let threads = cpus.len().min(connections);
    let handles: Vec<_> = cpus[..threads]
        .iter()
        .enumerate()
        .map(|(thread, &cpu)| {
            let mine: Vec<usize> = (thread..connections).step_by(threads).collect();
            let share = ThreadShare {
                cpu,
                thread,
                connections: mine,
                connections_total: connections,
            };
            std::thread::Builder::new()
                .name(format!("loadtest-{cpu}"))
                .spawn(move || run_thread(share, config, plan, start))
                .expect("a generator thread starts")
        })
        .collect();
    let mut total = Stats::new();
    for handle in handles {
        total.merge(&handle.join().expect("a generator thread finishes"));
    }
    total
}

/// One generator thread's CPU and connections.
struct ThreadShare {
    cpu: usize,
    thread: usize,
    connections: Vec<usize>,
    connections_total: usize,
}

fn run_thread(
    share: ThreadShare,
    config: &'static WorkloadConfig,
    plan: &'static Plan,
    start: Instant,
) -> Stats {
    let cpu = share.cpu;
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
        let tasks: Vec<_> = share
            .connections
            .iter()
            .map(|&connection| {
                // Spread the open-loop schedule so connections do not all send at once.
                let offset = plan
                    .batch_interval
                    .map(|interval| {
                        interval.mul_f64(connection as f64 / share.connections_total as f64)
                    })
                    .unwrap_or_default();
                let workload = Workload::new(config, share.thread, connection);
                let first_due = start + offset;
                glommio::spawn_local(client::run_connection(
                    plan,
                    workload,
                    stats.clone(),
                    first_due,
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
            write_file(path, &(json + "\n"))?;
        }
        None => print!("{text}"),
    }
    if let Some(path) = &arguments.hdr {
        write_file(
            path,
            &stats::percentile_distribution(&stats.latency_all_us()),
        )?;
    }
    if let Some(path) = &arguments.svg {
        write_file(path, &crate::plot::latency_svg(stats, shape))?;
    }
    Ok(())
}

fn write_file(path: &std::path::Path, text: &str) -> Result<(), String> {
    std::fs::write(path, text).map_err(|error| format!("cannot write {}: {error}", path.display()))
}
