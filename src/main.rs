//! The `payd` command line: `serve` (the default), `check-config`, `sign`, `acquirer-sim`.

use clap::{Args, Parser, Subcommand};
use payd::auth::{self, MerchantKeys};
use payd::config::{Config, MerchantConfig, REDACTED_SECRET};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{SystemTime, UNIX_EPOCH};

#[derive(Parser)]
#[command(name = "payd", version, about = "A thread-per-core payment server")]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// Serve payments. Without --config, the embedded defaults (docs/configuration.md).
    Serve {
        /// The TOML config file.
        #[arg(long)]
        config: Option<PathBuf>,
    },
    /// Validate a config file and print the effective config as TOML, secrets redacted.
    CheckConfig {
        /// The TOML config file.
        file: PathBuf,
    },
    /// Print the signature headers for a request (docs/api.md), or a curl command.
    Sign(SignArgs),
    /// Run the simulated acquirer as a standalone HTTP server (docs/api.md), for
    /// `acquirer.mode = "http"` in tests, demos and load tests.
    AcquirerSim(AcquirerSimArgs),
}

#[derive(Args)]
struct AcquirerSimArgs {
    /// The address to listen on; port 0 picks a free port (printed on stderr).
    #[arg(long, default_value = "127.0.0.1:9100")]
    listen: SocketAddr,
    /// Base latency of every authorisation.
    #[arg(long, default_value_t = 0)]
    latency_ms: u64,
    /// Uniform jitter added to the latency, 0 to this many milliseconds.
    #[arg(long, default_value_t = 0)]
    jitter_ms: u64,
    /// Probability (0 to 1) that an authorisation answers 503 whatever its token.
    #[arg(long, default_value_t = 0.0)]
    fail_rate: f64,
    /// The CPU to pin the simulator to; the last available one by default.
    #[arg(long)]
    cpu: Option<usize>,
}

#[derive(Args)]
struct SignArgs {
    /// The merchant id.
    #[arg(long, default_value = "m_demo")]
    merchant: String,
    /// The merchant secret. Prefer --secret-file or the PAYD_SECRET variable: a secret on
    /// the command line is visible to other users of the machine.
    #[arg(long, env = "PAYD_SECRET", hide_env_values = true)]
    secret: Option<String>,
    /// A file holding the merchant secret (one trailing newline is ignored).
    #[arg(long)]
    secret_file: Option<PathBuf>,
    #[arg(long, default_value = "POST")]
    method: String,
    /// Path and query exactly as they will be sent.
    #[arg(long, default_value = "/v1/payments")]
    target: String,
    /// The exact request body (empty for GET).
    #[arg(long, default_value = "")]
    body: String,
    /// Unix seconds; now by default.
    #[arg(long)]
    timestamp: Option<u64>,
    /// Print a ready curl command against this base URL (e.g. http://127.0.0.1:8080).
    #[arg(long)]
    curl: Option<String>,
}

fn main() -> ExitCode {
    // Before anything else: a panic on any thread, from here on, ends the process.
    payd::server::fail_stop::install();
    let cli = Cli::parse();
    let result = match cli.command {
        None => serve(None),
        Some(Command::Serve { config }) => serve(config),
        Some(Command::CheckConfig { file }) => check_config(&file),
        Some(Command::Sign(args)) => sign(&args),
        Some(Command::AcquirerSim(args)) => acquirer_sim(args),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(message) => {
            eprintln!("payd: {message}");
            ExitCode::FAILURE
        }
    }
}

/// The config file, or the embedded defaults with the demo merchant, whose secret is
/// generated on first start, kept in the data directory, and printed that once.
fn load(path: Option<&PathBuf>) -> Result<Config, String> {
    match path {
        Some(path) => Config::load(path).map_err(|e| e.to_string()),
        None => {
            let mut config = Config::default();
            let data_dir = config.storage.data_dir.clone();
            let (secret, created) = auth::load_or_create_demo_secret(&data_dir).map_err(|e| {
                format!(
                    "cannot keep the demo merchant's secret in {}: {e}",
                    data_dir.display()
                )
            })?;
            let secret_path = data_dir.join("m_demo.secret");
            if created {
                print_demo_secret(&secret, &secret_path);
            }
            config.merchants.push(MerchantConfig {
                id: "m_demo".to_string(),
                secrets: vec![format!("file:{}", secret_path.display())],
                webhook_url: None,
                webhook_secret: None,
            });
            Ok(config)
        }
    }
}

