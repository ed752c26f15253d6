//! The segment writer: the open segment file and every byte of I/O the commit task does.
//!
//! Direct I/O (`O_DIRECT`, through glommio's `DmaFile`) writes whole 4 KiB blocks from
//! aligned buffers, so each write starts at the block the records end in: the writer keeps
//! that partial block's bytes, rewrites them in front of the new records, and pads the
//! write with zeros to the next block. The zeros are overwritten by the next write, and
//! recovery reads a zeroed tail as the end of the log. Where the filesystem refuses
//! `O_DIRECT` (tmpfs does), the writer falls back to buffered writes and fdatasync.
//!
//! Direct segments are filled with synced zeros before the frames reach them
//! (preallocation), so a batch's write never extends the file and its fdatasync is a
//! cache flush: no inode write, no journal commit per sync. The next segment is prepared
//! whole in the background (`SPARE_FILE_NAME`, renamed into place at the roll-over), so a
//! segment never grows while it fills: growing the file being synced would make every
//! fdatasync of it commit the filesystem's journal until the new size is on disk. Only the
//! segment opened at start grows in steps, until the first spare is ready and takes over. (Measured on ext4: that halved the sync latency and doubled the
//! fsync create throughput. `O_DSYNC` writes instead of write + fdatasync measured
//! slower there, so each batch stays a write and then a sync.)

use crate::wal::disk::Disk;
use crate::wal::frame::{frame_header, FRAME_HEADER_BYTES};
use crate::wal::segment::segment_file_name;
use glommio::io::{BufferedFile, Directory, DmaBuffer, DmaFile, OpenOptions};
use glommio::GlommioError;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::sync::Once;
use std::time::Instant;

/// Direct writes are aligned to this: a multiple of every logical block size in use.
pub const WRITE_ALIGNMENT_BYTES: u64 = 4096;
/// Direct segments grow by this many bytes of zeros, synced, ahead of the records. A
/// batch then overwrites blocks that are allocated and inside the file's size: its
/// fdatasync has no inode to write (only the device cache to flush), and io_uring can
/// issue the write at once instead of handing it to a kernel worker, as it must for a
/// write that extends the file. One extra write and sync per this many bytes of log.
pub const PREALLOCATION_BYTES: u64 = 1 << 20;
/// The file a whole segment is prepared in, ahead of its turn. Not a segment name: a
/// listing of the log never sees it, and a start removes one left behind.
pub const SPARE_FILE_NAME: &str = "next-segment.tmp";
/// The simulated disk grows segments in smaller steps: its files live in memory.
#[cfg(test)]
const SIMULATED_PREALLOCATION_BYTES: u64 = 16 << 10;
/// Records gathered into one write. An append that would overflow a full batch waits
/// until the commit task takes it: a bounded buffer, not an error.
pub const BATCH_BYTES_MAX: usize = crate::wal::frame::FRAME_ENTRIES_BYTES_MAX;
/// At most this many fdatasyncs per commit: one before a roll-over and a last one.
const SYNCS_PER_COMMIT_MAX: usize = 2;

/// How segment files are written.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum IoMode {
    /// `O_DIRECT` writes of aligned blocks, then fdatasync.
    Direct,
    /// Page-cache writes, then fdatasync.
    Buffered,
}

/// The next segment, prepared ahead.
enum Spare {
    Preparing(glommio::Task<Result<SegmentFile, String>>),
    /// The preparation ended: the file, or why there is none.
    Finished(Result<SegmentFile, String>),
}

/// One commit's records, ready to be framed: entries encoded by `frame::encode_entry`.
#[derive(Clone, Copy, Debug)]
pub(crate) struct FrameToWrite<'a> {
    pub entries: &'a [u8],
    pub first_sequence: u64,
    pub entry_count: u32,
}

impl FrameToWrite<'_> {
    fn bytes(&self) -> u64 {
        (FRAME_HEADER_BYTES + self.entries.len()) as u64
    }

    fn last_sequence(&self) -> u64 {
        self.first_sequence + u64::from(self.entry_count) - 1
    }
}

/// An open segment file, on whichever disk the log lives.
enum SegmentFile {
    Direct(DmaFile),
    Buffered(BufferedFile),
    #[cfg(test)]
    Simulated(SimulatedFile),
}

