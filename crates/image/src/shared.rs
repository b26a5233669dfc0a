//! A chunk store shared by many images (`--store DIR`): the checkpoints of
//! a pod, of many pods, an incremental chain, each storing a chunk only if
//! no image in the store holds it yet. Images name the chunks they use by
//! pack and offset, as with their own packs ([`crate::PackHome::Store`]).
//!
//! Layout of `DIR` (every file and directory is the store owner's or
//! root's, and no one else may write it, as in an image):
//!
//! - `store-id`: 16 random bytes (hex), the store's identity, recorded in
//!   each image so that another store at the same path is refused.
//! - `lock`: `flock`ed shared by a checkpoint from the moment it loads the
//!   index until its manifest is written, and by a restore while it reads;
//!   exclusive by [`Store::gc`]. So gc never sees a checkpoint half done,
//!   and never frees a chunk a restore is reading.
//! - `packs/ID-W.pack`: append-only, one per writer thread of the
//!   checkpoint whose image id is ID.
//! - `index/ID-W.idx`: what that pack holds (hash, offset, sizes, codec),
//!   written once the pack is synced. A checkpoint loads every index
//!   first and stores only chunks none of them has.
//! - `roots/ID`: written before the checkpoint's first pack: the absolute
//!   path of its image. gc keeps the chunks of the images still found at
//!   their path with this store's and their own id in their manifest (its
//!   outline for a sealed image: gc needs no key), and
//!   punches the others' out of the packs (offsets never move, so no
//!   manifest needs rewriting), dropping packs no image needs any more.
//!
//! Two checkpoints running at once may both store a chunk new to the
//! store: each is stored once per checkpoint, not once per store.
//!
//! Images sealed under different keys, and plain ones, may share a store:
//! a sealed chunk's hash is keyed, so chunks of different keys (or none)
//! never share a hash and no image finds another's chunks (see
//! [`crate::seal`]); a checkpoint also takes from the index only chunks
//! sealed like its own.

use crate::dir::{check_writable, facts, open_in, ImageFile, ImageOwner};
use crate::{Chunk, Codec, ImageDir, ImageError, PackHome, Result};
use bincode::Options;
use rustix::fs::{AtFlags, FileType, FlockOperation, Mode, OFlags};
use serde::{Deserialize, Serialize};
use std::collections::HashSet;
use std::fs::File;
use std::io::Write;
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};

pub const STORE_ID_FILE: &str = "store-id";
const LOCK_FILE: &str = "lock";
const SUBDIRS: [&str; 3] = ["packs", "index", "roots"];
const INDEX_MAGIC: [u8; 8] = *b"CRYOPODX";
const INDEX_VERSION: u32 = 1;
/// Largest index file read (bounds its allocations).
const MAX_INDEX: u64 = 256 << 20;
const INDEX_HEADER: usize = 8 + 4 + 4 + 8 + 32;

/// How the store's lock is held.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Lock {
    /// Checkpoints and restores.
    Shared,
    /// gc.
    Exclusive,
}

/// One chunk a store pack holds.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct IndexEntry {
    /// As in [`Chunk::hash`]: keyed for a sealed chunk, so entries of
    /// different keys (or none) never share a hash.
    #[serde(with = "crate::records::digest_words")]
    pub hash: [u8; 32],
    pub offset: u64,
    pub len: u32,
    /// Sealed or not, as in the chunk records ([`Codec::stored_ok`]).
    pub codec: Codec,
    pub stored: u32,
}

/// The index of one store pack.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct PackIndex {
    pub pack: String,
    /// The pack's size once written.
    pub size: u64,
    pub entries: Vec<IndexEntry>,
}

impl PackIndex {
    /// The entries as chunk records naming pack `pack`.
    pub fn chunks(&self, pack: u32) -> impl Iterator<Item = Chunk> + '_ {
        self.entries.iter().map(move |e| Chunk {
            hash: e.hash,
            pack,
            offset: e.offset,
            len: e.len,
            codec: e.codec,
            stored: e.stored,
        })
    }

    fn validate(&self, name: &str) -> Result<()> {
        let bad = |why: String| Err(ImageError::Corrupt(format!("store index {name}: {why}")));
        if !pack_name_ok(&self.pack) {
            return bad(format!("pack name {:?} is not a plain .pack name", self.pack));
        }
        for e in &self.entries {
            if !crate::chunk_len_ok(e.len) || !e.codec.stored_ok(e.len, e.stored) {
                return bad(format!("a chunk of {} bytes stored in {}", e.len, e.stored));
            }
            if e.offset.checked_add(u64::from(e.stored)).is_none_or(|end| end > self.size) {
                return bad("a chunk beyond the end of its pack".into());
            }
        }
        Ok(())
    }
}

