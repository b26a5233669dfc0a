//! What a checkpoint builds on (`--parent`, `--store`) and `cryopod gc`:
//! the command-line side of `cryopod_image::chain` and `::shared`.

use anyhow::{Context, Result};
use cryopod_image::chain::Base;
use cryopod_image::shared::{Lock, Store};
use cryopod_image::{ImageKey, ImageOwner};
use std::path::Path;
use std::sync::Arc;

/// The base of a checkpoint into `output`, if it has one; opened (and the
/// store's lock taken) before anything is frozen. A parent is opened with
/// the new image's key.
pub fn open_base(
    output: &Path,
    (parent, store): (Option<&Path>, Option<&Path>),
    stream: bool,
    key: Option<&Arc<ImageKey>>,
) -> Result<Option<Base>> {
    if parent.is_none() && store.is_none() {
        return Ok(None);
    }
    anyhow::ensure!(
        !stream,
        "--parent and --store cannot go with -o -: a stream carries a whole image (checkpoint into a directory, then \
         export it)"
    );
    let owner = ImageOwner::current();
    let what = match (parent, store) {
        (Some(p), _) => format!("parent image {}", p.display()),
        (None, Some(s)) => format!("store {}", s.display()),
        (None, None) => unreachable!("checked above"),
    };
    let base = Base::open(output, owner, (parent, store), key).with_context(|| format!("cannot build on {what}"))?;
    Ok(Some(base))
}

/// `cryopod gc --store DIR`.
pub fn gc(dir: &Path) -> Result<i32> {
    let store =
        Store::open(dir, false, Lock::Exclusive).with_context(|| format!("cannot open store {}", dir.display()))?;
    let r = store.gc().with_context(|| format!("gc of store {}", dir.display()))?;
    for p in &r.dropped {
        eprintln!("image {p} is gone: the chunks no other image uses are freed");
    }
    eprintln!(
        "gc: {} images keep {} chunks ({}); freed {} chunks ({}), removed {} packs",
        r.live,
        r.chunks_kept,
        crate::human(r.bytes_kept),
        r.chunks_freed,
        crate::human(r.bytes_freed),
        r.packs_removed
    );
    Ok(0)
}