/// A file of the simulated disk, valid until its next power cut.
#[cfg(test)]
struct SimulatedFile {
    disk: std::rc::Rc<crate::wal::disk::SimDisk>,
    path: PathBuf,
    epoch: u64,
}

/// A buffer for one aligned write.
enum WriteBuffer {
    Dma(DmaBuffer),
    #[cfg(test)]
    Plain(Vec<u8>),
}

impl WriteBuffer {
    fn as_bytes_mut(&mut self) -> &mut [u8] {
        match self {
            WriteBuffer::Dma(buffer) => buffer.as_bytes_mut(),
            #[cfg(test)]
            WriteBuffer::Plain(buffer) => buffer,
        }
    }
}

/// The shard directory, for the syncs that make file creations durable.
enum LogDirectory {
    Os(Directory),
    #[cfg(test)]
    Simulated(std::rc::Rc<crate::wal::disk::SimDisk>),
}

impl SegmentFile {
    fn alloc(&self, bytes: usize) -> WriteBuffer {
        match self {
            SegmentFile::Direct(file) => WriteBuffer::Dma(file.alloc_dma_buffer(bytes)),
            SegmentFile::Buffered(_) => unreachable!("buffered files take no aligned buffers"),
            #[cfg(test)]
            SegmentFile::Simulated(_) => WriteBuffer::Plain(vec![0; bytes]),
        }
    }

    /// Writes a whole aligned buffer at `offset`.
    async fn write_aligned(&self, buffer: WriteBuffer, offset: u64) -> Result<(), String> {
        let bytes = match &buffer {
            WriteBuffer::Dma(buffer) => buffer.len(),
            #[cfg(test)]
            WriteBuffer::Plain(buffer) => buffer.len(),
        };
        let written = match (self, buffer) {
            (SegmentFile::Direct(file), WriteBuffer::Dma(buffer)) => file
                .write_at(buffer, offset)
                .await
                .map_err(|e| e.to_string())?,
            #[cfg(test)]
            (SegmentFile::Simulated(file), WriteBuffer::Plain(buffer)) => {
                file.disk.pause().await;
                file.disk
                    .check_epoch(file.epoch)
                    .and_then(|()| file.disk.write_at(&file.path, offset, &buffer))
                    .map_err(|e| e.to_string())?;
                buffer.len()
            }
            _ => unreachable!("a buffer from another kind of file"),
        };
        if written != bytes {
            return Err(format!("short write of {written} bytes out of {bytes}"));
        }
        Ok(())
    }

    async fn fdatasync(&self) -> Result<(), String> {
        match self {
            SegmentFile::Direct(file) => file.fdatasync().await.map_err(|e| e.to_string()),
            SegmentFile::Buffered(file) => file.fdatasync().await.map_err(|e| e.to_string()),
            #[cfg(test)]
            SegmentFile::Simulated(file) => {
                file.disk.pause().await;
                file.disk
                    .check_epoch(file.epoch)
                    .and_then(|()| file.disk.sync_file(&file.path))
                    .map_err(|e| e.to_string())
            }
        }
    }

    async fn truncate(&self, length: u64) -> Result<(), String> {
        match self {
            SegmentFile::Direct(file) => file.truncate(length).await.map_err(|e| e.to_string()),
            SegmentFile::Buffered(_) => unreachable!("only direct segments are preallocated"),
            #[cfg(test)]
            SegmentFile::Simulated(file) => file
                .disk
                .check_epoch(file.epoch)
                .and_then(|()| file.disk.truncate(&file.path, length))
                .map_err(|e| e.to_string()),
        }
    }

    /// Renames the file; the caller syncs the directory.
    async fn rename(&mut self, to: &Path) -> Result<(), String> {
        match self {
            SegmentFile::Direct(file) => file.rename(to).await.map_err(|e| e.to_string()),
            SegmentFile::Buffered(_) => unreachable!("only direct segments are prepared"),
            #[cfg(test)]
            SegmentFile::Simulated(file) => {
                file.disk.pause().await;
                let renamed = file
                    .disk
                    .check_epoch(file.epoch)
                    .and_then(|()| file.disk.rename(&file.path, to));
                if renamed.is_ok() {
                    file.path = to.to_path_buf();
                }
                renamed.map_err(|e| e.to_string())
            }
        }
        .map_err(|e| {
            format!(
                "cannot rename the prepared segment to {}: {e}",
                to.display()
            )
        })
    }

