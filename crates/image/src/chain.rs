//! What an image builds on, and how its packs are found: its own
//! directory, the images of its parent chain (an incremental checkpoint,
//! `--parent`), and a shared store (`--store`, see [`crate::shared`]).
//!
//! Reading ([`open_packs`]): every parent is opened like the image itself
//! (one descriptor, no links, the same owner) and must still have the very
//! manifest the child was made on (its BLAKE3 is in the child's link), so
//! a parent replaced or changed since is refused, never read. A store must
//! have the identity recorded in the image and the image's owner.
//!
//! Writing ([`Base`]): the chunks the parent chain and the store already
//! hold are known by hash before the tree is frozen; a checkpoint then
//! writes only the others and names the known ones where they are.

use crate::shared::{Lock, Store};
use crate::store::{DigestMap, PackReader};
use crate::MAX_CHAIN;
use crate::{Chunk, ImageDir, ImageError, ImageOwner, Manifest, Pack, PackHome, ParentLink, Result, StoreLink};
use std::path::{Path, PathBuf};

/// Open every pack `m` (the manifest of `img`) names, wherever it lives,
/// each at least as large as recorded. A store's lock is held (shared)
/// as long as the reader lives.
pub fn open_packs(img: &ImageDir, m: &Manifest) -> Result<PackReader> {
    let ancestors = ancestors(img, m, m.chain_depth())?;
    let store = match m.packs.iter().any(|p| p.home == PackHome::Store) {
        true => Some(open_store(m.store.as_ref(), img.owner(), &img.path().display().to_string())?),
        false => None,
    };
    let mut files = Vec::with_capacity(m.packs.len());
    for p in &m.packs {
        let f = match (p.home, &store) {
            (PackHome::Own, _) => img.open_file(&p.name)?,
            (PackHome::Parent(d), _) => {
                let a = ancestors.get(d as usize - 1).ok_or_else(|| ImageError::Corrupt("parent chain".into()))?;
                a.open_file(&p.name)?
            }
            (PackHome::Store, Some(s)) => s.open_pack(&p.name)?,
            (PackHome::Store, None) => return Err(ImageError::Corrupt("a store pack without a store".into())),
        };
        if f.size() < p.size {
            return Err(ImageError::Truncated(format!("{} has {} of {} bytes", f.path(), f.size(), p.size)));
        }
        files.push((f.path().to_string(), f.into_file()));
    }
    Ok(PackReader::new(files, store, img.key().cloned()))
}

/// A parent linked as a sibling (`../NAME`, see
/// [`Base::link_as_sibling`]): its name.
pub fn sibling_name(link: &str) -> Option<&str> {
    link.strip_prefix("../")
        .filter(|n| !n.is_empty() && n.len() < 256 && !n.contains(['/', '\0']) && *n != "." && *n != "..")
}

/// Where the parent `link` of the image at `child` is: an absolute path
/// as is, a sibling's beside the child.
fn parent_path(child: &str, link: &str) -> PathBuf {
    match sibling_name(link) {
        Some(name) => Path::new(child).parent().unwrap_or(Path::new("/")).join(name),
        None => PathBuf::from(link),
    }
}

/// The first `depth` images up the parent chain of `img`, each checked
/// against the link that names it.
fn ancestors(img: &ImageDir, m: &Manifest, depth: u32) -> Result<Vec<ImageDir>> {
    let mut out: Vec<ImageDir> = Vec::new();
    let mut link = m.parent.clone();
    let mut child = img.path().display().to_string();
    for d in 1..=depth.min(MAX_CHAIN) {
        let l = link.ok_or_else(|| {
            ImageError::Corrupt(format!("{child} names packs {d} images up its chain, but has no parent"))
        })?;
        // A chain is sealed under one key, or not at all.
        let path = parent_path(&child, &l.path);
        let shown = path.display().to_string();
        let dir = ImageDir::open(&path).map_err(|e| parent_error(&child, &shown, e))?.with_key(img.key().cloned());
        same_owner(&format!("parent image {shown} of {child}"), dir.owner(), img.owner(), "the image")?;
        if dir.manifest_hash() != l.manifest_hash {
            return Err(ImageError::Corrupt(format!(
                "parent image {shown} of {child} has changed since {child} was made on it"
            )));
        }
        link = match d < depth {
            true => dir.manifest()?.parent,
            false => None,
        };
        child = shown;
        out.push(dir);
    }
    Ok(out)
}

