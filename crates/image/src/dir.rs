//! Opening an image directory safely. An image is untrusted input, and so
//! is the directory it sits in: its owner may swap files while we read
//! them, or put a FIFO, a device or a symbolic link where a file belongs.
//! So an image is opened once, and everything is decided on descriptors,
//! never again by path:
//!
//! - The directory is opened once (`O_DIRECTORY`). Its path may be a
//!   symbolic link, like any path a user types: what is checked and used is
//!   the directory that was opened, so following a link cannot mix two
//!   directories, and refusing links would only break `restore ~/latest`.
//! - Every file is opened relative to that descriptor with `O_NOFOLLOW`
//!   (no symbolic links), `O_NONBLOCK` (a FIFO cannot hold us) and
//!   `O_NOCTTY`, and `fstat` on the descriptor must say it is a regular
//!   file. Its owner, mode and size are taken from that `fstat`; reads
//!   never go beyond the size it had at open, and the manifest is read
//!   exactly once, under a hard size limit.
//!
//! **Whose image is it.** The directory and the manifest decide, before a
//! byte of the manifest is parsed: the image is root's only if both are
//! owned by root; if either is owned by another user, the image is that
//! user's (two different users: refused). Files opened later (page packs,
//! a pod's files) must be root's or that owner's: a file of another user
//! in a root-owned image is refused, it never turns the image into
//! someone else's after the trust decision was made. A file or directory
//! that group or others may write (a directory only without the sticky
//! bit) is refused in any image: anyone who may write it could have
//! changed the image, and there is no single user to hold responsible.
//! Root's files inside a user's image are fine: the image is the user's
//! anyway.
//!
//! A checkpoint writes [`INCOMPLETE_MARKER`] first and removes it after the
//! manifest is in place, so what an interrupted checkpoint leaves is
//! recognised here and by the next checkpoint into the same directory.

use crate::manifest::{HEADER_LEN, MAX_BODY};
use crate::{ImageError, Manifest, Result, MANIFEST_FILE};
use rustix::fs::{AtFlags, FileType, Mode, OFlags};
use std::fs::File;
use std::io::ErrorKind;
use std::os::fd::OwnedFd;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

/// Written first by a checkpoint (listing the files it created) and
/// removed once the manifest is in place.
pub const INCOMPLETE_MARKER: &str = ".cryopod-incomplete";

/// Who an image belongs to (see the module comment for the rule).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ImageOwner {
    Root,
    /// A user other than root; `gid` is the group of that user's file.
    User {
        uid: u32,
        gid: u32,
    },
}

impl ImageOwner {
    /// Who the images this process writes belong to.
    pub fn current() -> ImageOwner {
        match rustix::process::geteuid().as_raw() {
            0 => ImageOwner::Root,
            uid => ImageOwner::User { uid, gid: rustix::process::getegid().as_raw() },
        }
    }

    pub fn uid(&self) -> u32 {
        match self {
            ImageOwner::Root => 0,
            ImageOwner::User { uid, .. } => *uid,
        }
    }
}

impl std::fmt::Display for ImageOwner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ImageOwner::Root => write!(f, "root"),
            ImageOwner::User { uid, .. } => write!(f, "uid {uid}"),
        }
    }
}

/// What `fstat` said about an opened file or directory.
#[derive(Debug, Clone, Copy)]
pub struct Facts {
    pub uid: u32,
    pub gid: u32,
    pub mode: u32,
    pub size: u64,
}

pub(crate) fn facts(fd: &OwnedFd, what: &str) -> Result<(FileType, Facts)> {
    let st = rustix::fs::fstat(fd).map_err(|e| ImageError::io(what, e.into()))?;
    let size = u64::try_from(st.st_size).map_err(|_| ImageError::Corrupt(format!("{what} has a negative size")))?;
    Ok((FileType::from_raw_mode(st.st_mode), Facts { uid: st.st_uid, gid: st.st_gid, mode: st.st_mode, size }))
}

fn kind_name(t: FileType) -> &'static str {
    match t {
        FileType::RegularFile => "a regular file",
        FileType::Directory => "a directory",
        FileType::Symlink => "a symbolic link",
        FileType::Fifo => "a FIFO",
        FileType::Socket => "a socket",
        FileType::CharacterDevice => "a character device",
        FileType::BlockDevice => "a block device",
        FileType::Unknown => "of an unknown kind",
    }
}

/// Group or others may write it (a directory: unless it is sticky, where
/// they cannot replace or remove what is not theirs).
fn writable_by_others(f: &Facts, dir: bool) -> bool {
    f.mode & 0o022 != 0 && !(dir && f.mode & 0o1000 != 0)
}