    async fn close(self, path: &Path) -> Result<(), String> {
        match self {
            SegmentFile::Direct(file) => file.close().await,
            SegmentFile::Buffered(file) => file.close().await,
            #[cfg(test)]
            SegmentFile::Simulated(_) => Ok(()),
        }
        .map_err(|e| format!("cannot close {}: {e}", path.display()))
    }
}

impl LogDirectory {
    async fn sync(&self, path: &Path) -> Result<(), String> {
        match self {
            LogDirectory::Os(directory) => directory.sync().await.map_err(|e| e.to_string()),
            #[cfg(test)]
            LogDirectory::Simulated(disk) => {
                disk.pause().await;
                disk.sync_dir(path).map_err(|e| e.to_string())
            }
        }
        .map_err(|e| format!("fsync of directory {} failed: {e}", path.display()))
    }

    async fn close(self, path: &Path) -> Result<(), String> {
        match self {
            LogDirectory::Os(directory) => directory
                .close()
                .await
                .map_err(|e| format!("cannot close directory {}: {e}", path.display())),
            #[cfg(test)]
            LogDirectory::Simulated(_) => Ok(()),
        }
    }
}

/// The segment being appended to.
struct OpenSegment {
    file: SegmentFile,
    path: PathBuf,
    /// Bytes of frames in the file; with direct I/O the file may be longer (padding).
    records_end: u64,
    /// Aligned writes only: the bytes of the last, partial block, rewritten by the next
    /// write.
    tail_block: Vec<u8>,
    /// Aligned writes only: the file's synced size, zeros after the frames (preallocated).
    zeroed_end: u64,
    /// Prepared whole before it was opened: it never grows while it fills.
    prepared: bool,
}

pub(crate) struct SegmentWriter {
    shard_dir: PathBuf,
    disk: Disk,
    directory: LogDirectory,
    mode: IoMode,
    segment_bytes_max: u64,
    preallocation_bytes: u64,
    segment: OpenSegment,
    /// Every record up to this sequence was written.
    written_through: u64,
    /// Every record up to this sequence is durable: an fdatasync covered it. Each frame
    /// carries it, so recovery can tell a torn write from corruption.
    synced_through: u64,
    /// Buffered I/O only: a frame is assembled here before its write.
    frame_scratch: Vec<u8>,
    /// Aligned writes only: the next segment, prepared in the background.
    spare: Option<Spare>,
    /// Latencies of the fdatasyncs of the current commit, drained by the commit task.
    pub(crate) sync_latencies_us: Vec<u64>,
}

impl SegmentWriter {
    /// Opens the segment that starts at `first_sequence`: a new file, or an empty one left
    /// by a crash right after it was created. Never a file that holds records. Recovery
    /// made every record before `first_sequence` durable.
    pub(crate) async fn open(
        disk: &Disk,
        shard_dir: &Path,
        first_sequence: u64,
        segment_bytes_max: u64,
        buffered_requested: bool,
    ) -> Result<SegmentWriter, String> {
        let (directory, preferred, preallocation_bytes) = match disk {
            Disk::Os => {
                let directory = Directory::open(shard_dir)
                    .await
                    .map_err(|e| format!("cannot open directory {}: {e}", shard_dir.display()))?;
                let preferred = if buffered_requested || is_tmpfs(shard_dir) {
                    IoMode::Buffered
                } else {
                    IoMode::Direct
                };
                (LogDirectory::Os(directory), preferred, PREALLOCATION_BYTES)
            }
            #[cfg(test)]
            Disk::Simulated(sim) => (
                LogDirectory::Simulated(sim.clone()),
                IoMode::Direct,
                SIMULATED_PREALLOCATION_BYTES,
            ),
        };
        let segment = open_segment(disk, shard_dir, preferred, first_sequence).await?;
        let mode = match segment.file {
            SegmentFile::Buffered(_) => IoMode::Buffered,
            _ => IoMode::Direct,
        };
        if matches!(disk, Disk::Os) {
            log_mode_once(mode, shard_dir, buffered_requested);
        }
        directory.sync(shard_dir).await?;
        Ok(SegmentWriter {
            shard_dir: shard_dir.to_path_buf(),
            disk: disk.clone(),
            directory,
            mode,
            segment_bytes_max,
            preallocation_bytes,
            segment,
            written_through: first_sequence - 1,
            synced_through: first_sequence - 1,
            frame_scratch: Vec::new(),
            spare: None,
            sync_latencies_us: Vec::with_capacity(SYNCS_PER_COMMIT_MAX),
        })
    }