fn parent_error(child: &str, parent: &str, e: ImageError) -> ImageError {
    match e {
        ImageError::Missing(_) => {
            ImageError::Truncated(format!("{child} was made on image {parent}, which is gone (it needs its chunks)"))
        }
        e => ImageError::Corrupt(format!("parent image {parent} of {child}: {e}")),
    }
}

/// Open the store `link` names, check its identity and owner, and hold
/// its lock shared.
fn open_store(link: Option<&StoreLink>, owner: ImageOwner, who: &str) -> Result<Store> {
    let l = link.ok_or_else(|| ImageError::Corrupt(format!("{who} names store packs but no store")))?;
    let s = Store::open(Path::new(&l.path), false, Lock::Shared).map_err(|e| match e {
        ImageError::Missing(_) => {
            ImageError::Truncated(format!("{who} keeps chunks in store {}, which is gone", l.path))
        }
        e => e,
    })?;
    if s.id() != l.store_id {
        return Err(ImageError::Corrupt(format!(
            "{} is not the store {who} was made with (another store identity)",
            l.path
        )));
    }
    same_owner(&format!("store {} for {who}", l.path), s.owner(), owner, "the image")?;
    Ok(s)
}

/// What a chain or a store holds becomes an image's memory: it must be
/// its owner's. Refuses `what` otherwise, saying whose each is (`whose`:
/// which image `owner` is of).
fn same_owner(what: &str, theirs: ImageOwner, owner: ImageOwner, whose: &str) -> Result<()> {
    match theirs.uid() == owner.uid() {
        true => Ok(()),
        false => Err(ImageError::Unsafe(format!("refusing {what}: it belongs to {theirs}, {whose} to {owner}"))),
    }
}

/// The chunks a store at a migration's destination holds, as that host
/// described them (`cryopod serve --store`): what the source's checkpoint
/// need not send. Untrusted like any peer input: a record that names a
/// pack not listed fails the checkpoint, and the destination checks every
/// chunk's hash as it reads it.
#[derive(Debug, Clone)]
pub struct FarStore {
    /// The store's absolute path and identity there.
    pub path: String,
    pub store_id: [u8; 16],
    /// Its packs (homed in the store).
    pub packs: Vec<Pack>,
    /// Its chunks by hash (`pack` indexes `packs`).
    pub known: std::sync::Arc<DigestMap<Chunk>>,
}

/// Open `p`, the parent of a new image made by `owner` (sealed under
/// `key`, or plain), and if `whole`, check it is (every pack there and
/// long enough: its chunks will be the child's; their contents are
/// checked at every restore, since hashing gigabytes here would cost each
/// incremental checkpoint what it saves); returns it, its manifest and
/// the link to record.
fn open_parent(
    p: &Path,
    owner: ImageOwner,
    key: Option<&std::sync::Arc<crate::ImageKey>>,
    whole: bool,
) -> Result<(ImageDir, Manifest, ParentLink)> {
    let dir = ImageDir::open(p)?.with_key(key.cloned());
    same_owner(&format!("parent image {}", p.display()), dir.owner(), owner, "the new image")?;
    let m = dir.manifest()?;
    if whole {
        drop(open_packs(&dir, &m)?);
    }
    let path = std::fs::canonicalize(p).map_err(|e| ImageError::io(p.display(), e))?;
    let path = path.to_str().ok_or_else(|| ImageError::Corrupt("parent path is not UTF-8".into()))?;
    let link = ParentLink { path: path.to_string(), manifest_hash: dir.manifest_hash() };
    Ok((dir, m, link))
}

