//! The storage seam: every byte of I/O the log, recovery and retention do goes through
//! `Disk`, so the same code runs over the real filesystem and, in tests, over a simulated
//! disk that loses what was not synced.
//!
//! `Disk::Os` is the filesystem: blocking `std::fs` for recovery (it runs before the shard
//! serves), glommio files for the writer (`writer.rs` holds those). `Disk::Simulated` is
//! `SimDisk` (tests only): an in-memory disk that keeps written bytes apart from synced
//! ones, block by block, and at a simulated power cut keeps any subset of the unsynced
//! blocks, like a real disk with a volatile write cache (TigerBeetle's storage simulation
//! is the model).

use crate::wal::segment::{list_segments, SegmentFile};
use std::io;
use std::path::Path;

#[cfg(test)]
pub use simulated::{CrashShape, SimDisk};

/// Where a log lives.
#[derive(Clone)]
pub enum Disk {
    Os,
    #[cfg(test)]
    Simulated(std::rc::Rc<SimDisk>),
}

impl Disk {
    /// The segment files of a shard directory, in log order (see `list_segments`).
    pub fn list_segments(&self, shard_dir: &Path) -> io::Result<Vec<SegmentFile>> {
        match self {
            Disk::Os => list_segments(shard_dir),
            #[cfg(test)]
            Disk::Simulated(disk) => Ok(disk.list(shard_dir)),
        }
    }

    /// A segment's bytes, and when it was last written (ms since the Unix epoch) if known.
    pub fn read_segment(&self, path: &Path) -> io::Result<(Vec<u8>, Option<u64>)> {
        match self {
            Disk::Os => {
                let metadata = std::fs::metadata(path)?;
                let modified_ms = metadata
                    .modified()
                    .ok()
                    .and_then(|time| time.duration_since(std::time::UNIX_EPOCH).ok())
                    .map(|since| u64::try_from(since.as_millis()).unwrap_or(u64::MAX));
                Ok((std::fs::read(path)?, modified_ms))
            }
            #[cfg(test)]
            Disk::Simulated(disk) => disk.read(path).map(|bytes| (bytes, None)),
        }
    }

    /// The size of a segment file without reading it.
    pub fn segment_bytes(&self, path: &Path) -> io::Result<u64> {
        match self {
            Disk::Os => std::fs::metadata(path).map(|metadata| metadata.len()),
            #[cfg(test)]
            Disk::Simulated(disk) => disk.read(path).map(|bytes| bytes.len() as u64),
        }
    }

    /// Shortens a file to `length` bytes and syncs it.
    pub fn cut(&self, path: &Path, length: u64) -> io::Result<()> {
        match self {
            Disk::Os => {
                let file = std::fs::OpenOptions::new().write(true).open(path)?;
                file.set_len(length)?;
                file.sync_all()
            }
            #[cfg(test)]
            Disk::Simulated(disk) => {
                disk.truncate(path, length)?;
                disk.sync_file(path)
            }
        }
    }

    /// Deletes segment files, oldest first, syncing their directory after each: removals
    /// that reach the disk out of order could leave a gap in the log after a power cut,
    /// which recovery must refuse.
    pub async fn delete_segments(
        &self,
        shard_dir: &Path,
        dead: &[SegmentFile],
    ) -> Result<(), String> {
        match self {
            Disk::Os => {
                let directory = glommio::io::Directory::open(shard_dir)
                    .await
                    .map_err(|e| format!("cannot open {}: {e}", shard_dir.display()))?;
                let mut outcome = Ok(());
                for segment in dead {
                    outcome = remove_and_sync(&directory, &segment.path).await;
                    if outcome.is_err() {
                        break;
                    }
                }
                let _ = directory.close().await;
                outcome.map_err(|e| format!("{e} (in {})", shard_dir.display()))
            }
            #[cfg(test)]
            Disk::Simulated(disk) => {
                for segment in dead {
                    disk.pause().await;
                    disk.remove(&segment.path).map_err(|e| e.to_string())?;
                    disk.pause().await;
                    disk.sync_dir(shard_dir).map_err(|e| e.to_string())?;
                }
                Ok(())
            }
        }
    }
}

