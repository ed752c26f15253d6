//! `payd-loadtest`: a thread-per-core load generator for payd.
//!
//! Layout: `arguments` is the command line; `signing` computes API.md section 1
//! signatures; `workload` writes each connection's requests (health probes, or signed
//! creates, replays and reads); `client` runs one connection in a closed or open loop and
//! parses the responses; `stats` keeps HDR latency histograms and outcome counts per
//! thread; `run` pins the threads and merges their stats; `report` and `plot` print the
//! summaries, the JSON and the SVG; `presign` writes requests for wrk to replay; `tls`
//! sets up TLS for a run against an HTTPS listener; `websocket` is a connection of
//! `--transport ws` (requests as WebSocket messages).
//!
//! Each generator thread is pinned to one CPU with core_affinity and runs a glommio
//! executor of its own, holding its share of the connections; threads share nothing until
//! the end, when their statistics are merged.

mod arguments;
mod client;
mod plot;
mod presign;
mod report;
mod run;
mod signing;
mod stats;
mod tls;
mod websocket;
mod workload;

use clap::{Parser, Subcommand};
use std::process::ExitCode;

#[derive(Parser, Debug)]
#[command(name = "payd-loadtest", about = "Load generator for payd")]
struct Arguments {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Drive a running payd with N keep-alive connections and report what it answered.
    Run(arguments::RunArguments),
    /// Write signed requests to a file for wrk to replay (loadtest/presigned.lua).
    Presign(arguments::PresignArguments),
}

fn main() -> ExitCode {
    let result = match Arguments::parse().command {
        Command::Run(arguments) => run::run(arguments),
        Command::Presign(arguments) => presign::presign(arguments),
    };
    match result {
        Ok(code) => code,
        Err(message) => {
            eprintln!("payd-loadtest: {message}");
            ExitCode::from(2)
        }
    }
}
