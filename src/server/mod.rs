//! The server: one pinned glommio executor per configured core, each with its own
//! `SO_REUSEPORT` listener, and the start-up and shutdown around them.
//!
//! Start-up starts the cores one after the other: core 0 binds first (so `listen` with
//! port 0 resolves to one port that every core then shares), and executors are created
//! in core order, which makes mesh peer `i` core `i`. Once every core listens, the
//! process is ready and says so on stderr. The main thread then only waits for SIGTERM
//! or SIGINT, flips the stopping flag, and waits for the cores to drain. SIGHUP reloads
//! the listener's TLS certificate and key (`reload_tls`) and asks every core to reopen
//! its access log. A panic anywhere ends the process (`fail_stop`).

mod access_log;
mod connection;
mod core;
pub mod fail_stop;
mod pipeline;
mod stamps;
mod stop;
pub mod websocket;

use crate::auth::MerchantKeys;
use crate::config::Config;
use crate::lifecycle;
use crate::shard::mesh;
use crate::tls::{ClientTls, ServerTls};
use crate::wal::DataDir;
use glommio::{LocalExecutorBuilder, Placement};
use std::net::SocketAddr;
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// A graceful close waits this long for the client to finish sending.
pub const LINGER_MS: u64 = 500;
/// ... and discards at most this many bytes meanwhile.
pub const LINGER_BYTES_MAX: usize = 64 * 1024;
/// Connections refused at the connection limit that may be closing at once, per core.
pub const REJECTED_LINGERING_MAX: usize = 1024;
/// glommio's registered I/O buffer per executor is kept within these bounds.
pub const IO_MEMORY_BYTES_MIN: usize = 64 << 10;
pub const IO_MEMORY_BYTES_MAX: usize = 1 << 20;
/// Each executor registers its I/O memory in three rings.
const IO_MEMORY_RINGS: usize = 3;

/// What a core reports to the start-up thread.
pub enum Started {
    Listening(SocketAddr),
    /// The core's shards are recovered and serving.
    Recovered,
    Failed(String),
}

/// Serves until a signal asks to stop and the cores have drained. `cpus` are the CPU ids
/// to pin one executor each to, already checked against the machine.
pub fn serve(
    config: &'static Config,
    keys: &'static MerchantKeys,
    cpus: &[usize],
) -> Result<(), String> {
    let signals = block_shutdown_signals();
    refuse_if_in_use(config.server.listen)?;
    ignore_file_size_signal();
    let (server_tls, client_tls) = load_tls(config)?;
    let io_memory = io_memory_bytes(cpus.len());
    let mesh = (cpus.len() > 1).then(|| mesh::new_mesh(cpus.len()));
    let process_id = random_u32();
    let shards_if_new = match config.storage.shards {
        0 => u16::try_from(cpus.len()).expect("core count fits u16"),
        shards => shards,
    };
    // Locked for the life of the process; the manifest fixes the shard count for ever.
    let data_dir =
        DataDir::open(&config.storage.data_dir, shards_if_new).map_err(|e| e.to_string())?;
    let data_dir: &'static DataDir = Box::leak(Box::new(data_dir));
    let (started_sender, started) = mpsc::channel();
    let (exited_sender, exited) = mpsc::channel::<usize>();
    let mut listen = config.server.listen;
    for (index, &cpu) in cpus.iter().enumerate() {
        let start = core::CoreStart {
            config,
            keys,
            data_dir,
            index,
            cpu,
            listen,
            mesh: mesh.clone(),
            process_id,
            started: started_sender.clone(),
            server_tls,
            client_tls: client_tls.clone(),
        };
        let exited_sender = exited_sender.clone();
        LocalExecutorBuilder::new(Placement::Fixed(cpu))
            .name(&format!("payd-core{cpu}"))
            .io_memory(io_memory)
            .spawn(move || async move {
                let _exit = ExitReport {
                    index,
                    sender: exited_sender,
                };
                core::run(start).await;
            })
            .map_err(|e| format!("cannot start an executor on cpu {cpu}: {e}"))?;
        match started.recv() {
            Ok(Started::Listening(address)) => listen = address,
            Ok(Started::Failed(message)) => return Err(message),
            Ok(Started::Recovered) | Err(_) => {
                return Err(format!("core {index} (cpu {cpu}) failed to start"))
            }
        }
    }
    for _ in cpus {
        match started.recv() {
            Ok(Started::Recovered) => {}
            Ok(Started::Failed(message)) => return Err(message),
            Ok(Started::Listening(_)) | Err(_) => return Err("a core failed to recover".into()),
        }
    }
    lifecycle::set_ready();
    eprintln!("payd: ready, listening on {listen}");
    wait_for_shutdown(config, &signals, &exited, cpus.len(), server_tls)
}