fn print_demo_secret(secret: &str, path: &Path) {
    eprintln!(
        "payd: created the demo merchant m_demo. Its secret, shown this once, is\n\n    {secret}\n\n\
         It is kept in {} (mode 0600). Sign a request with:\n    \
         payd sign --secret-file {} --body '{{...}}' --curl http://127.0.0.1:8080\n",
        path.display(),
        path.display()
    );
}

fn serve(path: Option<PathBuf>) -> Result<(), String> {
    let config = load(path.as_ref())?;
    let cpus = config.core_ids().map_err(|e| e.to_string())?;
    let keys = MerchantKeys::from_config(&config.merchants).map_err(|e| e.to_string())?;
    warn_without_merchants(&config);
    // The config and keys are read-only for the life of the process; every core
    // borrows them.
    let config: &'static Config = Box::leak(Box::new(config));
    let keys: &'static MerchantKeys = Box::leak(Box::new(keys));
    payd::server::serve(config, keys, &cpus)
}

fn acquirer_sim(args: AcquirerSimArgs) -> Result<(), String> {
    if !(0.0..=1.0).contains(&args.fail_rate) {
        return Err("acquirer-sim: --fail-rate must be between 0 and 1".into());
    }
    if let Some(cpu) = args.cpu {
        if !payd::config::available_cpus().contains(&cpu) {
            return Err(format!(
                "acquirer-sim: CPU {cpu} is not available to this process"
            ));
        }
    }
    payd::acquirer::sim_server::run(payd::acquirer::sim_server::SimSettings {
        listen: args.listen,
        latency_ms: args.latency_ms,
        jitter_ms: args.jitter_ms,
        fail_rate: args.fail_rate,
        cpu: args.cpu,
    })
}

/// A server without merchants is legal (operations routes work) but answers every
/// `/v1` request 401, which is rarely what the operator meant.
fn warn_without_merchants(config: &Config) {
    if config.merchants.is_empty() {
        eprintln!(
            "payd: warning: no merchant is configured (no [[merchants]] in the config \
             file), so every /v1 request will be answered 401"
        );
    }
}

/// Prints the effective config as TOML that `check-config` accepts again; what is not a
/// key (the file checked, the CPUs) goes in comments, warnings on stderr.
fn check_config(path: &PathBuf) -> Result<(), String> {
    let config = load(Some(path))?;
    let cpus = config.core_ids().map_err(|e| e.to_string())?;
    MerchantKeys::from_config(&config.merchants).map_err(|e| e.to_string())?;
    warn_without_merchants(&config);
    let text = config.to_toml_redacted()?;
    let cpus: Vec<String> = cpus.iter().map(usize::to_string).collect();
    println!(
        "# {} is valid. The effective config follows: every key with its",
        path.display()
    );
    println!("# value or default, literal secrets shown as {REDACTED_SECRET}.");
    println!("# payd would run on CPUs {}.", cpus.join(", "));
    print!("{text}");
    if !text.ends_with('\n') {
        println!();
    }
    Ok(())
}

fn sign(args: &SignArgs) -> Result<(), String> {
    let secret = match (&args.secret, &args.secret_file) {
        (Some(secret), None) => secret.as_bytes().to_vec(),
        (None, Some(file)) => payd::config::resolve_secret(&format!("file:{}", file.display()))?,
        _ => return Err("give exactly one of --secret (or PAYD_SECRET) and --secret-file".into()),
    };
    let timestamp = args.timestamp.unwrap_or_else(|| {
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs())
    });
    let method = args.method.to_ascii_uppercase();
    let signature = auth::sign_hex(
        &secret,
        timestamp,
        &method,
        &args.target,
        args.body.as_bytes(),
    );
    let headers = [
        format!("X-Payd-Merchant: {}", args.merchant),
        format!("X-Payd-Timestamp: {timestamp}"),
        format!("X-Payd-Signature: v1={signature}"),
    ];
    let Some(base) = &args.curl else {
        for header in headers {
            println!("{header}");
        }
        return Ok(());
    };
    let mut command = format!(
        "curl -s -X {method} {}",
        shell_quote(&format!("{base}{}", args.target))
    );
    if !args.body.is_empty() {
        command.push_str(" -H 'Content-Type: application/json' --data-binary ");
        command.push_str(&shell_quote(&args.body));
    }
    for header in headers {
        command.push_str(" -H ");
        command.push_str(&shell_quote(&header));
    }
    println!("{command}");
    Ok(())
}

/// Single-quotes a word for a POSIX shell.
fn shell_quote(word: &str) -> String {
    format!("'{}'", word.replace('\'', r"'\''"))
}
