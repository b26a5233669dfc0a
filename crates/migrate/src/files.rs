//! The files a pod maps, as the source sees them and the destination must
//! have them (the preflight, before any state moves): the same path under
//! the pod's root, the same size and modification time, and for code (an
//! executable mapping) the same contents, by BLAKE3. A file changed or
//! replaced on one host (a package upgraded on one of them) would
//! otherwise come back as other code under a running program.

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::os::unix::fs::MetadataExt;
use std::path::Path;

/// Files listed in an offer at most (the offer's frame is bounded).
pub const MAX_FILES: usize = 2048;

/// One mapped file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileCheck {
    /// As the pod sees it (under its root).
    pub path: String,
    pub size: u64,
    /// Modification time: seconds and nanoseconds.
    pub mtime: (i64, i64),
    /// BLAKE3 of the contents, for files mapped executable.
    pub hash: Option<[u8; 32]>,
}

/// The files mapped by processes `pids` (host PIDs of one pod), each once,
/// as mapped (through /proc/PID/map_files, so a file replaced since at
/// its path is the one the process uses, not the new one). Files gone
/// (deleted) are left out: the image carries those.
pub fn mapped(pids: &[i32]) -> std::result::Result<Vec<FileCheck>, String> {
    let mut by_path: BTreeMap<String, FileCheck> = BTreeMap::new();
    for &pid in pids {
        // (A process that ended meanwhile maps nothing.)
        let Ok(maps) = cryopod_engine::procfs::maps(pid) else { continue };
        for m in maps {
            if !m.path.starts_with('/') || m.path.ends_with(" (deleted)") || m.path.starts_with("/memfd:") {
                continue;
            }
            if m.path.starts_with("/dev/") || m.path.starts_with("/SYSV") {
                continue;
            }
            let exec = m.perms.contains('x');
            if by_path.get(&m.path).is_some_and(|f| f.hash.is_some() || !exec) {
                continue;
            }
            let at = format!("/proc/{pid}/map_files/{:x}-{:x}", m.start, m.end);
            let Ok(meta) = std::fs::metadata(&at) else { continue };
            if !meta.is_file() {
                continue;
            }
            let hash = match exec {
                true => Some(hash_file(Path::new(&at)).map_err(|e| format!("reading {}: {e}", m.path))?),
                false => None,
            };
            let f =
                FileCheck { path: m.path.clone(), size: meta.len(), mtime: (meta.mtime(), meta.mtime_nsec()), hash };
            by_path.insert(m.path, f);
        }
    }
    if by_path.len() > MAX_FILES {
        return Err(format!("the pod maps {} files; at most {MAX_FILES} can be checked", by_path.len()));
    }
    Ok(by_path.into_values().collect())
}

/// Does this host have `files` under `root` as the pod maps them? One
/// sentence for the first that differs. Paths are resolved inside `root`
/// (its symbolic links as the pod would follow them, never out of it).
pub fn check(root: &Path, files: &[FileCheck]) -> std::result::Result<(), String> {
    use rustix::fs::{Mode, OFlags, ResolveFlags};
    let dir = rustix::fs::open(root, OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC, Mode::empty())
        .map_err(|e| format!("the pod's root {} cannot be opened here: {e}", root.display()))?;
    for f in files {
        let rel = f.path.trim_start_matches('/');
        let how = ResolveFlags::IN_ROOT | ResolveFlags::NO_MAGICLINKS;
        let fd = rustix::fs::openat2(&dir, rel, OFlags::RDONLY | OFlags::CLOEXEC, Mode::empty(), how)
            .map_err(|e| format!("the pod maps {}, which is not here ({e})", f.path))?;
        let file = std::fs::File::from(fd);
        let meta = file.metadata().map_err(|e| format!("{}: {e}", f.path))?;
        let mtime = (meta.mtime(), meta.mtime_nsec());
        if meta.len() != f.size || mtime != f.mtime {
            return Err(format!(
                "{} here is not the file the pod maps (size {} and modified {}.{:09} here, {} and {}.{:09} there)",
                f.path,
                meta.len(),
                mtime.0,
                mtime.1,
                f.size,
                f.mtime.0,
                f.mtime.1
            ));
        }
        if let Some(want) = f.hash {
            let got = hash_reader(&file).map_err(|e| format!("reading {}: {e}", f.path))?;
            if got != want {
                return Err(format!("{} here holds other code than the file the pod maps", f.path));
            }
        }
    }
    Ok(())
}

fn hash_file(p: &Path) -> std::io::Result<[u8; 32]> {
    hash_reader(&std::fs::File::open(p)?)
}

fn hash_reader(mut f: &std::fs::File) -> std::io::Result<[u8; 32]> {
    let mut h = blake3::Hasher::new();
    h.update_reader(&mut f)?;
    Ok(*h.finalize().as_bytes())
}