/// Packs, and chunks by hash naming them (see [`Store::known`]).
pub type Known = (Vec<crate::Pack>, crate::store::DigestMap<Chunk>);

/// What [`Store::gc`] did.
#[derive(Debug, Clone, Default)]
pub struct GcReport {
    /// Images whose chunks were kept.
    pub live: usize,
    /// Images no longer found (their paths): their own chunks went.
    pub dropped: Vec<String>,
    pub chunks_freed: u64,
    pub bytes_freed: u64,
    pub packs_removed: usize,
    /// Chunks and bytes still held.
    pub chunks_kept: u64,
    pub bytes_kept: u64,
}

/// An opened store, its lock held until it is dropped.
pub struct Store {
    path: PathBuf,
    dirs: [OwnedFd; 3],
    id: [u8; 16],
    owner: ImageOwner,
    lock: Lock,
    _lock: File,
}

pub fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

fn unhex16(s: &str) -> Option<[u8; 16]> {
    let s = s.trim();
    if s.len() != 32 || !s.is_ascii() {
        return None;
    }
    let mut out = [0u8; 16];
    for (i, o) in out.iter_mut().enumerate() {
        *o = u8::from_str_radix(s.get(2 * i..2 * i + 2)?, 16).ok()?;
    }
    Some(out)
}

/// 16 random bytes (store and image identities).
pub fn random_id() -> Result<[u8; 16]> {
    let mut id = [0u8; 16];
    let mut got = 0;
    while got < id.len() {
        got += rustix::rand::getrandom(&mut id[got..], rustix::rand::GetRandomFlags::empty())
            .map_err(|e| ImageError::io("getrandom", e.into()))?;
    }
    Ok(id)
}

/// Is `name` the plain name of a store's pack (`ID-W.pack`, in `packs/`)?
pub fn pack_name_ok(name: &str) -> bool {
    plain(name) && name.ends_with(".pack")
}

fn plain(name: &str) -> bool {
    !name.is_empty() && !name.contains('/') && !name.starts_with('.') && !name.contains('\0') && name.len() < 256
}

fn index_codec() -> impl Options {
    bincode::DefaultOptions::new().with_fixint_encoding().with_little_endian().with_limit(MAX_INDEX)
}

/// Serialize an index with its header (magic, version, length, BLAKE3).
pub fn encode_index(ix: &PackIndex) -> Result<Vec<u8>> {
    let body = index_codec().serialize(ix).map_err(|e| ImageError::Corrupt(format!("cannot encode index: {e}")))?;
    let mut out = Vec::with_capacity(INDEX_HEADER + body.len());
    out.extend_from_slice(&INDEX_MAGIC);
    out.extend_from_slice(&INDEX_VERSION.to_le_bytes());
    out.extend_from_slice(&0u32.to_le_bytes());
    out.extend_from_slice(&(body.len() as u64).to_le_bytes());
    out.extend_from_slice(blake3::hash(&body).as_bytes());
    out.extend_from_slice(&body);
    Ok(out)
}

/// Parse and check an index file's bytes (`name` for messages).
pub fn decode_index(bytes: &[u8], name: &str) -> Result<PackIndex> {
    let bad = |why: &str| ImageError::Corrupt(format!("store index {name}: {why}"));
    if bytes.len() < INDEX_HEADER || bytes[..8] != INDEX_MAGIC {
        return Err(bad("not an index (bad magic or truncated header)"));
    }
    let version = u32::from_le_bytes(bytes[8..12].try_into().unwrap_or_default());
    if version != INDEX_VERSION {
        return Err(ImageError::Version { found: version, supported: INDEX_VERSION });
    }
    if bytes[12..16] != [0; 4] {
        return Err(bad("reserved header bytes are not zero"));
    }
    let len = u64::from_le_bytes(bytes[16..24].try_into().unwrap_or_default());
    let body = &bytes[INDEX_HEADER..];
    if body.len() as u64 != len {
        return Err(bad("its length does not match its header"));
    }
    if blake3::hash(body).as_bytes() != &bytes[24..56] {
        return Err(bad("checksum mismatch"));
    }
    let ix: PackIndex = index_codec().deserialize(body).map_err(|e| bad(&e.to_string()))?;
    ix.validate(name)?;
    Ok(ix)
}