async fn remove_and_sync(directory: &glommio::io::Directory, path: &Path) -> Result<(), String> {
    glommio::io::remove(path)
        .await
        .map_err(|e| format!("cannot delete {}: {e}", path.display()))?;
    directory.sync().await.map_err(|e| {
        format!(
            "fsync of the directory after deleting {} failed: {e}",
            path.display()
        )
    })
}

#[cfg(test)]
mod simulated {
    use crate::wal::fuzz::Prng;
    use crate::wal::segment::{parse_segment_file_name, SegmentFile};
    use std::cell::RefCell;
    use std::collections::{BTreeMap, BTreeSet};
    use std::io;
    use std::path::{Path, PathBuf};

    /// The unit a power cut keeps or loses: a page of the disk's write cache.
    pub const BLOCK_BYTES: usize = 4096;
    /// The most times a simulated operation yields to other tasks before it completes.
    const PAUSES_MAX: usize = 3;

    /// What a power cut does to the blocks written since their file's last sync.
    #[derive(Clone, Copy, Debug, PartialEq, Eq)]
    pub enum CrashShape {
        /// The process dies (SIGKILL), the disk does not: what it wrote stays readable,
        /// and what it had not synced stays unsynced, for a later power cut to take.
        ProcessOnly,
        /// Every unsynced block is lost.
        Nothing,
        /// Every unsynced block persisted.
        Everything,
        /// The first unsynced blocks of each file, in offset order, persisted.
        Prefix,
        /// Any subset persisted: a later block without an earlier one.
        Subset,
    }

    /// A file's contents: blocks by index (absent blocks read as zeros) and a length.
    #[derive(Clone, Default)]
    struct Blocks {
        blocks: BTreeMap<u64, Box<[u8]>>,
        length: u64,
    }

    impl Blocks {
        fn read(&self) -> Vec<u8> {
            let mut bytes = vec![0u8; self.length as usize];
            for (&index, block) in &self.blocks {
                let start = index as usize * BLOCK_BYTES;
                if start >= bytes.len() {
                    break;
                }
                let end = (start + BLOCK_BYTES).min(bytes.len());
                bytes[start..end].copy_from_slice(&block[..end - start]);
            }
            bytes
        }

        fn block_mut(&mut self, index: u64) -> &mut [u8] {
            self.blocks
                .entry(index)
                .or_insert_with(|| vec![0u8; BLOCK_BYTES].into_boxed_slice())
        }

        fn set_length(&mut self, length: u64) {
            self.length = length;
            let first_gone = length.div_ceil(BLOCK_BYTES as u64);
            self.blocks.retain(|&index, _| index < first_gone);
            let in_last = length as usize % BLOCK_BYTES;
            if in_last != 0 {
                if let Some(block) = self.blocks.get_mut(&(length / BLOCK_BYTES as u64)) {
                    block[in_last..].fill(0);
                }
            }
        }
    }

    struct SimFile {
        current: Blocks,
        durable: Blocks,
        /// Blocks written since the last sync.
        dirty: BTreeSet<u64>,
    }

    struct State {
        /// What reads see now.
        files: BTreeMap<PathBuf, SimFile>,
        /// Names whose creation reached the disk (their directory was synced since).
        durable_names: BTreeSet<PathBuf>,
        /// Removed files whose removal did not reach the disk yet: a power cut may bring
        /// them back, with their synced contents.
        removed: BTreeMap<PathBuf, Blocks>,
        prng: Prng,
        /// Bumped by every power cut: handles from before it fail.
        epoch: u64,
    }

    /// An in-memory disk with a volatile write cache. Single-threaded, like a shard.
    pub struct SimDisk {
        state: RefCell<State>,
    }

    fn crashed() -> io::Error {
        io::Error::other("the simulated disk lost power")
    }

    fn not_found(path: &Path) -> io::Error {
        io::Error::new(
            io::ErrorKind::NotFound,
            format!("{} not found", path.display()),
        )
    }

    impl SimDisk {
        pub fn new(seed: u64) -> SimDisk {
            SimDisk {
                state: RefCell::new(State {
                    files: BTreeMap::new(),
                    durable_names: BTreeSet::new(),
                    removed: BTreeMap::new(),
                    prng: Prng(seed | 1),
                    epoch: 0,
                }),
            }
        }

