//! What an image may ask for. An image is untrusted input: if it is owned by
//! a user other than root, restoring it (as root) must not give that user
//! anything: every process must run as the owner, with no capabilities and
//! only the owner's groups, and every file the restored tree gets is opened
//! with the owner's filesystem identity.

use crate::{EngineError, Result};
use cryopod_image::Manifest;
use std::os::unix::fs::MetadataExt;
use std::path::Path;

/// Who may be restored from an image: `None` for root-owned images
/// (anything), else the owner's uid, primary gid and groups.
#[derive(Debug, Clone)]
pub struct Owner {
    pub uid: u32,
    pub gid: u32,
    pub groups: Vec<u32>,
}

/// The owner of the image's manifest, unless it is root.
pub fn image_owner(dir: &Path) -> Result<Option<Owner>> {
    let md = std::fs::metadata(dir.join(cryopod_image::MANIFEST_FILE))
        .map_err(|e| EngineError::Other(format!("{}: {e}", dir.display())))?;
    if md.uid() == 0 {
        return Ok(None);
    }
    let mut groups = vec![md.gid()];
    groups.extend(groups_of(md.uid()));
    Ok(Some(Owner { uid: md.uid(), gid: md.gid(), groups }))
}

/// Supplementary groups of `uid` from /etc/passwd and /etc/group.
fn groups_of(uid: u32) -> Vec<u32> {
    let passwd = std::fs::read_to_string("/etc/passwd").unwrap_or_default();
    let Some((name, primary)) = passwd.lines().find_map(|l| {
        let f: Vec<&str> = l.split(':').collect();
        (f.len() > 3 && f[2].parse::<u32>().ok() == Some(uid)).then(|| (f[0].to_string(), f[3].parse::<u32>().ok()))
    }) else {
        return Vec::new();
    };
    let mut out: Vec<u32> = primary.into_iter().collect();
    for l in std::fs::read_to_string("/etc/group").unwrap_or_default().lines() {
        let f: Vec<&str> = l.split(':').collect();
        if f.len() > 3 && f[3].split(',').any(|m| m == name) {
            if let Ok(g) = f[2].parse() {
                out.push(g);
            }
        }
    }
    out
}

/// Refuse an image that asks for more than its owner has.
pub fn check_creds(m: &Manifest, owner: &Owner) -> Result<()> {
    for p in m.processes.iter().filter(|p| p.zombie_status.is_none()) {
        let c = &p.creds;
        let refuse = |what: String| {
            Err(EngineError::Other(format!(
                "image owned by uid {} asks for pid {} to run {what}; only root-owned images may do that",
                owner.uid, p.pid
            )))
        };
        if c.uids.iter().any(|&u| u != owner.uid) {
            return refuse(format!("as uids {:?}", c.uids));
        }
        if let Some(g) = c.gids.iter().chain(c.groups.iter()).find(|g| !owner.groups.contains(g)) {
            return refuse(format!("with group {g}"));
        }
        if c.cap_eff | c.cap_prm | c.cap_inh | c.cap_amb != 0 {
            return refuse("with capabilities".into());
        }
    }
    Ok(())
}
