//! The data directory: an exclusive lock, and the manifest that fixes the shard count.
//!
//! ```text
//! <data_dir>/LOCK                 flock'ed for the life of the process; holds its pid
//! <data_dir>/MANIFEST             format version and shard count, written once
//! <data_dir>/shard-0000/ ...      one log per shard (see `segment`)
//! ```
//!
//! The shard count is decided when the directory is created and never changes: a payment
//! id names its shard, so a restart with another core count maps the same shards onto the
//! new cores instead of moving data. The manifest is written atomically (temporary file,
//! fsync, rename, fsync of the directory) after the shard directories exist, so a
//! manifest on disk always describes a complete layout.

use crate::config::SHARDS_MAX;
use std::fmt;
use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::io::AsRawFd;
use std::path::{Path, PathBuf};

/// The manifest layout this build reads and writes.
pub const MANIFEST_FORMAT_VERSION: u32 = 1;
const MANIFEST_MAGIC: &str = "payd data directory";
const MANIFEST_FILE: &str = "MANIFEST";
const MANIFEST_TEMPORARY_FILE: &str = "MANIFEST.tmp";
const LOCK_FILE: &str = "LOCK";
/// A manifest is three short lines; anything longer is not one.
const MANIFEST_BYTES_MAX: u64 = 4096;

/// An open, locked data directory. The lock is released when this is dropped.
#[derive(Debug)]
pub struct DataDir {
    path: PathBuf,
    shard_count: u16,
    /// Held only for its flock.
    _lock: File,
}

#[derive(Debug)]
pub enum DataDirError {
    Io {
        path: PathBuf,
        action: &'static str,
        source: io::Error,
    },
    /// Another process (or another `DataDir` in this one) holds the lock.
    Locked {
        path: PathBuf,
    },
    BadManifest {
        path: PathBuf,
        reason: String,
    },
    /// The manifest exists but a shard directory it promises does not.
    MissingShard {
        path: PathBuf,
    },
    /// No manifest, yet a shard directory holds segments: the shard count is unknown.
    ManifestMissing {
        path: PathBuf,
    },
    InvalidShardCount {
        shards: u16,
    },
}

impl fmt::Display for DataDirError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DataDirError::Io {
                path,
                action,
                source,
            } => write!(f, "cannot {action} {}: {source}", path.display()),
            DataDirError::Locked { path } => write!(
                f,
                "data directory {} is in use by another payd process (its LOCK file is held)",
                path.display()
            ),
            DataDirError::BadManifest { path, reason } => {
                write!(f, "manifest {} is not valid: {reason}", path.display())
            }
            DataDirError::MissingShard { path } => write!(
                f,
                "shard directory {} named by the manifest is missing",
                path.display()
            ),
            DataDirError::ManifestMissing { path } => write!(
                f,
                "data directory {} holds shard logs but no MANIFEST; refusing to guess the shard count",
                path.display()
            ),
            DataDirError::InvalidShardCount { shards } => {
                write!(f, "shard count {shards} is outside 1..={SHARDS_MAX}")
            }
        }
    }
}

impl std::error::Error for DataDirError {}

fn io_error<'a>(
    path: &'a Path,
    action: &'static str,
) -> impl FnOnce(io::Error) -> DataDirError + 'a {
    move |source| DataDirError::Io {
        path: path.to_path_buf(),
        action,
        source,
    }
}

