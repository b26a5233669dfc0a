//! The output directory of a checkpoint. It is the user's: a checkpoint
//! writes only into a new or empty directory, never removes or overwrites
//! a file it did not write, and when it fails it removes exactly what it
//! wrote (and the directory, if it made it).
//!
//! How: the directory is opened once and every file is created through
//! that descriptor with `O_EXCL` (never over an existing file). The first
//! file is the marker [`INCOMPLETE_MARKER`]; the name of every file created
//! afterwards is appended to it, so the marker is a journal of what this
//! checkpoint wrote, on disk, shared with helper processes (a pod's IPC
//! reader) and surviving our death. Once the manifest is renamed into
//! place the marker goes and the image is complete. Dropped before that
//! (any failure), the directory removes every file its journal lists, the
//! marker, and the directories it made. A checkpoint that was killed
//! leaves the marker and its journal: the next checkpoint into the same
//! directory recognises them, removes the files listed (regular files of
//! ours only) and proceeds; anything else in the directory makes it
//! refuse.

use crate::{EngineError, Result};
use cryopod_image::{encode_manifest_keyed, ImageKey, Manifest, INCOMPLETE_MARKER, MANIFEST_FILE};
use rustix::fs::{AtFlags, FileType, Mode, OFlags};
use std::fs::File;
use std::io::Write;
use std::os::fd::OwnedFd;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

/// The manifest's name while it is being written.
const MANIFEST_TMP: &str = ".manifest.tmp";
/// Largest journal read back (names of packs and pod files).
const MAX_JOURNAL: u64 = 4 << 20;

fn io_err(path: impl std::fmt::Display) -> impl FnOnce(rustix::io::Errno) -> EngineError {
    let path = path.to_string();
    move |e| EngineError::Io { path, source: e.into() }
}

/// An output directory being written (see the module comment).
pub struct OutDir {
    path: PathBuf,
    dir: OwnedFd,
    /// Directories we created, outermost first.
    made: Vec<PathBuf>,
    /// The marker, open for appending names.
    journal: File,
    committed: AtomicBool,
    manifest_len: AtomicU64,
}

/// A private directory for an image on its way to or from a stream (or
/// another host), removed with everything in it when dropped.
pub struct TempImage {
    root: PathBuf,
}

impl TempImage {
    /// A new, not yet existing, image path inside a fresh directory of
    /// mode 0700 under the system's temporary directory.
    pub fn new() -> Result<TempImage> {
        Self::new_in(&std::env::temp_dir())
    }

    /// The same in memory (/dev/shm), not on a disk (a migration's
    /// images); first removing those a killed cryopod left there.
    pub fn in_memory() -> Result<TempImage> {
        let shm = Path::new("/dev/shm");
        remove_stale_in(shm);
        Self::new_in(shm)
    }

    /// The same under `parent`.
    pub fn new_in(parent: &Path) -> Result<TempImage> {
        use std::os::unix::fs::DirBuilderExt;
        let nanos =
            std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_nanos()).unwrap_or(0);
        let root = parent.join(format!("{TEMP_PREFIX}{}-{nanos}", std::process::id()));
        std::fs::DirBuilder::new()
            .mode(0o700)
            .create(&root)
            .map_err(|e| EngineError::Other(format!("creating {}: {e}", root.display())))?;
        Ok(TempImage { root })
    }

    pub fn image(&self) -> PathBuf {
        self.root.join("image")
    }

    /// Another image path in the directory (a live migration keeps its
    /// chain of rounds there, side by side).
    pub fn named(&self, name: &str) -> PathBuf {
        self.root.join(name)
    }

    /// Keep the directory (an image that could not be streamed and exists
    /// nowhere else); returns the image's path.
    pub fn keep(self) -> PathBuf {
        let path = self.image();
        std::mem::forget(self);
        path
    }
}

/// How a temporary image directory's name starts (then the PID of the
/// cryopod that made it).
const TEMP_PREFIX: &str = "cryopod-stream-";