pub(crate) fn check_writable(path: &str, f: &Facts, dir: bool) -> Result<()> {
    if writable_by_others(f, dir) {
        return Err(ImageError::Unsafe(format!(
            "refusing {path}: group or others may write it (mode {:o}), so anyone of them could have changed the \
             image (chmod go-w)",
            f.mode & 0o7777
        )));
    }
    Ok(())
}

/// One file of an opened image: its descriptor and what `fstat` said.
#[derive(Debug)]
pub struct ImageFile {
    name: String,
    path: String,
    file: File,
    facts: Facts,
}

impl ImageFile {
    pub fn name(&self) -> &str {
        &self.name
    }
    /// Its path, for messages.
    pub fn path(&self) -> &str {
        &self.path
    }
    pub fn file(&self) -> &File {
        &self.file
    }
    pub fn into_file(self) -> File {
        self.file
    }
    /// Its size when it was opened.
    pub fn size(&self) -> u64 {
        self.facts.size
    }
    pub fn facts(&self) -> Facts {
        self.facts
    }

    /// The whole file, as it was when opened: never more than its size at
    /// open nor more than `cap` bytes.
    pub fn read_all(&self, cap: u64) -> Result<Vec<u8>> {
        let size = self.facts.size;
        if size > cap {
            return Err(ImageError::Corrupt(format!("{} is {size} bytes, over the {cap}-byte limit", self.path)));
        }
        let len = usize::try_from(size).map_err(|_| ImageError::Corrupt(format!("{} is too large", self.path)))?;
        let mut buf = vec![0u8; len];
        self.file.read_exact_at(&mut buf, 0).map_err(|e| match e.kind() {
            ErrorKind::UnexpectedEof => {
                ImageError::Truncated(format!("{} became shorter than its {size} bytes while read", self.path))
            }
            _ => ImageError::io(&self.path, e),
        })?;
        Ok(buf)
    }
}

/// An image directory opened once, its manifest read (not yet parsed) and
/// its owner known.
#[derive(Debug)]
pub struct ImageDir {
    path: PathBuf,
    dir: OwnedFd,
    owner: ImageOwner,
    manifest: ImageFile,
    manifest_bytes: Vec<u8>,
    /// The key it is opened with (a sealed image needs it; a plain one
    /// refuses it).
    key: Option<std::sync::Arc<crate::ImageKey>>,
}

impl ImageDir {
    /// Open the image in `path`: the directory, then its manifest, whose
    /// bytes are read once. Refuses a manifest that is not a regular file,
    /// an image of two users, and one that others may write.
    pub fn open(path: &Path) -> Result<ImageDir> {
        let shown = path.display().to_string();
        let flags = OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC;
        let dir = rustix::fs::open(path, flags, Mode::empty()).map_err(|e| match e {
            rustix::io::Errno::NOENT => ImageError::Missing(shown.clone()),
            rustix::io::Errno::NOTDIR => ImageError::NotAnImage(format!("{shown} is not a directory")),
            e => ImageError::io(&shown, e.into()),
        })?;
        let (_, dir_facts) = facts(&dir, &shown)?;
        check_writable(&shown, &dir_facts, true)?;
        let manifest = match open_in(&dir, &shown, MANIFEST_FILE)? {
            Some(f) => f,
            None if exists(&dir, INCOMPLETE_MARKER) => {
                return Err(ImageError::NotAnImage(format!(
                    "{shown} holds an interrupted checkpoint (it has no manifest); a new checkpoint into it \
                     cleans it up"
                )))
            }
            None => {
                return Err(ImageError::NotAnImage(format!(
                    "{shown} has no manifest (an incomplete or foreign directory)"
                )))
            }
        };
        let owner = decide_owner(&shown, &dir_facts, &manifest)?;
        let manifest_bytes = manifest.read_all(MAX_BODY + HEADER_LEN as u64)?;
        Ok(ImageDir { path: path.to_path_buf(), dir, owner, manifest, manifest_bytes, key: None })
    }

    /// Open the image with `key` (its manifest, chunks and files).
    pub fn with_key(mut self, key: Option<std::sync::Arc<crate::ImageKey>>) -> ImageDir {
        self.key = key;
        self
    }

    pub fn key(&self) -> Option<&std::sync::Arc<crate::ImageKey>> {
        self.key.as_ref()
    }

    /// The manifest header's facts (format version, sealed), readable
    /// without the key.
    pub fn header(&self) -> Result<crate::manifest::Header> {
        crate::manifest::header(&self.manifest_bytes)
    }

