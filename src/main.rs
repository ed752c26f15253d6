//! The `payd` command line: `serve` (the default), `check-config`.

use clap::{Parser, Subcommand};
use payd::config::Config;
use std::path::PathBuf;
use std::process::ExitCode;

#[derive(Parser)]
#[command(name = "payd", version, about = "A thread-per-core payment server")]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// Serve payments. Without --config, the embedded defaults (API.md section 7).
    Serve {
        /// The TOML config file.
        #[arg(long)]
        config: Option<PathBuf>,
    },
    /// Validate a config file and print the effective config, secrets redacted.
    CheckConfig {
        /// The TOML config file.
        file: PathBuf,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        None => serve(None),
        Some(Command::Serve { config }) => serve(config),
        Some(Command::CheckConfig { file }) => check_config(&file),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(message) => {
            eprintln!("payd: {message}");
            ExitCode::FAILURE
        }
    }
}

fn load(path: Option<&PathBuf>) -> Result<Config, String> {
    match path {
        Some(path) => Config::load(path).map_err(|e| e.to_string()),
        None => Ok(Config::default()),
    }
}

fn serve(path: Option<PathBuf>) -> Result<(), String> {
    let config = load(path.as_ref())?;
    let cpus = config.core_ids().map_err(|e| e.to_string())?;
    // The config is read-only for the life of the process; every core borrows it.
    let config: &'static Config = Box::leak(Box::new(config));
    payd::server::serve(config, &cpus)
}

fn check_config(path: &PathBuf) -> Result<(), String> {
    let config = load(Some(path))?;
    let cpus = config.core_ids().map_err(|e| e.to_string())?;
    println!("{config:#?}");
    println!("cores to run on: {cpus:?}");
    Ok(())
}