/// Remove the temporary image directories in `parent` left by cryopod
/// processes that are gone (killed before they could: a migration's
/// images in /dev/shm would hold memory until the next boot). Those of
/// live processes stay. Returns how many went.
pub fn remove_stale_in(parent: &Path) -> usize {
    let Ok(entries) = std::fs::read_dir(parent) else { return 0 };
    let stale = |name: &str| {
        let pid = name.strip_prefix(TEMP_PREFIX)?.split('-').next()?.parse::<u32>().ok()?;
        (!Path::new(&format!("/proc/{pid}")).exists()).then_some(())
    };
    let mut removed = 0;
    for e in entries.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        if stale(&name).is_some() && std::fs::remove_dir_all(e.path()).is_ok() {
            tracing::info!(dir = %e.path().display(), "removed the images a killed cryopod left");
            removed += 1;
        }
    }
    removed
}

impl Drop for TempImage {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.root);
    }
}

/// Read an image stream (see `cryopod_image::stream`) from `r` into the
/// new image directory `dir`, checked as it comes; the manifest is
/// committed last, so on any failure nothing is left. A sealed image comes
/// as it is (its key opens it later).
pub fn import_stream(dir: &Path, r: &mut dyn std::io::Read) -> Result<cryopod_image::stream::Imported> {
    import_stream_as(dir, r, cryopod_image::stream::Carry::Whole)
}

/// [`import_stream`] what `carry` allows (see `cryopod_image::stream`).
pub fn import_stream_as(
    dir: &Path,
    r: &mut dyn std::io::Read,
    carry: cryopod_image::stream::Carry,
) -> Result<cryopod_image::stream::Imported> {
    let out = OutDir::prepare(dir)?;
    let mut create = |name: &str| -> cryopod_image::Result<Box<dyn cryopod_image::stream::Sink>> {
        out.create(name)
            .map(|f| Box::new(f) as Box<dyn cryopod_image::stream::Sink>)
            .map_err(|e| cryopod_image::ImageError::Unsafe(format!("cannot create {name}: {e}")))
    };
    let mut r = r;
    let m = cryopod_image::stream::import_as(&mut r, &mut create, carry)?;
    out.commit_manifest_bytes(&m.manifest_bytes)?;
    Ok(m)
}

impl OutDir {
    /// Make `path` (and missing parents) or take it if it is empty or
    /// holds only what an interrupted checkpoint of ours left; write the
    /// marker.
    pub fn prepare(path: &Path) -> Result<OutDir> {
        let made = make_missing(path)?;
        let res = Self::open_made(path, made.clone());
        if res.is_err() {
            remove_dirs(&made);
        }
        res
    }

