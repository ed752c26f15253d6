//! The access log: one line per request, buffered per core and flushed by a background
//! task, so writing it never blocks a request. After SIGHUP the task reopens the file by
//! its name, so a log rotated by renaming continues in a new file.
//!
//! Line format (space separated):
//! `unix_ms core method route status latency_us request_id merchant transport`
//! The merchant is the `X-Payd-Merchant` header when it looks like a merchant id, `-`
//! otherwise; nothing else from the request (no body, no signature) is ever logged. The
//! transport is `http`, or `ws` for a request carried by a WebSocket message (whose
//! request id is the message's `id`).

use super::stop::StopNotice;
use crate::http::Method;
use crate::lifecycle;
use crate::metrics::{CoreMetrics, Route};
use glommio::io::{BufferedFile, OpenOptions};
use std::cell::RefCell;
use std::path::{Path, PathBuf};
use std::rc::Rc;
use std::time::Duration;

/// Lines wait at most this long in memory before they are written.
pub const ACCESS_LOG_FLUSH_INTERVAL_MS: u64 = 200;
/// Buffered bytes above which new lines are dropped (and counted) rather than queued.
pub const ACCESS_LOG_BUFFER_BYTES_MAX: usize = 4 << 20;

/// One line's worth of facts about a request.
pub struct AccessRecord<'a> {
    pub unix_ms: u64,
    pub method: Method,
    pub route: Route,
    pub status: u16,
    pub latency_us: u64,
    pub request_id: &'a [u8],
    pub merchant: Option<&'a [u8]>,
    pub transport: Transport,
}

/// How a request arrived.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Transport {
    Http,
    WebSocket,
}

impl Transport {
    pub fn label(self) -> &'static str {
        match self {
            Transport::Http => "http",
            Transport::WebSocket => "ws",
        }
    }
}

/// One core's access log. Disabled logs accept lines and do nothing.
pub struct AccessLog {
    cpu: usize,
    buffer: RefCell<Vec<u8>>,
    enabled: bool,
    metrics: Rc<RefCell<CoreMetrics>>,
    closing: StopNotice,
    flush_task: RefCell<Option<glommio::task::JoinHandle<()>>>,
}

impl AccessLog {
    pub fn disabled(cpu: usize, metrics: Rc<RefCell<CoreMetrics>>) -> Rc<AccessLog> {
        Rc::new(AccessLog {
            cpu,
            buffer: RefCell::new(Vec::new()),
            enabled: false,
            metrics,
            closing: StopNotice::new(),
            flush_task: RefCell::new(None),
        })
    }

    /// Opens `dir/access-core<cpu>.log` for appending and starts its flush task, which
    /// runs until `close`.
    pub async fn open(
        dir: &Path,
        cpu: usize,
        metrics: Rc<RefCell<CoreMetrics>>,
    ) -> std::io::Result<Rc<AccessLog>> {
        let path = dir.join(format!("access-core{cpu}.log"));
        let (file, offset) = open_for_append(&path).await?;
        let log = Rc::new(AccessLog {
            cpu,
            buffer: RefCell::new(Vec::with_capacity(64 * 1024)),
            enabled: true,
            metrics,
            closing: StopNotice::new(),
            flush_task: RefCell::new(None),
        });
        let writer = Writer {
            path,
            file,
            offset,
            reopens_seen: lifecycle::log_reopens(),
        };
        let task = glommio::spawn_local(flush_loop(Rc::clone(&log), writer)).detach();
        *log.flush_task.borrow_mut() = Some(task);
        Ok(log)
    }

    /// Writes every line still buffered and closes the file.
    pub async fn close(&self) {
        self.closing.trigger();
        let task = self.flush_task.borrow_mut().take();
        if let Some(task) = task {
            task.await;
        }
    }