    /// Starts preparing the next segment in the background once the current one holds
    /// `spare_after_bytes` of frames, if segments are written with aligned writes and
    /// none is being prepared. A log that writes little never writes a spare.
    fn prepare_spare(&mut self) {
        let spare_after_bytes = PREALLOCATION_BYTES.min(self.segment_bytes_max / 2);
        if self.mode == IoMode::Buffered
            || self.spare.is_some()
            || self.segment.records_end < spare_after_bytes
        {
            return;
        }
        let disk = self.disk.clone();
        let path = self.shard_dir.join(SPARE_FILE_NAME);
        let bytes = align_up(self.segment_bytes_max);
        let step_bytes = self.preallocation_bytes;
        self.spare = Some(Spare::Preparing(glommio::spawn_local(async move {
            prepare_segment(&disk, &path, bytes, step_bytes).await
        })));
    }

    /// Whether the spare's preparation has ended (well or not), without waiting for it.
    async fn spare_finished(&mut self) -> bool {
        match &mut self.spare {
            None => false,
            Some(Spare::Finished(_)) => true,
            Some(Spare::Preparing(task)) => match futures_lite::future::poll_once(task).await {
                None => false,
                Some(outcome) => {
                    self.spare = Some(Spare::Finished(outcome));
                    true
                }
            },
        }
    }

    /// The prepared next segment, if its preparation has ended (well or not).
    async fn finished_spare(&mut self) -> Option<Result<SegmentFile, String>> {
        if !self.spare_finished().await {
            return None;
        }
        match self.spare.take() {
            Some(Spare::Finished(outcome)) => Some(outcome),
            _ => unreachable!("a finished spare"),
        }
    }

    pub(crate) fn mode(&self) -> IoMode {
        self.mode
    }

    /// The sequence every durable record is at or below.
    #[cfg(test)]
    pub(crate) fn synced_through(&self) -> u64 {
        self.synced_through
    }

    /// Writes one commit's records as one frame, in the current segment if it fits there
    /// and in a new one otherwise, and fdatasyncs when `sync` is set. A frame is never
    /// split: what one commit holds lives or dies together.
    pub(crate) async fn commit(
        &mut self,
        frame: FrameToWrite<'_>,
        sync: bool,
    ) -> Result<(), String> {
        self.sync_latencies_us.clear();
        assert!(frame.entry_count > 0);
        assert_eq!(frame.first_sequence, self.written_through + 1);
        // The log caps its batches so that one frame fits an empty segment.
        assert!(frame.bytes() <= self.segment_bytes_max);
        let full = self.segment.records_end + frame.bytes() > self.segment_bytes_max;
        // A segment that grows in steps gives way to a prepared one as soon as there is one.
        let spare_ready = !self.segment.prepared && self.spare_finished().await;
        if full || spare_ready {
            self.roll_over(frame.first_sequence).await?;
        }
        let header = frame_header(
            self.segment.records_end,
            frame.first_sequence,
            self.synced_through,
            frame.entry_count,
            frame.entries,
        );
        self.write(&header, frame.entries).await?;
        self.written_through = frame.last_sequence();
        self.prepare_spare();
        if sync {
            self.sync().await?;
        }
        Ok(())
    }

    /// Syncs what was written and not synced yet.
    #[cfg(test)]
    pub(crate) async fn commit_sync(&mut self) -> Result<(), String> {
        self.sync_latencies_us.clear();
        self.sync().await
    }

    /// Syncs what is unsynced and closes the files. A spare being prepared is dropped
    /// (its file is removed at the next start).
    pub(crate) async fn close(mut self) -> Result<(), String> {
        if let Some(Spare::Finished(Ok(spare))) = self.spare.take() {
            spare.close(&self.shard_dir.join(SPARE_FILE_NAME)).await?;
        }
        self.sync().await?;
        self.segment.file.close(&self.segment.path).await?;
        self.directory.close(&self.shard_dir).await
    }