impl Store {
    /// Open the store in `path` and take its lock; `create` makes what is
    /// missing (a new store, mode 0700) instead of refusing it.
    pub fn open(path: &Path, create: bool, lock: Lock) -> Result<Store> {
        let shown = path.display().to_string();
        if create {
            match rustix::fs::mkdir(path, Mode::from_raw_mode(0o700)) {
                Ok(()) | Err(rustix::io::Errno::EXIST) => {}
                Err(e) => return Err(ImageError::io(&shown, e.into())),
            }
        }
        let dir = rustix::fs::open(path, OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC, Mode::empty()).map_err(
            |e| match e {
                rustix::io::Errno::NOENT => ImageError::Missing(format!("store {shown}")),
                e => ImageError::io(&shown, e.into()),
            },
        )?;
        let (_, f) = facts(&dir, &shown)?;
        check_writable(&shown, &f, true)?;
        let owner = match f.uid {
            0 => ImageOwner::Root,
            uid => ImageOwner::User { uid, gid: f.gid },
        };
        let admit = |what: &str, uid: u32| -> Result<()> {
            match uid == 0 || matches!(owner, ImageOwner::User { uid: u, .. } if u == uid) {
                true => Ok(()),
                false => Err(ImageError::Unsafe(format!(
                    "refusing {what}: it is owned by uid {uid}, but the store belongs to {owner}"
                ))),
            }
        };
        let lock_flags = OFlags::RDWR | OFlags::NOFOLLOW | OFlags::CLOEXEC | OFlags::NONBLOCK;
        let lock_fd = match rustix::fs::openat(&dir, LOCK_FILE, lock_flags, Mode::empty()) {
            Err(rustix::io::Errno::NOENT) if create => {
                rustix::fs::openat(&dir, LOCK_FILE, lock_flags | OFlags::CREATE, Mode::from_raw_mode(0o600))
            }
            Err(rustix::io::Errno::NOENT) => {
                return Err(ImageError::NotAnImage(format!("{shown} is not a cryopod store (it has no lock file)")))
            }
            r => r,
        }
        .map_err(|e| ImageError::io(format!("{shown}/{LOCK_FILE}"), e.into()))?;
        let (t, lf) = facts(&lock_fd, LOCK_FILE)?;
        if t != FileType::RegularFile {
            return Err(ImageError::Unsafe(format!("refusing {shown}/{LOCK_FILE}: not a regular file")));
        }
        admit(&format!("{shown}/{LOCK_FILE}"), lf.uid)?;
        let op = match lock {
            Lock::Shared => FlockOperation::LockShared,
            Lock::Exclusive => FlockOperation::LockExclusive,
        };
        rustix::fs::flock(&lock_fd, op).map_err(|e| ImageError::io(format!("{shown}/{LOCK_FILE}"), e.into()))?;
        let mut dirs = Vec::new();
        for sub in SUBDIRS {
            let p = format!("{shown}/{sub}");
            if create {
                match rustix::fs::mkdirat(&dir, sub, Mode::from_raw_mode(0o700)) {
                    Ok(()) | Err(rustix::io::Errno::EXIST) => {}
                    Err(e) => return Err(ImageError::io(&p, e.into())),
                }
            }
            let flags = OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC;
            let fd = rustix::fs::openat(&dir, sub, flags, Mode::empty()).map_err(|e| match e {
                rustix::io::Errno::NOENT => {
                    ImageError::NotAnImage(format!("{shown} is not a cryopod store (no {sub})"))
                }
                e => ImageError::io(&p, e.into()),
            })?;
            let (_, sf) = facts(&fd, &p)?;
            check_writable(&p, &sf, true)?;
            admit(&p, sf.uid)?;
            dirs.push(fd);
        }
        let id = Self::read_or_make_id(&dir, &shown, create)?;
        let dirs: [OwnedFd; 3] = dirs.try_into().map_err(|_| ImageError::Corrupt("store directories".into()))?;
        Ok(Store { path: path.to_path_buf(), dirs, id, owner, lock, _lock: File::from(lock_fd) })
    }