impl DataDir {
    /// Creates the directory if needed, locks it, and reads its manifest, or writes one
    /// with `shards_if_new` shards when there is none. A manifest's count always wins.
    pub fn open(path: &Path, shards_if_new: u16) -> Result<DataDir, DataDirError> {
        std::fs::create_dir_all(path).map_err(io_error(path, "create"))?;
        // Absolute from here on: glommio opens directories without the working directory
        // (a relative path fails with EBADF), and a path that cannot move is clearer in logs.
        let path = &std::fs::canonicalize(path).map_err(io_error(path, "resolve"))?;
        let lock = lock(path)?;
        let manifest_path = path.join(MANIFEST_FILE);
        let shard_count = if manifest_path.exists() {
            read_manifest(&manifest_path)?
        } else {
            create_layout(path, shards_if_new)?;
            shards_if_new
        };
        let data_dir = DataDir {
            path: path.to_path_buf(),
            shard_count,
            _lock: lock,
        };
        for shard in 0..shard_count {
            let shard_dir = data_dir.shard_dir(shard);
            if !shard_dir.is_dir() {
                return Err(DataDirError::MissingShard { path: shard_dir });
            }
        }
        Ok(data_dir)
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn shard_count(&self) -> u16 {
        self.shard_count
    }

    /// Where shard `shard`'s log lives.
    pub fn shard_dir(&self, shard: u16) -> PathBuf {
        assert!(shard < self.shard_count);
        shard_dir(&self.path, shard)
    }
}

fn shard_dir(data_dir: &Path, shard: u16) -> PathBuf {
    data_dir.join(format!("shard-{shard:04}"))
}

/// Takes the exclusive, non-blocking flock. The lock belongs to the open file, so a
/// second open of the same directory fails even within one process.
fn lock(path: &Path) -> Result<File, DataDirError> {
    let lock_path = path.join(LOCK_FILE);
    let mut file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(&lock_path)
        .map_err(io_error(&lock_path, "open"))?;
    // SAFETY: flock on a file descriptor this function owns; no memory is involved.
    let result = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
    if result != 0 {
        let error = io::Error::last_os_error();
        return Err(if error.kind() == io::ErrorKind::WouldBlock {
            DataDirError::Locked {
                path: path.to_path_buf(),
            }
        } else {
            io_error(&lock_path, "lock")(error)
        });
    }
    // The pid is for the operator who wonders who holds the lock; nothing reads it.
    file.set_len(0)
        .and_then(|()| writeln!(file, "{}", std::process::id()))
        .map_err(io_error(&lock_path, "write"))?;
    Ok(file)
}

fn read_manifest(manifest_path: &Path) -> Result<u16, DataDirError> {
    let bad = |reason: String| DataDirError::BadManifest {
        path: manifest_path.to_path_buf(),
        reason,
    };
    let bytes = std::fs::metadata(manifest_path)
        .map_err(io_error(manifest_path, "read"))?
        .len();
    if bytes > MANIFEST_BYTES_MAX {
        return Err(bad(format!("{bytes} bytes is too large")));
    }
    let text = std::fs::read_to_string(manifest_path).map_err(io_error(manifest_path, "read"))?;
    parse_manifest(&text).map_err(bad)
}

/// Parses the manifest text: the magic line, then `format N` and `shards N`.
fn parse_manifest(text: &str) -> Result<u16, String> {
    let mut lines = text.lines();
    if lines.next() != Some(MANIFEST_MAGIC) {
        return Err(format!("first line is not \"{MANIFEST_MAGIC}\""));
    }
    let mut field = |name: &str| -> Result<u64, String> {
        let line = lines.next().ok_or(format!("`{name}` line is missing"))?;
        line.strip_prefix(name)
            .and_then(|rest| rest.strip_prefix(' '))
            .and_then(|value| value.parse().ok())
            .ok_or(format!("expected `{name} <number>`, found \"{line}\""))
    };
    let format = field("format")?;
    if format != u64::from(MANIFEST_FORMAT_VERSION) {
        return Err(format!(
            "format {format} is not supported (this build reads format {MANIFEST_FORMAT_VERSION})"
        ));
    }
    let shards = field("shards")?;
    if shards == 0 || shards > u64::from(SHARDS_MAX) {
        return Err(format!("shard count {shards} is outside 1..={SHARDS_MAX}"));
    }
    if lines.next().is_some() {
        return Err("unexpected lines after `shards`".to_string());
    }
    Ok(shards as u16)
}

fn manifest_text(shards: u16) -> String {
    format!("{MANIFEST_MAGIC}\nformat {MANIFEST_FORMAT_VERSION}\nshards {shards}\n")
}

/// Creates the shard directories, then the manifest that makes them official.
fn create_layout(path: &Path, shards: u16) -> Result<(), DataDirError> {
    if shards == 0 || shards > SHARDS_MAX {
        return Err(DataDirError::InvalidShardCount { shards });
    }
    refuse_orphan_shards(path)?;
    for shard in 0..shards {
        let shard_path = shard_dir(path, shard);
        std::fs::create_dir_all(&shard_path).map_err(io_error(&shard_path, "create"))?;
    }
    let temporary = path.join(MANIFEST_TEMPORARY_FILE);
    let mut file = File::create(&temporary).map_err(io_error(&temporary, "create"))?;
    file.write_all(manifest_text(shards).as_bytes())
        .and_then(|()| file.sync_all())
        .map_err(io_error(&temporary, "write"))?;
    let manifest_path = path.join(MANIFEST_FILE);
    std::fs::rename(&temporary, &manifest_path).map_err(io_error(&manifest_path, "rename"))?;
    sync_directory(path)
}

/// A data directory without a manifest whose shard directories hold segments was made
/// by a payd whose shard count is lost: writing a new count could misroute every id.
fn refuse_orphan_shards(path: &Path) -> Result<(), DataDirError> {
    let entries = std::fs::read_dir(path).map_err(io_error(path, "read"))?;
    for entry in entries {
        let entry = entry.map_err(io_error(path, "read"))?;
        let is_shard = entry.file_name().to_string_lossy().starts_with("shard-");
        if is_shard && entry.path().is_dir() {
            let segments = crate::wal::segment::list_segments(&entry.path())
                .map_err(io_error(path, "read"))?;
            if !segments.is_empty() {
                return Err(DataDirError::ManifestMissing {
                    path: path.to_path_buf(),
                });
            }
        }
    }
    Ok(())
}

/// Makes the directory's entries (new files, renames) durable.
pub(crate) fn sync_directory(path: &Path) -> Result<(), DataDirError> {
    File::open(path)
        .and_then(|directory| directory.sync_all())
        .map_err(io_error(path, "sync"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wal::segment::segment_file_name;

    #[test]
    fn new_directory_gets_a_manifest_and_shard_directories() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("data");
        let data_dir = DataDir::open(&path, 3).unwrap();
        assert_eq!(data_dir.shard_count(), 3);
        assert_eq!(data_dir.shard_dir(2), path.join("shard-0002"));
        assert!(path.join("shard-0000").is_dir() && path.join("shard-0002").is_dir());
        assert_eq!(
            std::fs::read_to_string(path.join("MANIFEST")).unwrap(),
            "payd data directory\nformat 1\nshards 3\n"
        );
        assert!(!path.join(MANIFEST_TEMPORARY_FILE).exists());
    }

    #[test]
    fn the_manifest_count_wins_over_a_new_core_count() {
        let dir = tempfile::tempdir().unwrap();
        drop(DataDir::open(dir.path(), 4).unwrap());
        let reopened = DataDir::open(dir.path(), 1).unwrap();
        assert_eq!(reopened.shard_count(), 4);
    }

    #[test]
    fn a_second_open_fails_while_the_first_holds_the_lock() {
        let dir = tempfile::tempdir().unwrap();
        let first = DataDir::open(dir.path(), 2).unwrap();
        let error = DataDir::open(dir.path(), 2).unwrap_err();
        assert!(matches!(error, DataDirError::Locked { .. }));
        let message = error.to_string();
        assert!(
            message.contains(&dir.path().display().to_string()),
            "{message}"
        );
        assert!(message.contains("in use by another payd"), "{message}");
        drop(first);
        assert!(DataDir::open(dir.path(), 2).is_ok());
    }

    #[test]
    fn the_lock_file_holds_our_pid() {
        let dir = tempfile::tempdir().unwrap();
        let _data_dir = DataDir::open(dir.path(), 1).unwrap();
        let text = std::fs::read_to_string(dir.path().join("LOCK")).unwrap();
        assert_eq!(text.trim(), std::process::id().to_string());
    }

    #[test]
    fn zero_or_too_many_shards_are_refused_for_a_new_directory() {
        let dir = tempfile::tempdir().unwrap();
        for shards in [0, SHARDS_MAX + 1] {
            assert!(matches!(
                DataDir::open(dir.path(), shards),
                Err(DataDirError::InvalidShardCount { .. })
            ));
        }
        assert!(!dir.path().join("MANIFEST").exists());
    }

    #[test]
    fn manifests_are_parsed_strictly() {
        assert_eq!(parse_manifest(&manifest_text(7)), Ok(7));
        for text in [
            "",
            "payd data directory\n",
            "payd data directory\nformat 2\nshards 1\n",
            "payd data directory\nformat 1\nshards 0\n",
            "payd data directory\nformat 1\nshards 4097\n",
            "payd data directory\nformat 1\nshards x\n",
            "payd data directory\nformat 1\nshards 1\nextra 1\n",
            "payd data directory\nshards 1\nformat 1\n",
            "something else\nformat 1\nshards 1\n",
        ] {
            assert!(parse_manifest(text).is_err(), "{text:?}");
        }
    }

    #[test]
    fn a_bad_manifest_is_reported_with_its_path() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join("MANIFEST"),
            "payd data directory\nformat 9\n",
        )
        .unwrap();
        let error = DataDir::open(dir.path(), 1).unwrap_err();
        assert!(matches!(error, DataDirError::BadManifest { .. }));
        assert!(
            error.to_string().contains("format 9 is not supported"),
            "{error}"
        );
    }

    #[test]
    fn a_missing_shard_directory_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        drop(DataDir::open(dir.path(), 2).unwrap());
        std::fs::remove_dir(dir.path().join("shard-0001")).unwrap();
        let error = DataDir::open(dir.path(), 2).unwrap_err();
        assert!(
            matches!(error, DataDirError::MissingShard { path } if path.ends_with("shard-0001"))
        );
    }

    #[test]
    fn shard_logs_without_a_manifest_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        drop(DataDir::open(dir.path(), 2).unwrap());
        std::fs::write(
            dir.path().join("shard-0001").join(segment_file_name(1)),
            b"x",
        )
        .unwrap();
        std::fs::remove_file(dir.path().join("MANIFEST")).unwrap();
        let error = DataDir::open(dir.path(), 4).unwrap_err();
        assert!(
            matches!(error, DataDirError::ManifestMissing { .. }),
            "{error}"
        );
    }
}