/// The listener's certificate and key (the config checked them; they are read again
/// here, as they will be on every reload) and the roots of outbound calls: the system's
/// store is read only when some URL is `https://`.
fn load_tls(config: &Config) -> Result<(Option<&'static ServerTls>, ClientTls), String> {
    let server_tls = match &config.server.tls {
        None => None,
        Some(tls) => {
            let loaded = ServerTls::load(&tls.cert_file, &tls.key_file)
                .map_err(|e| format!("server.tls: {e}"))?;
            // Lives as long as the process: every core's acceptor borrows it.
            Some(&*Box::leak(Box::new(loaded)))
        }
    };
    let extra = config.tls.extra_ca_file.as_deref();
    if !config.calls_https() {
        return Ok((server_tls, ClientTls::without_roots()));
    }
    let (client_tls, counts) =
        ClientTls::load(extra).map_err(|e| format!("tls.extra_ca_file: {e}"))?;
    eprintln!(
        "payd: outbound TLS trusts {} system root certificates ({} unusable skipped) and {} from tls.extra_ca_file",
        counts.system, counts.system_unusable, counts.extra
    );
    if counts.system + counts.extra == 0 {
        eprintln!(
            "payd: warning: no root certificate at all: every https:// call will fail verification"
        );
    }
    Ok((server_tls, client_tls))
}

/// SIGHUP: reads the listener's certificate and key again. New connections get the new
/// ones; open connections keep theirs. On an error the old ones stay, and it is logged.
/// SIGHUP: every core reopens its access log (after a rotation), and the listener's TLS
/// certificate and key are read again when there are some.
fn reload(server_tls: Option<&ServerTls>) {
    eprintln!("payd: SIGHUP: reopening the access logs");
    lifecycle::request_log_reopen();
    if server_tls.is_some() {
        reload_tls(server_tls);
    }
}

pub fn reload_tls(server_tls: Option<&ServerTls>) {
    match server_tls.map(ServerTls::reload) {
        None => eprintln!("payd: SIGHUP: no [server.tls] to reload"),
        Some(Ok(())) => eprintln!("payd: SIGHUP: TLS certificate and key reloaded"),
        Some(Err(error)) => {
            eprintln!("payd: SIGHUP: TLS not reloaded, the old certificate stays: {error}")
        }
    }
}

/// A write past the file size limit (`ulimit -f`) then fails with EFBIG, which fails
/// that shard's log (it stops acknowledging and `/readyz` names it), instead of SIGXFSZ
/// killing the whole process, as PostgreSQL does too.
fn ignore_file_size_signal() {
    // SAFETY: signal(2) with SIG_IGN only sets this signal's disposition.
    unsafe {
        libc::signal(libc::SIGXFSZ, libc::SIG_IGN);
    }
}

/// Reports a core's exit to the main thread, even when the core panicked.
struct ExitReport {
    index: usize,
    sender: mpsc::Sender<usize>,
}

impl Drop for ExitReport {
    fn drop(&mut self) {
        let _ = self.sender.send(self.index);
    }
}

fn wait_for_shutdown(
    config: &Config,
    signals: &libc::sigset_t,
    exited: &mpsc::Receiver<usize>,
    cores: usize,
    server_tls: Option<&ServerTls>,
) -> Result<(), String> {
    loop {
        match wait_signal(signals, Duration::from_millis(100)) {
            Some(Signal::Stop(signal)) => {
                eprintln!("payd: {signal}: stopping; draining in-flight requests");
                break;
            }
            Some(Signal::Reload) => reload(server_tls),
            None => {}
        }
        if let Ok(index) = exited.try_recv() {
            lifecycle::begin_stopping();
            return Err(format!("core {index} stopped unexpectedly"));
        }
    }
    lifecycle::begin_stopping();
    // Cores drain within shutdown_timeout_ms; allow a little more for their last writes.
    let deadline = Instant::now() + Duration::from_millis(config.server.shutdown_timeout_ms + 1000);
    let mut remaining = cores;
    while remaining > 0 {
        match wait_signal(signals, Duration::ZERO) {
            Some(Signal::Reload) => reload(server_tls),
            Some(Signal::Stop(_)) => {
                eprintln!("payd: second signal: exiting at once");
                return Ok(());
            }
            None => {}
        }
        let now = Instant::now();
        if now >= deadline {
            eprintln!("payd: {remaining} cores did not drain in time; exiting");
            return Ok(());
        }
        match exited.recv_timeout((deadline - now).min(Duration::from_millis(50))) {
            Ok(_) => remaining -= 1,
            Err(mpsc::RecvTimeoutError::Timeout) => {}
            Err(mpsc::RecvTimeoutError::Disconnected) => break,
        }
    }
    eprintln!("payd: stopped");
    Ok(())
}

