//! What a checkpoint builds on (`--parent`, `--store`, `--track`) and
//! `cryopod gc`: the command-line side of `cryopod_image::chain` and
//! `::shared`, and of `cryopod_engine::track`.

use anyhow::{Context, Result};
use cryopod_engine::track::{hold, Tracker};
use cryopod_image::chain::Base;
use cryopod_image::shared::{Lock, Store};
use cryopod_image::{ImageKey, ImageOwner};
use std::path::Path;
use std::sync::{Arc, Mutex};

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

/// For `--track`: the tracking the parent's checkpoint left (taken from
/// its holder), or tracking armed now (the checkpoint then reads every
/// page, and the next one reads only what was written since).
pub fn take_tracking(
    state: &cryopod_pod::StateDir,
    pid: i32,
    parent: Option<&Path>,
    track: bool,
    leave_running: bool,
) -> Result<Option<Mutex<Tracker>>> {
    if !track {
        return Ok(None);
    }
    anyhow::ensure!(leave_running, "--track needs --leave-running: a tree that is killed has nothing left to track");
    if let Some(p) = parent {
        let img =
            cryopod_image::ImageDir::open(p).with_context(|| format!("cannot read parent image {}", p.display()))?;
        let socket = hold::socket_path(&state.root, &img.manifest_hash());
        match hold::take(&socket).with_context(|| format!("cannot take over the tracking of {}", p.display()))? {
            Some(t) if t.root() == pid => return Ok(Some(Mutex::new(t))),
            Some(_) => eprintln!("note: the tracking left by {} is of another tree: armed anew", p.display()),
            None => eprintln!(
                "note: no tracking is running for {} (made without --track, or the tree was restarted): every page is \
                 read",
                p.display()
            ),
        }
    }
    let t = Tracker::arm(pid).with_context(|| format!("cannot track the writes of pid {pid}"))?;
    Ok(Some(Mutex::new(t)))
}

/// After a `--track` checkpoint into `image`: tracking goes on in a
/// holder process until the next checkpoint on `image` takes it.
pub fn hold_tracking(state: &cryopod_pod::StateDir, t: Mutex<Tracker>, image: &Path) -> Result<()> {
    let mut t = t.into_inner().unwrap_or_else(|p| p.into_inner());
    // Processes new at the freeze, armed now that the tree runs.
    t.arm_pending().context("cannot track the processes new since the parent")?;
    let img = cryopod_image::ImageDir::open(image)?;
    let hash = img.manifest_hash();
    t.set_since(hash);
    let socket = hold::socket_path(&state.root, &hash);
    let exe = std::env::current_exe().context("cannot find the cryopod binary")?;
    let pid = hold::spawn(&exe, t, &socket).context("cannot keep tracking the tree")?;
    eprintln!(
        "tracking goes on (holder pid {pid}): `--parent {} --track` reads only the pages written since",
        image.display()
    );
    Ok(())
}