    /// What files the image has and where its store chunks are, readable
    /// without the key (see [`crate::manifest::Outline`]).
    pub fn outline(&self) -> Result<crate::manifest::Outline> {
        crate::manifest::outline(&self.manifest_bytes)
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Whose image this is, from the directory's and the manifest's owners.
    pub fn owner(&self) -> ImageOwner {
        self.owner
    }

    /// Bytes of the manifest (as read at open).
    pub fn manifest_len(&self) -> u64 {
        self.manifest.size()
    }

    /// The manifest's bytes as read at open.
    pub fn manifest_bytes(&self) -> &[u8] {
        &self.manifest_bytes
    }

    /// BLAKE3 of the manifest's bytes: the image's identity for its
    /// children (`ParentLink::manifest_hash`) and its tracking.
    pub fn manifest_hash(&self) -> [u8; 32] {
        *blake3::hash(&self.manifest_bytes).as_bytes()
    }

    /// Parse and validate the manifest read at open (nothing is read
    /// again), opened with the image's key.
    pub fn manifest(&self) -> Result<Manifest> {
        crate::decode_manifest_keyed(&self.manifest_bytes, self.key.as_deref())
    }

    /// Open the image's file `name` (a plain name): a regular file, owned
    /// by root or by the image's owner, that others may not write.
    pub fn open_file(&self, name: &str) -> Result<ImageFile> {
        self.open_optional(name)?
            .ok_or_else(|| ImageError::Truncated(format!("{} is missing", self.path.join(name).display())))
    }

    /// Like [`open_file`](Self::open_file), but a file that does not exist
    /// is `None`.
    pub fn open_optional(&self, name: &str) -> Result<Option<ImageFile>> {
        if name.is_empty() || name.contains('/') || name.starts_with('.') || name.contains('\0') {
            return Err(ImageError::Corrupt(format!("file name {name:?} is not a plain file name")));
        }
        let Some(f) = open_in(&self.dir, &self.path.display().to_string(), name)? else { return Ok(None) };
        let admitted = f.facts.uid == 0 || matches!(self.owner, ImageOwner::User { uid, .. } if uid == f.facts.uid);
        if !admitted {
            return Err(ImageError::Unsafe(format!(
                "refusing {}: it is owned by uid {}, but the image (its directory and manifest) belongs to {}",
                f.path, f.facts.uid, self.owner
            )));
        }
        Ok(Some(f))
    }

    /// Open every page pack the manifest names, wherever it lives (see
    /// [`crate::chain`]), each at least as large as the manifest says.
    pub fn packs(&self, m: &Manifest) -> Result<crate::store::PackReader> {
        crate::chain::open_packs(self, m)
    }
}

/// Does `name` exist in `dir` (not following a link)?
pub(crate) fn exists(dir: &OwnedFd, name: &str) -> bool {
    rustix::fs::statat(dir, name, AtFlags::SYMLINK_NOFOLLOW).is_ok()
}

/// Open `name` in `dir` as a regular file that others may not write;
/// `None` if it does not exist.
pub(crate) fn open_in(dir: &OwnedFd, shown: &str, name: &str) -> Result<Option<ImageFile>> {
    let path = format!("{}/{name}", shown.trim_end_matches('/'));
    let flags = OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::NONBLOCK | OFlags::NOCTTY | OFlags::CLOEXEC;
    let fd = match rustix::fs::openat(dir, name, flags, Mode::empty()) {
        Ok(fd) => fd,
        Err(rustix::io::Errno::NOENT) => return Ok(None),
        Err(e) => {
            // Say what it is (a link, a socket...) when that is why.
            if let Ok(st) = rustix::fs::statat(dir, name, AtFlags::SYMLINK_NOFOLLOW) {
                let t = FileType::from_raw_mode(st.st_mode);
                if t != FileType::RegularFile {
                    return Err(not_regular(&path, t));
                }
            }
            return Err(ImageError::io(path, e.into()));
        }
    };
    let (t, f) = facts(&fd, &path)?;
    if t != FileType::RegularFile {
        return Err(not_regular(&path, t));
    }
    check_writable(&path, &f, false)?;
    Ok(Some(ImageFile { name: name.to_string(), path, file: File::from(fd), facts: f }))
}

fn not_regular(path: &str, t: FileType) -> ImageError {
    ImageError::Unsafe(format!("refusing {path}: it is {}, not a regular file", kind_name(t)))
}

/// The owner of an image from its directory and manifest.
fn decide_owner(shown: &str, dir: &Facts, manifest: &ImageFile) -> Result<ImageOwner> {
    let m = manifest.facts;
    match (dir.uid, m.uid) {
        (0, 0) => Ok(ImageOwner::Root),
        (0, u) => Ok(ImageOwner::User { uid: u, gid: m.gid }),
        (u, 0) => Ok(ImageOwner::User { uid: u, gid: dir.gid }),
        (a, b) if a == b => Ok(ImageOwner::User { uid: a, gid: m.gid }),
        (a, b) => Err(ImageError::Unsafe(format!(
            "refusing {shown}: the directory belongs to uid {a} and its manifest to uid {b}; an image has one owner"
        ))),
    }
}