/// Refuses a listen address another process already serves. Every core binds with
/// `SO_REUSEPORT`, which would otherwise share the port silently with another payd (the
/// kernel then splits connections between two servers). A plain bind, without it,
/// fails while anyone listens there. Port 0 asks for a fresh port: nothing to check.
fn refuse_if_in_use(listen: SocketAddr) -> Result<(), String> {
    if listen.port() == 0 {
        return Ok(());
    }
    match std::net::TcpListener::bind(listen) {
        Err(error) if error.kind() == std::io::ErrorKind::AddrInUse => Err(format!(
            "cannot listen on {listen}: the address is in use by another process"
        )),
        // Any other problem shows again, with its cause, when the cores bind.
        Ok(_) | Err(_) => Ok(()),
    }
}

/// What a signal asks of the main thread.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Signal {
    /// SIGTERM or SIGINT: shut down.
    Stop(&'static str),
    /// SIGHUP: reload the TLS certificate and reopen the access logs (after a
    /// rotation); never a reason to stop.
    Reload,
}

/// Blocks SIGTERM, SIGINT and SIGHUP in this thread before any executor thread exists,
/// so every thread inherits the mask and only `wait_signal` ever sees them.
fn block_shutdown_signals() -> libc::sigset_t {
    // SAFETY: the set is initialised by sigemptyset before use; pthread_sigmask only
    // changes this thread's mask.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        libc::sigaddset(&mut set, libc::SIGTERM);
        libc::sigaddset(&mut set, libc::SIGINT);
        libc::sigaddset(&mut set, libc::SIGHUP);
        libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut());
        set
    }
}

fn wait_signal(set: &libc::sigset_t, timeout: Duration) -> Option<Signal> {
    let timeout = libc::timespec {
        tv_sec: timeout.as_secs() as libc::time_t,
        tv_nsec: libc::c_long::from(timeout.subsec_nanos() as i32),
    };
    // SAFETY: `set` is a valid signal set and `timeout` a valid timespec.
    let signal = unsafe { libc::sigtimedwait(set, std::ptr::null_mut(), &timeout) };
    match signal {
        libc::SIGTERM => Some(Signal::Stop("SIGTERM")),
        libc::SIGINT => Some(Signal::Stop("SIGINT")),
        libc::SIGHUP => Some(Signal::Reload),
        _ => None,
    }
}

/// glommio registers each executor's I/O memory, which counts against the locked-memory
/// limit (8 MiB for an ordinary user here) for every executor at once.
pub fn io_memory_bytes(cores: usize) -> usize {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes into the struct it is given.
    let known = unsafe { libc::getrlimit(libc::RLIMIT_MEMLOCK, &mut limit) } == 0;
    let limit = (known && limit.rlim_cur != libc::RLIM_INFINITY).then_some(limit.rlim_cur);
    io_memory_bytes_within(limit, cores)
}

/// Half the locked-memory limit, shared by every core's rings, within sane bounds; the
/// other half is headroom for the rings themselves and anything else that locks memory.
fn io_memory_bytes_within(memlock_limit_bytes: Option<u64>, cores: usize) -> usize {
    let Some(limit) = memlock_limit_bytes else {
        return IO_MEMORY_BYTES_MAX;
    };
    let limit = usize::try_from(limit).unwrap_or(usize::MAX);
    let share = limit / (2 * IO_MEMORY_RINGS * cores.max(1));
    share.clamp(IO_MEMORY_BYTES_MIN, IO_MEMORY_BYTES_MAX)
}

fn random_u32() -> u32 {
    let mut bytes = [0u8; 4];
    // Without entropy the ids are still unique per core within this process.
    let _ = getrandom::getrandom(&mut bytes);
    u32::from_le_bytes(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn io_memory_fits_the_locked_memory_limit_on_every_core() {
        for cores in [1, 2, 4, 8, 16] {
            let limit = 8 << 20;
            let each = io_memory_bytes_within(Some(limit), cores);
            assert!(
                IO_MEMORY_RINGS * cores * each <= limit as usize / 2,
                "{cores} cores: {each}"
            );
            assert!(each >= IO_MEMORY_BYTES_MIN);
        }
        assert_eq!(io_memory_bytes_within(Some(8 << 20), 2), 699_050);
        assert_eq!(io_memory_bytes_within(None, 2), IO_MEMORY_BYTES_MAX);
        assert_eq!(
            io_memory_bytes_within(Some(1 << 40), 1),
            IO_MEMORY_BYTES_MAX
        );
    }
}
