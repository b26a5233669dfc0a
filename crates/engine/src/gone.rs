//! Files whose names are gone while the tree holds them (issue 11, class
//! 8): a FIFO or a directory removed while open, a working directory
//! removed under a process. At restore each is made again under its old
//! name (beside it when that name is taken now), opened or entered, and
//! its name removed again once the tree holds it, so that the tree sees
//! "<path> (deleted)" as before. Names made here are removed whatever
//! happens (on drop).

use crate::files::under;
use crate::{EngineError, Result};
use std::collections::HashMap;

/// The suffix /proc puts after the path of a file whose name is gone.
pub const DELETED: &str = " (deleted)";

/// What a removed name was: how to make it again.
#[derive(Clone, Copy)]
pub enum Kind {
    Fifo,
    Dir { mode: u32 },
}

/// Names made again for the restore, removed on drop.
#[derive(Default)]
pub struct Ghosts {
    /// (path as the tree knows it, where it was made here, kind): the
    /// first maps to the second.
    made: Vec<(String, String, Kind)>,
}

impl Ghosts {
    /// Make `path` (of the tree, under `root`) again as `kind`, once;
    /// returns where it was made, as a path of the tree.
    pub fn make(&mut self, root: &str, path: &str, kind: Kind) -> Result<String> {
        if let Some((_, at, _)) = self.made.iter().find(|(p, _, _)| p == path) {
            return Ok(at.clone());
        }
        let mut at = path.to_string();
        if std::path::Path::new(&under(root, &at)).symlink_metadata().is_ok() {
            at = format!("{path}.cryopod-restore-{}-{}", std::process::id(), self.made.len());
        }
        let host = under(root, &at);
        let made = match kind {
            Kind::Fifo => cryopod_sys::fs::mkfifo(&host, 0o600).map_err(EngineError::from),
            Kind::Dir { mode } => {
                use std::os::unix::fs::DirBuilderExt;
                std::fs::DirBuilder::new()
                    .mode(mode & 0o7777)
                    .create(&host)
                    .map_err(|e| EngineError::Other(e.to_string()))
            }
        };
        made.map_err(|e| EngineError::Other(format!("cannot make {path} again (its name was removed): {e}")))?;
        self.made.push((path.to_string(), at.clone(), kind));
        Ok(at)
    }

    /// Where the tree's `path` was made again, if it was.
    pub fn at(&self, path: &str) -> Option<&str> {
        self.made.iter().find(|(p, _, _)| p == path).map(|(_, at, _)| at.as_str())
    }

    /// Remove every name made (in reverse order: a directory after what
    /// was made in it).
    pub fn remove_all(&mut self, root: &str) {
        for (_, at, kind) in self.made.drain(..).rev() {
            let host = under(root, &at);
            let _ = match kind {
                Kind::Fifo => std::fs::remove_file(&host),
                Kind::Dir { .. } => std::fs::remove_dir(&host),
            };
        }
    }
}

/// Removed on drop, under the root they were made in.
pub struct Made {
    pub ghosts: Ghosts,
    pub root: String,
}

impl Drop for Made {
    fn drop(&mut self) {
        self.ghosts.remove_all(&self.root);
    }
}

/// The working directories of the tree that were removed: made again
/// before the processes enter them. Returns, per recorded cwd, the path
/// to enter.
pub fn make_cwds(m: &cryopod_image::Manifest, made: &mut Made) -> Result<HashMap<String, String>> {
    let mut out = HashMap::new();
    for p in m.processes.iter().filter(|p| p.zombie_status.is_none()) {
        let Some(path) = p.cwd.strip_suffix(DELETED) else { continue };
        let at = made.ghosts.make(&made.root, path, Kind::Dir { mode: 0o700 })?;
        out.insert(p.cwd.clone(), at);
    }
    Ok(out)
}
