//! One core: its listener, its accept loop, its connections, and its share of shutdown.
//!
//! Everything here runs on the core's own pinned executor and is `!Send`: the core's
//! metrics, access log and connection count are plain cells, touched by no other thread.

use super::access_log::AccessLog;
use super::connection::{linger_close, Connection};
use super::stamps::Stamps;
use super::stop::StopNotice;
use super::{Started, REJECTED_LINGERING_MAX};
use crate::acquirer::Acquirer;
use crate::api;
use crate::api::error::{ApiError, ErrorKind};
use crate::auth::MerchantKeys;
use crate::config::Config;
use crate::http::{ConnectionHeader, Response};
use crate::metrics::{CoreMetrics, Route};
use crate::shard::mesh::{Mesh, Peers};
use crate::shard::recovery::rebuild;
use crate::shard::retention;
use crate::shard::runtime::{Shard, ShardEdges};
use crate::shard::store::Store;
use crate::shard::webhooks::{self, Dispatcher, Endpoints};
use crate::tls::{ClientTls, CoreAcceptor, ServerTls, Stream, TlsConnector};
use crate::wal::{DataDir, ShardLog};
use futures_lite::AsyncWriteExt;
use glommio::net::{TcpListener, TcpStream};
use std::cell::{Cell, RefCell};
use std::net::SocketAddr;
use std::rc::Rc;
use std::time::{Duration, Instant};

/// A core's shared state, one `Rc` per core, cloned into every connection task.
pub struct Core {
    pub index: usize,
    pub api: api::Context,
    pub access_log: Rc<AccessLog>,
    pub stop: StopNotice,
    pub stamps: Stamps,
    /// Connections refused at the limit that are still being closed gracefully.
    rejected_lingering: Cell<usize>,
    /// With `[server.tls]`: every accepted connection is a TLS handshake first.
    tls: Option<CoreAcceptor>,
}

/// What the start-up thread hands each core.
pub struct CoreStart {
    pub config: &'static Config,
    pub keys: &'static MerchantKeys,
    pub data_dir: &'static DataDir,
    pub index: usize,
    pub cpu: usize,
    pub listen: SocketAddr,
    pub mesh: Option<Mesh>,
    pub process_id: u32,
    pub started: std::sync::mpsc::Sender<Started>,
    /// The listener's TLS, when `[server.tls]` is set.
    pub server_tls: Option<&'static ServerTls>,
    /// The roots of outbound `https://` calls.
    pub client_tls: ClientTls,
}

/// Runs one core until shutdown has drained it.
pub async fn run(start: CoreStart) {
    let CoreStart {
        config,
        keys,
        data_dir,
        index,
        cpu,
        listen,
        mesh,
        process_id,
        started,
        server_tls,
        client_tls,
    } = start;
    let listener = match TcpListener::bind(listen) {
        Ok(listener) => listener,
        Err(error) => {
            let _ = started.send(Started::Failed(format!(
                "core {index} (cpu {cpu}): cannot listen on {listen}: {error}"
            )));
            return;
        }
    };
    let address = listener
        .local_addr()
        .expect("a bound listener has an address");
    let stop = StopNotice::new();
    stop.watch_process();
    let metrics = Rc::new(RefCell::new(CoreMetrics::new(cpu)));
    let access_log = match open_access_log(config, cpu, &metrics).await {
        Ok(log) => log,
        Err(message) => {
            let _ = started.send(Started::Failed(message));
            return;
        }
    };
    eprintln!("payd: core {index} on cpu {cpu} listening on {address}");
    let _ = started.send(Started::Listening(address));
    // Joining waits for every core: the mesh is complete only once all have started.
    let peers = Peers::join(mesh, index, Rc::clone(&metrics)).await;
    glommio::spawn_local(Rc::clone(&peers).rotate_metrics()).detach();
    let core = Rc::new(Core {
        index,
        api: api::Context {
            config,
            keys,
            shard_count: data_dir.shard_count(),
            metrics,
            peers: Rc::clone(&peers),
        },
        access_log,
        stop,
        stamps: Stamps::new(process_id, cpu),
        rejected_lingering: Cell::new(0),
        tls: server_tls.map(ServerTls::core_acceptor),
    });
    let accepting = glommio::spawn_local(accept_loop(Rc::clone(&core), listener));
    // One connector per core: its TLS session cache serves every client of this core.
    let connector = client_tls.core_connector();
    let acquirer = Rc::new(Acquirer::new(
        config,
        Rc::clone(&core.api.metrics),
        &connector,
    ));
    let edges = ShardEdges {
        acquirer,
        metrics: Rc::clone(&core.api.metrics),
    };
    let cores = peers.count();
    match open_shards(config, keys, data_dir, index, cores, edges, &connector).await {
        Ok(shards) => {
            peers.set_local_shards(shards);
            let _ = started.send(Started::Recovered);
        }
        Err(message) => {
            let _ = started.send(Started::Failed(message));
            core.stop.trigger();
        }
    }
    accepting.await;
    drain(&core).await;
}