    async fn write(&mut self, header: &[u8], entries: &[u8]) -> Result<(), String> {
        let segment = &mut self.segment;
        let outcome = if let SegmentFile::Buffered(file) = &segment.file {
            self.frame_scratch.clear();
            self.frame_scratch.extend_from_slice(header);
            self.frame_scratch.extend_from_slice(entries);
            write_buffered(file, segment.records_end, &self.frame_scratch).await
        } else {
            let end = align_up(segment.records_end + (header.len() + entries.len()) as u64);
            let limit = align_up(self.segment_bytes_max);
            let grown = preallocate(
                &segment.file,
                &mut segment.zeroed_end,
                end,
                limit,
                self.preallocation_bytes,
            )
            .await;
            match grown {
                Ok(()) => write_aligned(segment, header, entries).await,
                Err(error) => Err(error),
            }
        };
        outcome.map_err(|e| format!("write to {} failed: {e}", segment.path.display()))?;
        segment.records_end += (header.len() + entries.len()) as u64;
        Ok(())
    }

    async fn sync(&mut self) -> Result<(), String> {
        if self.synced_through == self.written_through {
            return Ok(());
        }
        let started = Instant::now();
        self.segment
            .file
            .fdatasync()
            .await
            .map_err(|e| format!("fdatasync of {} failed: {e}", self.segment.path.display()))?;
        self.synced_through = self.written_through;
        assert!(self.sync_latencies_us.len() < SYNCS_PER_COMMIT_MAX);
        self.sync_latencies_us
            .push(started.elapsed().as_micros() as u64);
        Ok(())
    }

    /// Syncs the closing segment (always: recovery trusts every segment but the last),
    /// then puts the next one in place (the prepared spare, renamed, or a new file that
    /// grows in steps) and syncs the directory so its name survives a crash.
    async fn roll_over(&mut self, next_first_sequence: u64) -> Result<(), String> {
        self.sync().await?;
        self.trim_preallocation().await?;
        let path = self.shard_dir.join(segment_file_name(next_first_sequence));
        let next = match self.finished_spare().await {
            Some(Ok(file)) => adopt_spare(file, &path, align_up(self.segment_bytes_max)).await?,
            Some(Err(error)) => {
                // The log itself is fine: its next segment grows in steps instead.
                eprintln!("payd: preparing the next log segment failed: {error}");
                open_segment(&self.disk, &self.shard_dir, self.mode, next_first_sequence).await?
            }
            None => {
                open_segment(&self.disk, &self.shard_dir, self.mode, next_first_sequence).await?
            }
        };
        self.directory.sync(&self.shard_dir).await?;
        let closed = std::mem::replace(&mut self.segment, next);
        // A closed segment with no frame was replaced by the spare under its own name.
        closed.file.close(&closed.path).await
    }

    /// A full segment keeps no preallocated zeros: it ends after the block its frames
    /// end in, as it would without preallocation, so listed sizes are the log's.
    async fn trim_preallocation(&mut self) -> Result<(), String> {
        let segment = &mut self.segment;
        if matches!(segment.file, SegmentFile::Buffered(_)) {
            return Ok(());
        }
        let end = align_up(segment.records_end);
        if segment.zeroed_end <= end {
            return Ok(());
        }
        let path = segment.path.display();
        segment
            .file
            .truncate(end)
            .await
            .map_err(|e| format!("cannot trim {path}: {e}"))?;
        segment
            .file
            .fdatasync()
            .await
            .map_err(|e| format!("fdatasync of {path} failed: {e}"))?;
        segment.zeroed_end = end;
        Ok(())
    }
}

/// Grows the file with synced zeros until it covers `end`, by `step_bytes` but never
/// past `limit` (the segment's padded size). Zeros past the frames read as the end of the
/// log at recovery.
async fn preallocate(
    file: &SegmentFile,
    zeroed_end: &mut u64,
    end: u64,
    limit: u64,
    step_bytes: u64,
) -> Result<(), String> {
    assert!(end <= limit);
    // Bounded: each pass grows the file by at least a block, up to `limit`.
    while *zeroed_end < end {
        let grow_to = (*zeroed_end + step_bytes).min(limit);
        let mut buffer = file.alloc((grow_to - *zeroed_end) as usize);
        buffer.as_bytes_mut().fill(0);
        file.write_aligned(buffer, *zeroed_end)
            .await
            .map_err(|e| format!("preallocation: {e}"))?;
        // The new size must be durable on its own, or the next sync writes the inode.
        file.fdatasync()
            .await
            .map_err(|e| format!("fdatasync of the preallocation: {e}"))?;
        *zeroed_end = grow_to;
    }
    Ok(())
}