    pub fn record(&self, record: &AccessRecord<'_>) {
        if !self.enabled {
            return;
        }
        let mut buffer = self.buffer.borrow_mut();
        if buffer.len() >= ACCESS_LOG_BUFFER_BYTES_MAX {
            self.metrics.borrow_mut().access_log_lines_dropped += 1;
            return;
        }
        let method = record.method.as_str();
        // itoa rather than format!: this runs for every request.
        let mut number = itoa::Buffer::new();
        buffer.extend_from_slice(number.format(record.unix_ms).as_bytes());
        buffer.push(b' ');
        buffer.extend_from_slice(number.format(self.cpu).as_bytes());
        buffer.push(b' ');
        buffer.extend_from_slice(method.as_bytes());
        buffer.push(b' ');
        buffer.extend_from_slice(record.route.label().as_bytes());
        buffer.push(b' ');
        buffer.extend_from_slice(number.format(record.status).as_bytes());
        buffer.push(b' ');
        buffer.extend_from_slice(number.format(record.latency_us).as_bytes());
        buffer.push(b' ');
        buffer.extend_from_slice(record.request_id);
        buffer.push(b' ');
        match record
            .merchant
            .filter(|merchant| is_loggable_merchant(merchant))
        {
            Some(merchant) => buffer.extend_from_slice(merchant),
            None => buffer.push(b'-'),
        }
        buffer.push(b' ');
        buffer.extend_from_slice(record.transport.label().as_bytes());
        buffer.push(b'\n');
    }
}

/// Only a value shaped like a merchant id is logged: a header could carry anything.
fn is_loggable_merchant(value: &[u8]) -> bool {
    !value.is_empty()
        && value.len() <= 64
        && value
            .iter()
            .all(|b| b.is_ascii_alphanumeric() || *b == b'_' || *b == b'-')
}

/// The open log file and where the next line goes.
struct Writer {
    path: PathBuf,
    file: BufferedFile,
    offset: u64,
    /// `lifecycle::log_reopens` when the file was opened.
    reopens_seen: u64,
}

async fn open_for_append(path: &Path) -> std::io::Result<(BufferedFile, u64)> {
    let file = OpenOptions::new()
        .create(true)
        .write(true)
        .buffered_open(path)
        .await
        .map_err(std::io::Error::from)?;
    let offset = file.file_size().await.map_err(std::io::Error::from)?;
    Ok((file, offset))
}

async fn flush_loop(log: Rc<AccessLog>, mut writer: Writer) {
    let interval = Duration::from_millis(ACCESS_LOG_FLUSH_INTERVAL_MS);
    loop {
        let stopping = futures_lite::future::or(
            async {
                glommio::timer::sleep(interval).await;
                false
            },
            async {
                log.closing.wait().await;
                true
            },
        )
        .await;
        writer.offset = flush(&log, &writer.file, writer.offset).await;
        if stopping {
            break;
        }
        if lifecycle::log_reopens() != writer.reopens_seen {
            writer = reopen(&log, writer).await;
        }
    }
    let _ = writer.file.close().await;
}

/// Closes the file and opens its name again (SIGHUP after a rotation). If the name
/// cannot be opened, the old file stays in use and the next SIGHUP tries again.
async fn reopen(log: &AccessLog, writer: Writer) -> Writer {
    let reopens_seen = lifecycle::log_reopens();
    match open_for_append(&writer.path).await {
        Ok((file, offset)) => {
            let _ = writer.file.close().await;
            Writer {
                path: writer.path,
                file,
                offset,
                reopens_seen,
            }
        }
        Err(error) => {
            eprintln!(
                "payd: core {}: cannot reopen the access log {}: {error}",
                log.cpu,
                writer.path.display()
            );
            Writer {
                reopens_seen,
                ..writer
            }
        }
    }
}

/// Writes what is buffered; swaps the buffer out so requests keep appending meanwhile.
async fn flush(log: &AccessLog, file: &BufferedFile, offset: u64) -> u64 {
    let pending = {
        let mut buffer = log.buffer.borrow_mut();
        if buffer.is_empty() {
            return offset;
        }
        std::mem::replace(&mut *buffer, Vec::with_capacity(64 * 1024))
    };
    // A log truncated under us (logrotate's copytruncate) is written from its new end,
    // not at the old offset, which would leave a hole of zeros in front.
    let offset = match file.file_size().await {
        Ok(size) => offset.min(size),
        Err(_) => offset,
    };
    match file.write_at(pending, offset).await {
        Ok(written) => offset + written as u64,
        Err(error) => {
            // A log that cannot be written must not take requests down with it.
            eprintln!("payd: core {}: access log write failed: {error}", log.cpu);
            offset
        }
    }
}