    fn open_made(path: &Path, made: Vec<PathBuf>) -> Result<OutDir> {
        let shown = path.display().to_string();
        let dir = rustix::fs::open(path, OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC, Mode::empty())
            .map_err(io_err(&shown))?;
        take_over(&dir, &shown)?;
        let flags = OFlags::RDWR | OFlags::CREATE | OFlags::EXCL | OFlags::APPEND | OFlags::NOFOLLOW | OFlags::CLOEXEC;
        let journal = rustix::fs::openat(&dir, INCOMPLETE_MARKER, flags, Mode::from_raw_mode(0o600))
            .map_err(io_err(format!("{shown}/{INCOMPLETE_MARKER}")))?;
        Ok(OutDir {
            path: path.to_path_buf(),
            dir,
            made,
            journal: File::from(journal),
            committed: AtomicBool::new(false),
            manifest_len: AtomicU64::new(0),
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    fn shown(&self, name: &str) -> String {
        self.path.join(name).display().to_string()
    }

    /// Create the new file `name` (mode 0600: an image holds process
    /// memory), never over an existing one, and note it in the journal.
    /// Safe to call in a forked helper: it takes no lock.
    pub fn create(&self, name: &str) -> Result<File> {
        if name.is_empty() || name.contains(['/', '\n', '\0']) || name == INCOMPLETE_MARKER {
            return Err(EngineError::Other(format!("{name:?} is not a name for a file of an image")));
        }
        let flags = OFlags::WRONLY | OFlags::CREATE | OFlags::EXCL | OFlags::NOFOLLOW | OFlags::CLOEXEC;
        let fd = rustix::fs::openat(&self.dir, name, flags, Mode::from_raw_mode(0o600)).map_err(|e| {
            if e == rustix::io::Errno::EXIST {
                EngineError::Other(format!("{} appeared while the checkpoint ran; it is left alone", self.shown(name)))
            } else {
                io_err(self.shown(name))(e)
            }
        })?;
        // One write with O_APPEND: entries of several writers never mix.
        (&self.journal)
            .write_all(format!("{name}\n").as_bytes())
            .map_err(|e| EngineError::Io { path: self.shown(INCOMPLETE_MARKER), source: e })?;
        Ok(File::from(fd))
    }

    /// Write the manifest (temporary file, fsync, rename without replacing
    /// anything, fsync of the directory) and remove the marker: the image
    /// is complete and stays, whatever happens afterwards.
    pub fn commit_manifest(&self, m: &Manifest, key: Option<&ImageKey>) -> Result<()> {
        self.commit_manifest_bytes(&encode_manifest_keyed(m, key)?)
    }

    /// [`OutDir::commit_manifest`] with the manifest file's bytes (an
    /// imported image's, kept as they came).
    pub fn commit_manifest_bytes(&self, bytes: &[u8]) -> Result<()> {
        let mut f = self.create(MANIFEST_TMP)?;
        let tmp = self.shown(MANIFEST_TMP);
        f.write_all(bytes).and_then(|_| f.sync_all()).map_err(|e| EngineError::Io { path: tmp, source: e })?;
        rustix::fs::renameat_with(
            &self.dir,
            MANIFEST_TMP,
            &self.dir,
            MANIFEST_FILE,
            rustix::fs::RenameFlags::NOREPLACE,
        )
        .map_err(io_err(self.shown(MANIFEST_FILE)))?;
        let _ = rustix::fs::fsync(&self.dir);
        self.committed.store(true, Ordering::SeqCst);
        self.manifest_len.store(bytes.len() as u64, Ordering::SeqCst);
        // The image is complete from here on; a marker left beside a
        // manifest only makes the next checkpoint refuse the directory.
        if let Err(e) = rustix::fs::unlinkat(&self.dir, INCOMPLETE_MARKER, AtFlags::empty()) {
            tracing::warn!(dir = %self.path.display(), "cannot remove {INCOMPLETE_MARKER}: {e}");
        }
        let _ = rustix::fs::fsync(&self.dir);
        Ok(())
    }

    /// Bytes of the manifest written (0 before the commit).
    pub fn manifest_len(&self) -> u64 {
        self.manifest_len.load(Ordering::SeqCst)
    }

    /// Remove everything the journal lists, the marker, and the
    /// directories we made.
    fn abandon(&self) {
        let names = read_journal(&self.journal).unwrap_or_default();
        for n in names.iter().rev() {
            let _ = rustix::fs::unlinkat(&self.dir, n.as_str(), AtFlags::empty());
        }
        let _ = rustix::fs::unlinkat(&self.dir, INCOMPLETE_MARKER, AtFlags::empty());
        remove_dirs(&self.made);
    }
}

impl Drop for OutDir {
    fn drop(&mut self) {
        if !self.committed.load(Ordering::SeqCst) {
            self.abandon();
        }
    }
}

/// Create the missing directories of `path` (the last one mode 0700);
/// returns those made, outermost first.
fn make_missing(path: &Path) -> Result<Vec<PathBuf>> {
    let mut missing = Vec::new();
    let mut p = path;
    while !p.as_os_str().is_empty() && std::fs::symlink_metadata(p).is_err() {
        missing.push(p.to_path_buf());
        p = match p.parent() {
            Some(parent) => parent,
            None => break,
        };
    }
    missing.reverse();
    let mut made = Vec::new();
    for (i, d) in missing.iter().enumerate() {
        let mode = if i + 1 == missing.len() { 0o700 } else { 0o755 };
        match rustix::fs::mkdir(d, Mode::from_raw_mode(mode)) {
            Ok(()) => made.push(d.clone()),
            Err(rustix::io::Errno::EXIST) => {}
            Err(e) => {
                remove_dirs(&made);
                return Err(EngineError::Io { path: d.display().to_string(), source: e.into() });
            }
        }
    }
    Ok(made)
}

/// Remove directories we made, innermost first (only empty ones go).
fn remove_dirs(made: &[PathBuf]) {
    for d in made.iter().rev() {
        let _ = std::fs::remove_dir(d);
    }
}

/// The names an interrupted checkpoint's journal lists.
fn read_journal(f: &File) -> Result<Vec<String>> {
    let len = f.metadata().map(|m| m.len()).unwrap_or(0).min(MAX_JOURNAL);
    let mut buf = vec![0u8; len as usize];
    let n = f.read_at(&mut buf, 0).map_err(|e| EngineError::Io { path: INCOMPLETE_MARKER.into(), source: e })?;
    buf.truncate(n);
    Ok(String::from_utf8_lossy(&buf).lines().filter(|l| !l.is_empty()).map(str::to_string).collect())
}

/// Accept the directory if it is empty, or holds only an interrupted
/// checkpoint of ours (then clean that up); refuse it otherwise.
fn take_over(dir: &OwnedFd, shown: &str) -> Result<()> {
    let mut names = Vec::new();
    let listing = rustix::fs::Dir::read_from(dir).map_err(io_err(shown))?;
    for e in listing {
        let e = e.map_err(io_err(shown))?;
        let n = e.file_name().to_string_lossy().into_owned();
        if n != "." && n != ".." {
            names.push(n);
        }
        if names.len() > 100_000 {
            break;
        }
    }
    if names.is_empty() {
        return Ok(());
    }
    let refuse = |n: &str| {
        let what = if n == MANIFEST_FILE {
            "already holds an image".to_string()
        } else {
            format!("is not empty (it holds {n})")
        };
        Err(EngineError::Other(format!("{shown} {what}; a checkpoint writes only into a new or empty directory")))
    };
    if !names.iter().any(|n| n == INCOMPLETE_MARKER) {
        names.sort();
        return refuse(names.iter().find(|n| *n == MANIFEST_FILE).unwrap_or(&names[0]));
    }
    let marker = rustix::fs::openat(
        dir,
        INCOMPLETE_MARKER,
        OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::NONBLOCK | OFlags::CLOEXEC,
        Mode::empty(),
    )
    .map_err(io_err(format!("{shown}/{INCOMPLETE_MARKER}")))?;
    let me = rustix::process::geteuid().as_raw();
    let ours = |st: rustix::fs::Stat| FileType::from_raw_mode(st.st_mode) == FileType::RegularFile && st.st_uid == me;
    if !rustix::fs::fstat(&marker).is_ok_and(ours) {
        return refuse(INCOMPLETE_MARKER);
    }
    let journal = read_journal(&File::from(marker))?;
    // Every other entry must be a regular file of ours that the journal lists.
    for n in names.iter().filter(|n| *n != INCOMPLETE_MARKER) {
        let ours =
            journal.contains(n) && rustix::fs::statat(dir, n.as_str(), AtFlags::SYMLINK_NOFOLLOW).is_ok_and(ours);
        if !ours {
            return refuse(n);
        }
    }
    for n in names.iter().filter(|n| *n != INCOMPLETE_MARKER) {
        rustix::fs::unlinkat(dir, n.as_str(), AtFlags::empty()).map_err(io_err(format!("{shown}/{n}")))?;
    }
    rustix::fs::unlinkat(dir, INCOMPLETE_MARKER, AtFlags::empty())
        .map_err(io_err(format!("{shown}/{INCOMPLETE_MARKER}")))?;
    tracing::info!(dir = shown, files = names.len() - 1, "removed what an interrupted checkpoint left");
    Ok(())
}

#[cfg(test)]
mod tests {
    #[test]
    fn only_the_images_of_gone_processes_are_removed() {
        let parent = std::env::temp_dir().join(format!("cryopod-stale-test-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&parent);
        // A process that has ended (and was reaped): its PID is free.
        let mut child = std::process::Command::new("true").spawn().unwrap();
        let gone = child.id();
        child.wait().unwrap();
        let names =
            [format!("cryopod-stream-{gone}-1"), format!("cryopod-stream-{}-2", std::process::id()), "other".into()];
        for n in &names {
            std::fs::create_dir_all(parent.join(n).join("image")).unwrap();
        }
        assert_eq!(super::remove_stale_in(&parent), 1);
        assert!(!parent.join(&names[0]).exists());
        assert!(parent.join(&names[1]).exists() && parent.join(&names[2]).exists());
        std::fs::remove_dir_all(&parent).unwrap();
    }
}