    fn read_or_make_id(dir: &OwnedFd, shown: &str, create: bool) -> Result<[u8; 16]> {
        for _ in 0..2 {
            if let Some(f) = open_in(dir, shown, STORE_ID_FILE)? {
                let text = String::from_utf8(f.read_all(64)?).unwrap_or_default();
                return unhex16(&text)
                    .ok_or_else(|| ImageError::Corrupt(format!("{}: not a store identity", f.path())));
            }
            if !create {
                break;
            }
            // Written aside and linked in without replacing: two commands
            // making the store at once agree on one identity.
            let tmp = format!(".{STORE_ID_FILE}.{}", std::process::id());
            write_new(dir, &tmp, format!("{}\n", hex(&random_id()?)).as_bytes(), shown)?;
            let r = rustix::fs::renameat_with(dir, &tmp, dir, STORE_ID_FILE, rustix::fs::RenameFlags::NOREPLACE);
            let _ = rustix::fs::unlinkat(dir, &tmp, AtFlags::empty());
            match r {
                Ok(()) | Err(rustix::io::Errno::EXIST) => {}
                Err(e) => return Err(ImageError::io(format!("{shown}/{STORE_ID_FILE}"), e.into())),
            }
        }
        Err(ImageError::NotAnImage(format!("{shown} is not a cryopod store (it has no {STORE_ID_FILE})")))
    }

    pub fn id(&self) -> [u8; 16] {
        self.id
    }
    pub fn owner(&self) -> ImageOwner {
        self.owner
    }
    pub fn path(&self) -> &Path {
        &self.path
    }

    fn shown(&self, sub: usize, name: &str) -> String {
        format!("{}/{}/{name}", self.path.display(), SUBDIRS[sub])
    }

    fn open_sub(&self, sub: usize, name: &str) -> Result<Option<ImageFile>> {
        if !plain(name) {
            return Err(ImageError::Corrupt(format!("store file name {name:?} is not a plain file name")));
        }
        let shown = format!("{}/{}", self.path.display(), SUBDIRS[sub]);
        let Some(f) = open_in(&self.dirs[sub], &shown, name)? else { return Ok(None) };
        let uid = f.facts().uid;
        if uid != 0 && !matches!(self.owner, ImageOwner::User { uid: u, .. } if u == uid) {
            return Err(ImageError::Unsafe(format!(
                "refusing {}: it is owned by uid {uid}, but the store belongs to {}",
                f.path(),
                self.owner
            )));
        }
        Ok(Some(f))
    }

    /// Open store pack `name` for reading.
    pub fn open_pack(&self, name: &str) -> Result<ImageFile> {
        self.open_sub(0, name)?.ok_or_else(|| ImageError::Truncated(format!("{} is missing", self.shown(0, name))))
    }

    /// Create store pack `name` (never over an existing one); returns it
    /// and its path for messages.
    pub fn create_pack(&self, name: &str) -> Result<(File, String)> {
        let shown = self.shown(0, name);
        let flags = OFlags::WRONLY | OFlags::CREATE | OFlags::EXCL | OFlags::NOFOLLOW | OFlags::CLOEXEC;
        let fd = rustix::fs::openat(&self.dirs[0], name, flags, Mode::from_raw_mode(0o600))
            .map_err(|e| ImageError::io(&shown, e.into()))?;
        Ok((File::from(fd), shown))
    }

    /// Remove store pack `name` that a failed checkpoint wrote.
    pub fn remove_pack(&self, name: &str) -> Result<()> {
        self.remove(0, name)
    }

    /// Every pack index in the store.
    pub fn load_index(&self) -> Result<Vec<PackIndex>> {
        let mut out = Vec::new();
        for name in self.list(1)? {
            if !name.ends_with(".idx") {
                continue;
            }
            let Some(f) = self.open_sub(1, &name)? else { continue };
            let ix = decode_index(&f.read_all(MAX_INDEX)?, f.path())?;
            out.push(ix);
        }
        Ok(out)
    }