async fn open_segment(
    disk: &Disk,
    shard_dir: &Path,
    preferred: IoMode,
    first_sequence: u64,
) -> Result<OpenSegment, String> {
    let path = shard_dir.join(segment_file_name(first_sequence));
    let file = match disk {
        Disk::Os => open_os_segment(&path, preferred).await?,
        #[cfg(test)]
        Disk::Simulated(sim) => {
            sim.pause().await;
            let empty = sim.length(&path).is_ok_and(|length| length == 0);
            if !sim.create(&path) && !empty {
                return Err(format!("segment {} already holds records", path.display()));
            }
            SegmentFile::Simulated(SimulatedFile {
                disk: sim.clone(),
                path: path.clone(),
                epoch: sim.epoch(),
            })
        }
    };
    Ok(OpenSegment {
        file,
        path,
        records_end: 0,
        tail_block: Vec::with_capacity(WRITE_ALIGNMENT_BYTES as usize),
        zeroed_end: 0,
        prepared: false,
    })
}

/// Prepares a whole segment at `path`: a new file of `bytes` zeros, written in steps and
/// synced once. A file left there by an earlier run is replaced.
async fn prepare_segment(
    disk: &Disk,
    path: &Path,
    bytes: u64,
    step_bytes: u64,
) -> Result<SegmentFile, String> {
    let file = match disk {
        Disk::Os => {
            let mut options = OpenOptions::new();
            options.write(true).create(true).truncate(true);
            let file = options
                .dma_open(path)
                .await
                .map_err(|e| format!("cannot create {}: {e}", path.display()))?;
            SegmentFile::Direct(file)
        }
        #[cfg(test)]
        Disk::Simulated(sim) => {
            sim.pause().await;
            let _ = sim.remove(path);
            sim.create(path);
            SegmentFile::Simulated(SimulatedFile {
                disk: sim.clone(),
                path: path.to_path_buf(),
                epoch: sim.epoch(),
            })
        }
    };
    let mut zeroed_end = 0;
    // Bounded: each pass writes at least a block, up to `bytes`.
    while zeroed_end < bytes {
        let grow_to = (zeroed_end + step_bytes).min(bytes);
        let mut buffer = file.alloc((grow_to - zeroed_end) as usize);
        buffer.as_bytes_mut().fill(0);
        file.write_aligned(buffer, zeroed_end)
            .await
            .map_err(|e| format!("preparing {}: {e}", path.display()))?;
        zeroed_end = grow_to;
    }
    file.fdatasync()
        .await
        .map_err(|e| format!("fdatasync of {} failed: {e}", path.display()))?;
    Ok(file)
}

/// Puts a prepared spare in place as the segment at `path` (replacing an empty file of
/// that name, if any). The caller syncs the directory.
async fn adopt_spare(
    mut file: SegmentFile,
    path: &Path,
    bytes: u64,
) -> Result<OpenSegment, String> {
    file.rename(path).await?;
    Ok(OpenSegment {
        file,
        path: path.to_path_buf(),
        records_end: 0,
        tail_block: Vec::with_capacity(WRITE_ALIGNMENT_BYTES as usize),
        zeroed_end: bytes,
        prepared: true,
    })
}

async fn open_os_segment(path: &Path, preferred: IoMode) -> Result<SegmentFile, String> {
    let reuse_empty = match std::fs::metadata(path) {
        Ok(metadata) if metadata.len() == 0 => true,
        Ok(_) => return Err(format!("segment {} already holds records", path.display())),
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => false,
        Err(error) => return Err(format!("cannot inspect {}: {error}", path.display())),
    };
    if preferred == IoMode::Buffered {
        return open_buffered(path, reuse_empty).await;
    }
    match options(reuse_empty).dma_open(path).await {
        Ok(file) => {
            assert_eq!(WRITE_ALIGNMENT_BYTES % file.alignment(), 0);
            Ok(SegmentFile::Direct(file))
        }
        // The filesystem refuses O_DIRECT; the open may have created the file.
        Err(error) if is_invalid_argument(&error) => open_buffered(path, true).await,
        Err(error) => Err(format!("cannot create {}: {error}", path.display())),
    }
}

async fn open_buffered(path: &Path, reuse_empty: bool) -> Result<SegmentFile, String> {
    options(reuse_empty)
        .buffered_open(path)
        .await
        .map(SegmentFile::Buffered)
        .map_err(|e| format!("cannot create {}: {e}", path.display()))
}