/// Recovers this core's shards from their logs, indexed by shard id: shard `s` lives on
/// core `s % cores`. Log replay runs on glommio's blocking pool, so this core keeps
/// answering `/healthz` and `/readyz` (503) meanwhile.
async fn open_shards(
    config: &'static Config,
    keys: &'static MerchantKeys,
    data_dir: &'static DataDir,
    index: usize,
    cores: usize,
    edges: ShardEdges,
    connector: &TlsConnector,
) -> Result<Vec<Option<Rc<Shard>>>, String> {
    let endpoints = Rc::new(Endpoints::from_config(config, keys, connector)?);
    let mut shards: Vec<Option<Rc<Shard>>> = vec![None; usize::from(data_dir.shard_count())];
    for id in (0..data_dir.shard_count()).filter(|&id| usize::from(id) % cores == index) {
        let dir = data_dir.shard_dir(id);
        std::fs::create_dir_all(&dir)
            .map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
        let replay_dir = dir.clone();
        let rebuilt = glommio::executor()
            .spawn_blocking(move || rebuild(id, &replay_dir, keys))
            .await
            .map_err(|e| format!("shard {id}: recovery failed: {e}"))?;
        let log = ShardLog::open(
            &dir,
            config.storage.durability,
            rebuilt.recovery.next_sequence,
            config.storage.segment_bytes,
        )
        .await
        .map_err(|e| format!("shard {id}: {e}"))?;
        let payments = rebuilt.state.len();
        let log_end = log.next_sequence();
        let store = Store::new(log);
        let dispatcher = Dispatcher::new(
            config,
            keys,
            dir.clone(),
            Rc::clone(&endpoints),
            Rc::clone(&edges.metrics),
        );
        let owed = dispatcher.resume(rebuilt.webhooks_owed, rebuilt.dead_letters, log_end);
        let shard = Rc::new(Shard::new(
            id,
            config,
            keys,
            rebuilt.state,
            store,
            dispatcher,
            edges.clone(),
        ));
        webhooks::spawn(&shard);
        let pending = shard.resume_pending();
        retention::spawn(&shard, dir, rebuilt.append_marks, Rc::clone(&edges.metrics));
        eprintln!(
            "payd: shard {id} on core {index}: {payments} payments recovered, {pending} pending resumed, {owed} webhook events owed{}",
            match rebuilt.orphaned {
                0 => String::new(),
                orphaned => format!(", {orphaned} of merchants no longer configured left on disk"),
            }
        );
        shards[usize::from(id)] = Some(shard);
    }
    Ok(shards)
}

async fn open_access_log(
    config: &'static Config,
    cpu: usize,
    metrics: &Rc<RefCell<CoreMetrics>>,
) -> Result<Rc<AccessLog>, String> {
    if !config.log.access_log {
        return Ok(AccessLog::disabled(cpu, Rc::clone(metrics)));
    }
    let dir = config.log_dir();
    std::fs::create_dir_all(&dir)
        .map_err(|e| format!("cannot create log directory {}: {e}", dir.display()))?;
    AccessLog::open(&dir, cpu, Rc::clone(metrics))
        .await
        .map_err(|e| format!("cannot open the access log in {}: {e}", dir.display()))
}

async fn accept_loop(core: Rc<Core>, listener: TcpListener) {
    loop {
        let stopped = async {
            core.stop.wait().await;
            None
        };
        let accepted =
            futures_lite::future::or(async { Some(listener.accept().await) }, stopped).await;
        match accepted {
            None => break,
            Some(Ok(stream)) => admit(&core, stream),
            Some(Err(error)) => {
                // Out of file descriptors or a transient accept error: back off briefly
                // rather than spin, and keep serving the connections we have.
                eprintln!("payd: core {}: accept failed: {error}", core.index);
                glommio::timer::sleep(Duration::from_millis(10)).await;
            }
        }
    }
    // Dropping the listener closes it: the kernel sends new connections to the cores
    // still listening, or refuses them once none is.
    drop(listener);
}