    /// Record what pack `ix.pack` holds (the pack synced first).
    pub fn write_index(&self, ix: &PackIndex) -> Result<()> {
        let name = ix.pack.trim_end_matches(".pack").to_string() + ".idx";
        self.replace(1, &name, &encode_index(ix)?)
    }

    /// Record image `image_id` at `path` (before any of its packs exist).
    pub fn add_root(&self, image_id: &[u8; 16], path: &Path) -> Result<()> {
        let p = path.to_str().filter(|p| p.starts_with('/')).ok_or_else(|| {
            ImageError::Corrupt(format!("image path {} is not an absolute UTF-8 path", path.display()))
        })?;
        self.replace(2, &hex(image_id), p.as_bytes())
    }

    /// Write `bytes` as `name` in subdirectory `sub`: aside, synced, then
    /// renamed over and the directory synced.
    fn replace(&self, sub: usize, name: &str, bytes: &[u8]) -> Result<()> {
        let tmp = format!(".{name}.tmp");
        let _ = rustix::fs::unlinkat(&self.dirs[sub], &tmp, AtFlags::empty());
        write_new(&self.dirs[sub], &tmp, bytes, &self.shown(sub, ""))?;
        rustix::fs::renameat(&self.dirs[sub], &tmp, &self.dirs[sub], name)
            .map_err(|e| ImageError::io(self.shown(sub, name), e.into()))?;
        rustix::fs::fsync(&self.dirs[sub]).map_err(|e| ImageError::io(self.shown(sub, ""), e.into()))
    }

    fn list(&self, sub: usize) -> Result<Vec<String>> {
        let err = |e: rustix::io::Errno| ImageError::io(self.shown(sub, ""), e.into());
        let fd = rustix::fs::openat(
            &self.dirs[sub],
            ".",
            OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
            Mode::empty(),
        )
        .map_err(err)?;
        let mut names = Vec::new();
        for e in rustix::fs::Dir::read_from(&fd).map_err(err)? {
            let e = e.map_err(err)?;
            let n = e.file_name().to_string_lossy().into_owned();
            if plain(&n) {
                names.push(n);
            }
        }
        names.sort();
        Ok(names)
    }

    fn remove(&self, sub: usize, name: &str) -> Result<()> {
        match rustix::fs::unlinkat(&self.dirs[sub], name, AtFlags::empty()) {
            Ok(()) | Err(rustix::io::Errno::NOENT) => Ok(()),
            Err(e) => Err(ImageError::io(self.shown(sub, name), e.into())),
        }
    }