        pub fn epoch(&self) -> u64 {
            self.state.borrow().epoch
        }

        /// Fails a handle opened before the last power cut.
        pub fn check_epoch(&self, epoch: u64) -> io::Result<()> {
            if self.state.borrow().epoch == epoch {
                Ok(())
            } else {
                Err(crashed())
            }
        }

        /// Lets other tasks run a few times, at random: I/O takes time.
        pub async fn pause(&self) {
            let pauses = self.state.borrow_mut().prng.below(PAUSES_MAX + 1);
            for _ in 0..pauses {
                futures_lite::future::yield_now().await;
            }
        }

        pub fn list(&self, dir: &Path) -> Vec<SegmentFile> {
            let state = self.state.borrow();
            let mut segments: Vec<SegmentFile> = state
                .files
                .keys()
                .filter(|path| path.parent() == Some(dir))
                .filter_map(|path| {
                    let name = path.file_name()?.to_str()?;
                    Some(SegmentFile {
                        first_sequence: parse_segment_file_name(name)?,
                        path: path.clone(),
                    })
                })
                .collect();
            segments.sort_by_key(|segment| segment.first_sequence);
            segments
        }

        pub fn read(&self, path: &Path) -> io::Result<Vec<u8>> {
            let state = self.state.borrow();
            let file = state.files.get(path).ok_or_else(|| not_found(path))?;
            Ok(file.current.read())
        }

        pub fn length(&self, path: &Path) -> io::Result<u64> {
            let state = self.state.borrow();
            let file = state.files.get(path).ok_or_else(|| not_found(path))?;
            Ok(file.current.length)
        }

        /// Creates an empty file; false if one exists already.
        pub fn create(&self, path: &Path) -> bool {
            let mut state = self.state.borrow_mut();
            if state.files.contains_key(path) {
                return false;
            }
            state.removed.remove(path);
            state.files.insert(
                path.to_path_buf(),
                SimFile {
                    current: Blocks::default(),
                    durable: Blocks::default(),
                    dirty: BTreeSet::new(),
                },
            );
            true
        }

        pub fn write_at(&self, path: &Path, offset: u64, bytes: &[u8]) -> io::Result<()> {
            let mut state = self.state.borrow_mut();
            let file = state.files.get_mut(path).ok_or_else(|| not_found(path))?;
            let mut at = offset as usize;
            let mut rest = bytes;
            // Bounded: every pass consumes up to one block of `rest`.
            while !rest.is_empty() {
                let index = (at / BLOCK_BYTES) as u64;
                let within = at % BLOCK_BYTES;
                let taken = rest.len().min(BLOCK_BYTES - within);
                file.current.block_mut(index)[within..within + taken]
                    .copy_from_slice(&rest[..taken]);
                file.dirty.insert(index);
                at += taken;
                rest = &rest[taken..];
            }
            file.current.length = file.current.length.max(at as u64);
            Ok(())
        }

        pub fn truncate(&self, path: &Path, length: u64) -> io::Result<()> {
            let mut state = self.state.borrow_mut();
            let file = state.files.get_mut(path).ok_or_else(|| not_found(path))?;
            file.current.set_length(length);
            if !length.is_multiple_of(BLOCK_BYTES as u64) {
                file.dirty.insert(length / BLOCK_BYTES as u64);
            }
            Ok(())
        }

        /// fdatasync: the file's written blocks and length reach the disk.
        pub fn sync_file(&self, path: &Path) -> io::Result<()> {
            let mut state = self.state.borrow_mut();
            let file = state.files.get_mut(path).ok_or_else(|| not_found(path))?;
            let dirty = std::mem::take(&mut file.dirty);
            for index in dirty {
                match file.current.blocks.get(&index) {
                    Some(block) => {
                        file.durable.blocks.insert(index, block.clone());
                    }
                    None => {
                        file.durable.blocks.remove(&index);
                    }
                }
            }
            file.durable.set_length(file.current.length);
            Ok(())
        }

        pub fn remove(&self, path: &Path) -> io::Result<()> {
            let mut state = self.state.borrow_mut();
            let file = state.files.remove(path).ok_or_else(|| not_found(path))?;
            if state.durable_names.contains(path) {
                state.removed.insert(path.to_path_buf(), file.durable);
            }
            Ok(())
        }

