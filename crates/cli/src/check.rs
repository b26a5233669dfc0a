//! `cryopod check --image`: could this machine, and this caller, restore
//! the image? It opens and verifies the image as a restore does (owner,
//! manifest, every pack and chunk hash, a pod's files), then says what is
//! damaged, what the image asks for beyond its owner, which privilege the
//! caller lacks, and whether this kernel and CPU can run it. The damage
//! report is shared with `inspect`. A sealed image needs its key
//! (`--key`), and every chunk and file is then authenticated too.

use anyhow::{Context, Result};
use cryopod_engine::{privilege, restore, trust};
use cryopod_image::{ImageDir, ImageKey, Manifest, ObjectOrigin};
use std::path::Path;
use std::sync::Arc;

/// Open the image with `key` (a sealed image needs it) and parse its
/// manifest (errors name the directory).
pub fn open(path: &Path, key: Option<Arc<ImageKey>>) -> Result<(ImageDir, Manifest)> {
    let img = ImageDir::open(path).with_context(|| format!("cannot read image {}", path.display()))?.with_key(key);
    let m = img.manifest().with_context(|| format!("cannot read image {}", path.display()))?;
    Ok((img, m))
}

/// Everything damaged in the image, one sentence each: packs that are
/// missing, short or not regular files, chunks failing their hash (with
/// the processes and areas that use them), a pod's damaged files.
pub fn damage(img: &ImageDir, m: &Manifest) -> Vec<String> {
    let mut out = Vec::new();
    for p in m.packs.iter().filter(|p| p.home == cryopod_image::PackHome::Own) {
        match img.open_file(&p.name) {
            Ok(f) if f.size() < p.size => {
                out.push(format!("pack {} is truncated: it has {} of {} bytes", p.name, f.size(), p.size))
            }
            Ok(_) => {}
            Err(e) => out.push(format!("pack {}: {:#}", p.name, anyhow::Error::from(e))),
        }
    }
    if out.is_empty() {
        match img.packs(m) {
            Ok(reader) => {
                for d in reader.damage(m, crate::cpus()) {
                    out.push(format!(
                        "page chunk {} in {} at offset {} {} (used by {})",
                        d.chunk,
                        d.pack,
                        d.offset,
                        d.problem,
                        chunk_users(m, d.chunk)
                    ));
                }
            }
            Err(e) => out.push(format!("{:#}", anyhow::Error::from(e))),
        }
    } else {
        out.push("page chunks were not checked (a pack is unusable)".into());
    }
    if let Some(pod) = &m.pod {
        if let Err(e) = cryopod_pod::snapshot::check_files(img, pod) {
            out.push(format!("{:#}", anyhow::Error::from(e)));
        }
    }
    out
}

/// Who uses chunk `id`: processes and areas, or memory objects.
fn chunk_users(m: &Manifest, id: usize) -> String {
    let id = u32::try_from(id).ok();
    let mut users = Vec::new();
    for p in &m.processes {
        for v in &p.vmas {
            if v.runs.iter().any(|r| r.chunk.is_some() && r.chunk == id) {
                let name = if v.name.is_empty() { String::new() } else { format!(" {}", v.name) };
                users.push(format!("process {} area {:x}-{:x}{name}", p.pid, v.start, v.end));
            }
        }
    }
    for (i, o) in m.objects.iter().enumerate() {
        if o.runs.iter().any(|r| r.chunk.is_some() && r.chunk == id) {
            let what = match &o.origin {
                ObjectOrigin::Memfd { name, .. } => format!("memfd {name}"),
                ObjectOrigin::Deleted { path, .. } => format!("deleted file {path}"),
                ObjectOrigin::SharedAnon => "shared memory".to_string(),
            };
            users.push(format!("memory object {i} ({what})"));
        }
    }
    if users.is_empty() {
        return "nothing".into();
    }
    let more = users.len().saturating_sub(3);
    users.truncate(3);
    if more > 0 {
        users.push(format!("{more} more"));
    }
    users.join(", ")
}

pub fn run(path: &Path, key: Option<Arc<ImageKey>>) -> Result<i32> {
    let (img, m) = open(path, key)?;
    let mut problems = Vec::new();
    if let Some(owner) = trust::owner_of(img.owner()) {
        if let Err(e) = trust::check(&m, &owner) {
            problems.push(format!("{:#}", anyhow::Error::from(e)));
        }
    }
    problems.extend(damage(&img, &m));
    problems.extend(privilege::missing(&m));
    if let Err(e) = restore::preflight(&m, "") {
        problems.push(format!("this machine cannot restore the image: {:#}", anyhow::Error::from(e)));
    }
    if problems.is_empty() {
        println!("ok: this kernel and CPU can restore {}", path.display());
        return Ok(0);
    }
    for p in &problems {
        eprintln!("cryopod: {p}");
    }
    anyhow::bail!("{} cannot be restored here ({} problems, listed above)", path.display(), problems.len())
}