    /// Remove the chunks no image of the store refers to (see the module
    /// comment). Needs the lock held exclusive. An image that is there but
    /// cannot be read stops gc before anything is removed: its chunks
    /// cannot be told apart.
    pub fn gc(&self) -> Result<GcReport> {
        if self.lock != Lock::Exclusive {
            return Err(ImageError::Unsafe("gc needs the store's lock held exclusive".into()));
        }
        let mut report = GcReport::default();
        let mut live: HashSet<(String, u64)> = HashSet::new();
        let mut dead_roots = Vec::new();
        for name in self.list(2)? {
            let Some(id) = unhex16(&name) else { continue };
            let Some(f) = self.open_sub(2, &name)? else { continue };
            let path = String::from_utf8(f.read_all(4096)?).unwrap_or_default();
            // The outline: what a sealed image tells without its key.
            let m = match ImageDir::open(Path::new(&path)) {
                Err(ImageError::Missing(_) | ImageError::NotAnImage(_)) => None,
                Err(e) => return Err(gc_stopped(&path, e)),
                Ok(img) => Some(img.outline().map_err(|e| gc_stopped(&path, e))?),
            };
            let m = m.filter(|m| m.store.as_ref().is_some_and(|s| s.image_id == id && s.store_id == self.id));
            match m {
                Some(m) => {
                    report.live += 1;
                    for (pack, offsets) in m.store_chunks {
                        live.extend(offsets.into_iter().map(|o| (pack.clone(), o)));
                    }
                }
                None => dead_roots.push((name, path)),
            }
        }
        let indexes = self.load_index()?;
        let indexed: HashSet<&str> = indexes.iter().map(|ix| ix.pack.as_str()).collect();
        for ix in &indexes {
            let (keep, drop): (Vec<_>, Vec<_>) =
                ix.entries.iter().cloned().partition(|e| live.contains(&(ix.pack.clone(), e.offset)));
            report.chunks_freed += drop.len() as u64;
            report.bytes_freed += drop.iter().map(|e| u64::from(e.stored)).sum::<u64>();
            report.chunks_kept += keep.len() as u64;
            report.bytes_kept += keep.iter().map(|e| u64::from(e.stored)).sum::<u64>();
            let idx_name = ix.pack.trim_end_matches(".pack").to_string() + ".idx";
            if keep.is_empty() {
                self.remove(0, &ix.pack)?;
                self.remove(1, &idx_name)?;
                report.packs_removed += 1;
            } else if !drop.is_empty() {
                self.punch(&ix.pack, &drop)?;
                self.write_index(&PackIndex { pack: ix.pack.clone(), size: ix.size, entries: keep })?;
            }
        }
        // Packs never indexed: left by a checkpoint that did not finish
        // (none is running: they hold the lock shared).
        for name in self.list(0)? {
            if name.ends_with(".pack") && !indexed.contains(name.as_str()) {
                self.remove(0, &name)?;
                report.packs_removed += 1;
            }
        }
        for (name, path) in dead_roots {
            self.remove(2, &name)?;
            report.dropped.push(path);
        }
        Ok(report)
    }

    /// Free the bytes of `dead` chunks in pack `name` without moving the
    /// others (offsets stay valid).
    fn punch(&self, name: &str, dead: &[IndexEntry]) -> Result<()> {
        let shown = self.shown(0, name);
        let fd =
            rustix::fs::openat(&self.dirs[0], name, OFlags::RDWR | OFlags::NOFOLLOW | OFlags::CLOEXEC, Mode::empty())
                .map_err(|e| ImageError::io(&shown, e.into()))?;
        let mode = rustix::fs::FallocateFlags::PUNCH_HOLE | rustix::fs::FallocateFlags::KEEP_SIZE;
        for e in dead {
            rustix::fs::fallocate(&fd, mode, e.offset, u64::from(e.stored))
                .map_err(|err| ImageError::io(&shown, err.into()))?;
        }
        rustix::fs::fsync(&fd).map_err(|e| ImageError::io(&shown, e.into()))
    }

    /// Chunks of every index, by hash, as records naming `packs` (returned
    /// alongside, homed in the store) — what a checkpoint into the store
    /// need not write again.
    pub fn known(&self) -> Result<Known> {
        let mut packs = Vec::new();
        let mut known = crate::store::DigestMap::default();
        for ix in self.load_index()? {
            let i = packs.len() as u32;
            for c in ix.chunks(i) {
                known.entry(c.hash).or_insert(c);
            }
            packs.push(crate::Pack { name: ix.pack, size: ix.size, home: PackHome::Store });
        }
        Ok((packs, known))
    }
}

fn gc_stopped(path: &str, e: ImageError) -> ImageError {
    ImageError::Unsafe(format!(
        "gc stopped before removing anything: image {path}, recorded in the store, cannot be read ({e}); move it \
         away or fix it"
    ))
}

/// Create `name` in `dir` (exclusively), write `bytes` and sync it.
fn write_new(dir: &OwnedFd, name: &str, bytes: &[u8], shown: &str) -> Result<()> {
    let flags = OFlags::WRONLY | OFlags::CREATE | OFlags::EXCL | OFlags::NOFOLLOW | OFlags::CLOEXEC;
    let fd = rustix::fs::openat(dir, name, flags, Mode::from_raw_mode(0o600))
        .map_err(|e| ImageError::io(format!("{shown}/{name}"), e.into()))?;
    let mut f = File::from(fd);
    f.write_all(bytes).and_then(|_| f.sync_all()).map_err(|e| ImageError::io(format!("{shown}/{name}"), e))
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Store({}, {})", self.path.display(), hex(&self.id))
    }
}