/// What a new checkpoint builds on: the chunks its parent chain and its
/// store hold, known by hash, and the links to record.
pub struct Base {
    pub parent: Option<ParentLink>,
    pub store: Option<(Store, StoreLink)>,
    /// A store at a migration's destination ([`FarStore`]): named, not
    /// opened here, never written.
    pub far: Option<StoreLink>,
    /// Packs the known chunks live in (homed as the new image sees them).
    pub packs: Vec<Pack>,
    /// The parent's manifest (what a tracked checkpoint takes pages from).
    pub parent_manifest: Option<Manifest>,
    /// Per chunk of the parent's manifest: its known record (`pack`
    /// indexing `packs`), if it is known. A tracked checkpoint names the
    /// parent's chunks through this, without looking up their hashes.
    pub parent_chunks: Vec<Option<Chunk>>,
    /// Known chunks; `pack` indexes `packs`.
    pub known: std::sync::Arc<DigestMap<Chunk>>,
}

impl Base {
    /// For a checkpoint into `image`, made by `owner`, on the image
    /// `parent` and/or into the store `store` (made if missing), sealed
    /// under `key` if there is one. The parent's own chain must be whole
    /// (and sealed under the same key, or plain like its child); a parent
    /// kept in a store puts its child in the same store.
    pub fn open(
        image: &Path,
        owner: ImageOwner,
        (parent, store): (Option<&Path>, Option<&Path>),
        key: Option<&std::sync::Arc<crate::ImageKey>>,
    ) -> Result<Base> {
        let abs = |p: &Path| -> Result<PathBuf> { std::path::absolute(p).map_err(|e| ImageError::io(p.display(), e)) };
        let mut base = Base {
            parent: None,
            store: None,
            far: None,
            packs: Vec::new(),
            known: Default::default(),
            parent_manifest: None,
            parent_chunks: Vec::new(),
        };
        let parent_img = parent.map(|p| open_parent(p, owner, key, true)).transpose()?;
        base.parent = parent_img.as_ref().map(|(_, _, l)| l.clone());
        let parent_img = parent_img.map(|(d, m, _)| (d, m));
        let inherited = parent_img.as_ref().and_then(|(_, m)| m.store.clone());
        let store_path = match (store, &inherited) {
            (Some(s), _) => Some(abs(s)?),
            (None, Some(l)) => Some(PathBuf::from(&l.path)),
            (None, None) => None,
        };
        if let Some(sp) = store_path {
            let s = Store::open(&sp, true, Lock::Shared)?;
            if let Some(l) = inherited.as_ref().filter(|l| l.store_id != s.id()) {
                return Err(ImageError::Unsafe(format!(
                    "the parent image keeps its chunks in store {}, not in {}: a chain stays in one store",
                    l.path,
                    sp.display()
                )));
            }
            same_owner(&format!("store {}", sp.display()), s.owner(), owner, "the new image")?;
            let (packs, mut known) = s.known()?;
            // The store may hold chunks of images with other keys, or
            // none: their hashes are keyed otherwise (or not at all), so
            // they never match ours; only chunks sealed (or plain) like
            // ours are taken, so that no image names another's kind.
            known.retain(|_, c| c.codec.is_sealed() == key.is_some());
            base.packs = packs;
            base.known = std::sync::Arc::new(known);
            let image_id = crate::shared::random_id()?;
            s.add_root(&image_id, &abs(image)?)?;
            let path = sp.to_str().ok_or_else(|| ImageError::Corrupt("store path is not UTF-8".into()))?;
            let link = StoreLink { path: path.to_string(), store_id: s.id(), image_id };
            base.store = Some((s, link));
        }
        if let Some((_, m)) = parent_img {
            base.add_parent_chunks(&m)?;
            base.parent_manifest = Some(m);
        }
        Ok(base)
    }