fn admit(core: &Rc<Core>, stream: TcpStream) {
    let limit = core.api.config.server.max_connections_per_core;
    let mut metrics = core.api.metrics.borrow_mut();
    metrics.connections_accepted += 1;
    if metrics.connections_open >= limit as u64 {
        metrics.connections_rejected += 1;
        drop(metrics);
        reject(core, stream);
        return;
    }
    metrics.connections_open += 1;
    drop(metrics);
    let core = Rc::clone(core);
    glommio::spawn_local(async move {
        let stream = match &core.tls {
            None => Some(Stream::Plain(stream)),
            Some(tls) => handshake(&core, tls, stream).await,
        };
        if let Some(stream) = stream {
            Connection::new(Rc::clone(&core), stream).run().await;
        }
        core.api.metrics.borrow_mut().connections_open -= 1;
    })
    .detach();
}

/// The server side of a TLS handshake, on the core that accepted the connection and
/// within `limits.request_timeout_ms` (a client that stalls it is a slow client like
/// any other). `None`, counted, when it fails: the connection is then simply closed.
/// Shutdown ends a handshake still running, as it ends an idle connection.
async fn handshake(core: &Core, tls: &CoreAcceptor, stream: TcpStream) -> Option<Stream> {
    let timeout = Duration::from_millis(core.api.config.limits.request_timeout_ms);
    let _ = stream.set_nodelay(true);
    let accepting = tls.acceptor().accept(stream);
    let bounded = async {
        let accepted = glommio::timer::timeout(timeout, async { Ok(accepting.await) }).await;
        accepted.ok().and_then(Result::ok)
    };
    let stopped = async {
        core.stop.wait().await;
        None
    };
    let accepted = futures_lite::future::or(bounded, stopped).await;
    let mut metrics = core.api.metrics.borrow_mut();
    match accepted {
        Some(stream) => {
            metrics.tls_handshakes += 1;
            Some(Stream::Tls(Box::new(stream.into())))
        }
        None => {
            metrics.tls_handshake_failures += 1;
            None
        }
    }
}

/// Answers 503 `overloaded` to a connection over the limit, then closes it. These closes
/// are bounded too: past `REJECTED_LINGERING_MAX` the connection is simply dropped. A TLS
/// listener drops it at once: a plain-text answer would mean nothing to a TLS client,
/// and a handshake is work an overloaded core should not take on.
fn reject(core: &Rc<Core>, stream: TcpStream) {
    if core.rejected_lingering.get() >= REJECTED_LINGERING_MAX || core.tls.is_some() {
        return;
    }
    core.rejected_lingering
        .set(core.rejected_lingering.get() + 1);
    let mut response = Response::new();
    api::write_error(&mut response, &ApiError::new(ErrorKind::Overloaded));
    let mut output = Vec::with_capacity(256);
    let mut request_id = [0u8; 64];
    let request_id = core.stamps.generate_request_id(&mut request_id);
    response.write_to(
        &mut output,
        request_id,
        &core.stamps.clock().date,
        ConnectionHeader::Close,
        false,
    );
    core.api
        .metrics
        .borrow_mut()
        .record_request(Route::Unrouted, response.status, 0);
    let core = Rc::clone(core);
    glommio::spawn_local(async move {
        let mut stream = stream;
        let _ = stream.set_write_timeout(Some(Duration::from_millis(super::LINGER_MS)));
        if stream.write_all(&output).await.is_ok() {
            linger_close(stream).await;
        }
        core.rejected_lingering
            .set(core.rejected_lingering.get() - 1);
    })
    .detach();
}

/// Waits for open connections to finish their in-flight requests, at most
/// `server.shutdown_timeout_ms`, then commits, syncs and closes the local shards' logs.
async fn drain(core: &Rc<Core>) {
    let deadline =
        Instant::now() + Duration::from_millis(core.api.config.server.shutdown_timeout_ms);
    while core.api.metrics.borrow().connections_open > 0 && Instant::now() < deadline {
        glommio::timer::sleep(Duration::from_millis(10)).await;
    }
    let left = core.api.metrics.borrow().connections_open;
    if left > 0 {
        eprintln!(
            "payd: core {}: {left} connections still open at the shutdown deadline",
            core.index
        );
    }
    for shard in core.api.peers.local_shards() {
        shard.shut_log().await;
    }
    core.access_log.close().await;
}