        /// Renames a file, replacing any file of the new name (which a power cut before
        /// the directory's sync may bring back, as a removal).
        pub fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
            let mut guard = self.state.borrow_mut();
            let state = &mut *guard;
            let file = state.files.remove(from).ok_or_else(|| not_found(from))?;
            if state.durable_names.contains(from) {
                let durable = file.durable.clone();
                state.removed.insert(from.to_path_buf(), durable);
            }
            if let Some(replaced) = state.files.insert(to.to_path_buf(), file) {
                if state.durable_names.contains(to) {
                    state.removed.insert(to.to_path_buf(), replaced.durable);
                }
            }
            Ok(())
        }

        /// fsync of a directory: creations and removals in it reach the disk.
        pub fn sync_dir(&self, dir: &Path) -> io::Result<()> {
            let mut guard = self.state.borrow_mut();
            let state = &mut *guard;
            let in_dir = |path: &PathBuf| path.parent() == Some(dir);
            state.durable_names.retain(|path| !in_dir(path));
            let present = state.files.keys().filter(|path| in_dir(path)).cloned();
            state.durable_names.extend(present);
            state.removed.retain(|path, _| !in_dir(path));
            Ok(())
        }

        /// A power cut: every handle open until now fails from here on, and each file
        /// keeps its synced blocks plus the unsynced ones `shape` lets through. A name
        /// whose creation or removal was not synced goes either way.
        pub fn crash(&self, shape: CrashShape) {
            let mut guard = self.state.borrow_mut();
            let state = &mut *guard;
            state.epoch += 1;
            if shape == CrashShape::ProcessOnly {
                return;
            }
            let files = std::mem::take(&mut state.files);
            for (path, file) in files {
                if !state.durable_names.contains(&path) && state.prng.below(2) == 0 {
                    continue;
                }
                let durable = crashed_contents(file, shape, &mut state.prng);
                state.files.insert(
                    path,
                    SimFile {
                        current: durable.clone(),
                        durable,
                        dirty: BTreeSet::new(),
                    },
                );
            }
            let removed = std::mem::take(&mut state.removed);
            for (path, durable) in removed {
                if state.prng.below(2) == 0 {
                    state.files.insert(
                        path,
                        SimFile {
                            current: durable.clone(),
                            durable,
                            dirty: BTreeSet::new(),
                        },
                    );
                }
            }
            state.durable_names = state.files.keys().cloned().collect();
        }

        /// Flips one bit of synced data at `offset` of `path`: corruption, not a tear.
        pub fn corrupt(&self, path: &Path, offset: u64) {
            let mut state = self.state.borrow_mut();
            let file = state.files.get_mut(path).expect("a file to corrupt");
            let index = offset / BLOCK_BYTES as u64;
            let within = offset as usize % BLOCK_BYTES;
            file.current.block_mut(index)[within] ^= 0x10;
            file.durable.block_mut(index)[within] ^= 0x10;
        }
    }

    /// What a file holds after a power cut of `shape`.
    fn crashed_contents(file: SimFile, shape: CrashShape, prng: &mut Prng) -> Blocks {
        let mut kept = file.durable;
        let dirty: Vec<u64> = file.dirty.into_iter().collect();
        let prefix = prng.below(dirty.len() + 1);
        for (position, &index) in dirty.iter().enumerate() {
            let persisted = match shape {
                CrashShape::ProcessOnly => unreachable!("no power cut"),
                CrashShape::Nothing => false,
                CrashShape::Everything => true,
                CrashShape::Prefix => position < prefix,
                CrashShape::Subset => prng.below(2) == 0,
            };
            if !persisted {
                continue;
            }
            match file.current.blocks.get(&index) {
                Some(block) => {
                    kept.blocks.insert(index, block.clone());
                }
                None => {
                    kept.blocks.remove(&index);
                }
            }
        }
        // The length is metadata: the new one reached the disk, or the synced one stayed.
        if kept.length != file.current.length && prng.below(2) == 0 {
            kept.set_length(file.current.length);
        } else {
            let length = kept.length;
            kept.set_length(length);
        }
        kept
    }
}