    /// For a checkpoint made by `owner` (on the image `parent` if there is
    /// one) whose chunks `far` holds already, at the destination of a
    /// migration: they are named in the new image, never written; the
    /// others go in its own packs. Plain images only (a
    /// migration's are sealed by its link, not by a key).
    pub fn far(owner: ImageOwner, parent: Option<&Path>, far: &FarStore) -> Result<Base> {
        let mut base = Base {
            parent: None,
            store: None,
            far: Some(StoreLink {
                path: far.path.clone(),
                store_id: far.store_id,
                image_id: crate::shared::random_id()?,
            }),
            packs: far.packs.clone(),
            known: far.known.clone(),
            parent_manifest: None,
            parent_chunks: Vec::new(),
        };
        if let Some(p) = parent {
            // (Made here just before, by this move: its store's packs are
            // at the destination, not here to be looked at.)
            let (_, m, link) = open_parent(p, owner, None, false)?;
            if m.store.as_ref().is_some_and(|s| s.store_id != far.store_id) {
                return Err(ImageError::Unsafe(format!(
                    "the parent image {} keeps its chunks in another store than the destination's",
                    p.display()
                )));
            }
            base.parent = Some(link);
            base.add_parent_chunks(&m)?;
            base.parent_manifest = Some(m);
        }
        Ok(base)
    }

    /// The store the new image names, here or at a migration's
    /// destination.
    pub fn store_link(&self) -> Option<&StoreLink> {
        self.store.as_ref().map(|(_, l)| l).or(self.far.as_ref())
    }

    /// The parent's chunks, as its child sees their packs; a store's copy
    /// of a chunk wins.
    fn add_parent_chunks(&mut self, m: &Manifest) -> Result<()> {
        // Parent pack index -> index in `self.packs` (None: not reused).
        let mut remap: Vec<Option<u32>> = Vec::with_capacity(m.packs.len());
        for p in &m.packs {
            let home = match p.home {
                PackHome::Own => PackHome::Parent(1),
                PackHome::Parent(d) if d < MAX_CHAIN => PackHome::Parent(d + 1),
                PackHome::Parent(_) => {
                    return Err(ImageError::Unsafe(format!(
                        "the parent chain is {MAX_CHAIN} images long already: make a full checkpoint"
                    )))
                }
                // Not in the store's index (gc'd since?): not reused.
                PackHome::Store => {
                    remap.push(None);
                    continue;
                }
            };
            remap.push(Some(self.packs.len() as u32));
            self.packs.push(Pack { name: p.name.clone(), size: p.size, home });
        }
        let mut known = std::mem::take(&mut self.known);
        let known = std::sync::Arc::make_mut(&mut known);
        known.reserve(m.chunks.len());
        self.parent_chunks = Vec::with_capacity(m.chunks.len());
        for c in &m.chunks {
            let rec = match known.entry(c.hash) {
                std::collections::hash_map::Entry::Occupied(o) => Some(o.get().clone()),
                std::collections::hash_map::Entry::Vacant(v) => remap
                    .get(c.pack as usize)
                    .copied()
                    .flatten()
                    .map(|i| v.insert(Chunk { pack: i, ..c.clone() }).clone()),
            };
            self.parent_chunks.push(rec);
        }
        self.known = std::sync::Arc::new(std::mem::take(known));
        Ok(())
    }

    /// Record the parent as the new image's sibling (`../NAME`), not by
    /// its absolute path: a chain of images in one directory then moves
    /// as a whole (a live migration's rounds, rebuilt in another directory
    /// at the destination). The new image must go beside its parent.
    pub fn link_as_sibling(&mut self, image: &Path) -> Result<()> {
        let Some(l) = self.parent.as_mut() else { return Ok(()) };
        let parent = Path::new(&l.path);
        let image = std::path::absolute(image).map_err(|e| ImageError::io(image.display(), e))?;
        let name = parent.file_name().and_then(|n| n.to_str()).unwrap_or_default();
        let link = format!("../{name}");
        if parent.parent() != image.parent() || sibling_name(&link).is_none() {
            return Err(ImageError::Unsafe(format!(
                "{} is not beside its parent {}: it cannot name it as a sibling",
                image.display(),
                l.path
            )));
        }
        l.path = link;
        Ok(())
    }

    /// One line on what the checkpoint builds on.
    pub fn describe(&self) -> String {
        let mut parts = Vec::new();
        if let Some(p) = &self.parent {
            parts.push(format!("on parent {}", p.path));
        }
        if let Some((s, _)) = &self.store {
            parts.push(format!("in store {}", s.path().display()));
        }
        format!("{} ({} chunks known)", parts.join(", "), self.known.len())
    }
}