/// A new file must not exist yet; an empty one left behind is opened as it is.
fn options(reuse_empty: bool) -> OpenOptions {
    let mut options = OpenOptions::new();
    options.write(true);
    if reuse_empty {
        options.create(true);
    } else {
        options.create_new(true);
    }
    options
}

fn is_invalid_argument(error: &GlommioError<()>) -> bool {
    match error {
        GlommioError::IoError(source) | GlommioError::EnhancedIoError { source, .. } => {
            source.raw_os_error() == Some(libc::EINVAL)
        }
        _ => false,
    }
}

/// Writes a frame (its header, then its entries) at the segment's end, in whole aligned
/// blocks: the partial block the frames end in is written again in front of it, and the
/// last block is padded with zeros.
async fn write_aligned(
    segment: &mut OpenSegment,
    header: &[u8],
    entries: &[u8],
) -> Result<(), String> {
    let start = align_down(segment.records_end);
    let tail_block = &mut segment.tail_block;
    assert_eq!(tail_block.len() as u64, segment.records_end - start);
    let frame_end = tail_block.len() + header.len();
    let filled = frame_end + entries.len();
    let padded = align_up(filled as u64) as usize;
    let mut buffer = segment.file.alloc(padded);
    let bytes = buffer.as_bytes_mut();
    bytes[..tail_block.len()].copy_from_slice(tail_block);
    bytes[tail_block.len()..frame_end].copy_from_slice(header);
    bytes[frame_end..filled].copy_from_slice(entries);
    bytes[filled..].fill(0);
    let next_tail_start = align_down(filled as u64) as usize;
    tail_block.clear();
    tail_block.extend_from_slice(&bytes[next_tail_start..filled]);
    segment.file.write_aligned(buffer, start).await
}

async fn write_buffered(file: &BufferedFile, at: u64, frame: &[u8]) -> Result<(), String> {
    let written = file
        .write_at(frame.to_vec(), at)
        .await
        .map_err(|e| e.to_string())?;
    if written != frame.len() {
        return Err(format!(
            "short write of {written} bytes out of {}",
            frame.len()
        ));
    }
    Ok(())
}

fn align_down(offset: u64) -> u64 {
    offset & !(WRITE_ALIGNMENT_BYTES - 1)
}

fn align_up(offset: u64) -> u64 {
    align_down(offset + WRITE_ALIGNMENT_BYTES - 1)
}

/// tmpfs takes the `O_DIRECT` flag on Linux but pages stay in memory regardless; glommio
/// quietly runs such files buffered. Say so instead, and use plain buffered files.
pub(crate) fn is_tmpfs(path: &Path) -> bool {
    let Ok(c_path) = std::ffi::CString::new(path.as_os_str().as_bytes()) else {
        return false;
    };
    // SAFETY: statfs writes into the zeroed struct we own; the path is NUL-terminated.
    let mut stat: libc::statfs = unsafe { std::mem::zeroed() };
    let result = unsafe { libc::statfs(c_path.as_ptr(), &mut stat) };
    result == 0 && stat.f_type as u64 == libc::TMPFS_MAGIC as u64
}

/// Tells the operator once per process, per mode, how segments are written.
fn log_mode_once(mode: IoMode, shard_dir: &Path, buffered_requested: bool) {
    static DIRECT: Once = Once::new();
    static BUFFERED: Once = Once::new();
    match mode {
        IoMode::Direct => DIRECT.call_once(|| {
            eprintln!(
                "payd: write-ahead log uses direct I/O ({WRITE_ALIGNMENT_BYTES}-byte aligned O_DIRECT writes), first in {}",
                shard_dir.display()
            )
        }),
        IoMode::Buffered => BUFFERED.call_once(|| {
            let reason = if buffered_requested {
                "as requested"
            } else {
                "the filesystem does not support O_DIRECT"
            };
            eprintln!(
                "payd: write-ahead log uses buffered I/O with fdatasync ({reason}), first in {}",
                shard_dir.display()
            )
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wal::frame::encode_entry;

    #[test]
    fn alignment_helpers_round_to_blocks() {
        assert_eq!((align_down(0), align_up(0)), (0, 0));
        assert_eq!((align_down(1), align_up(1)), (0, 4096));
        assert_eq!((align_down(4096), align_up(4096)), (4096, 4096));
        assert_eq!((align_down(4097), align_up(4097)), (4096, 8192));
    }

    /// `count` entries of `payload_bytes` each, as one commit starting at `first`.
    fn entries(count: u32, payload_bytes: usize) -> Vec<u8> {
        let mut out = Vec::new();
        for index in 0..count {
            encode_entry(&mut out, 1, &vec![index as u8; payload_bytes]);
        }
        out
    }

    /// Yields until the spare's preparation has ended.
    async fn spare_prepared(writer: &mut SegmentWriter) {
        for _ in 0..10_000 {
            if writer.spare_finished().await {
                return;
            }
            glommio::timer::sleep(std::time::Duration::from_millis(1)).await;
        }
        panic!("the spare was never prepared");
    }

    #[test]
    fn the_start_segment_grows_then_gives_way_to_prepared_ones_trimmed_when_full() {
        let base = Path::new(env!("CARGO_MANIFEST_DIR")).join("target");
        std::fs::create_dir_all(&base).unwrap();
        let dir = tempfile::tempdir_in(&base).unwrap();
        let path = dir.path().to_path_buf();
        let segment_bytes_max = 3 * PREALLOCATION_BYTES / 2;
        let small = entries(3, 33);
        let large = entries(10, 60_000);
        crate::testing::run_here(async move {
            let mut writer = SegmentWriter::open(&Disk::Os, &path, 1, segment_bytes_max, false)
                .await
                .unwrap();
            if writer.mode() == IoMode::Buffered {
                return; // No O_DIRECT here: nothing is preallocated.
            }
            let frame = |entries, first_sequence, entry_count| FrameToWrite {
                entries,
                first_sequence,
                entry_count,
            };
            // The segment opened at start grows in steps.
            let size = |p: &Path| std::fs::metadata(p).unwrap().len();
            let first = path.join(segment_file_name(1));
            writer.commit(frame(&small, 1, 3), true).await.unwrap();
            assert_eq!(size(&first), PREALLOCATION_BYTES);
            writer.commit(frame(&large, 4, 10), true).await.unwrap();
            writer.commit(frame(&large, 14, 10), true).await.unwrap();
            assert_eq!(size(&first), align_up(segment_bytes_max));
            // Past half a segment the next one is prepared, whole; once it is, it takes
            // over at the next frame, and the segment it replaces is trimmed.
            spare_prepared(&mut writer).await;
            let spare = path.join(SPARE_FILE_NAME);
            assert_eq!(size(&spare), align_up(segment_bytes_max));
            writer.commit(frame(&small, 24, 3), true).await.unwrap();
            let start_frames = (3 * FRAME_HEADER_BYTES + small.len() + 2 * large.len()) as u64;
            assert_eq!(size(&first), align_up(start_frames));
            let second = path.join(segment_file_name(24));
            assert_eq!(size(&second), align_up(segment_bytes_max));
            assert_eq!(writer.synced_through(), 26);
            // A prepared segment never grows; the frame that does not fit rolls over.
            writer.commit(frame(&large, 27, 10), true).await.unwrap();
            writer.commit(frame(&large, 37, 10), true).await.unwrap();
            assert_eq!(size(&second), align_up(segment_bytes_max));
            spare_prepared(&mut writer).await;
            writer.commit(frame(&large, 47, 10), true).await.unwrap();
            let second_frames = (3 * FRAME_HEADER_BYTES + small.len() + 2 * large.len()) as u64;
            assert_eq!(size(&second), align_up(second_frames));
            assert_eq!(
                size(&path.join(segment_file_name(47))),
                align_up(segment_bytes_max)
            );
            writer.close().await.unwrap();
        });
        let mut sequences = Vec::new();
        crate::wal::recovery::recover(dir.path(), &mut |record| {
            sequences.push(record.sequence);
            Ok(())
        })
        .unwrap();
        if !sequences.is_empty() {
            assert_eq!(sequences, (1..=56).collect::<Vec<u64>>());
        }
    }

    #[test]
    fn tmpfs_is_recognised() {
        let shm = Path::new("/dev/shm");
        if shm.is_dir() {
            // /dev/shm is tmpfs on every Linux this runs on.
            assert!(is_tmpfs(shm));
        }
        assert!(!is_tmpfs(Path::new("/proc")));
    }
}
