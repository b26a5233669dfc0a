//! The cgroups of a tree's processes (issue 11, class 11): processes put
//! in cgroups of their own below the root process's (a pod's processes in
//! cgroups below the pod's) come back in the same places, with the same
//! settings, in the memory, pids, cpu and freezer hierarchies of cgroup v1.
//!
//! Checkpoint: each process's path in each hierarchy (/proc/PID/cgroup),
//! relative to the root's; one outside the root's is refused. Restore: the
//! same cgroups are made below the root stub's (a pod's: its new cgroup),
//! with their settings, and each process is moved in right after it is
//! seized, before its memory is made (v1 charges memory where it is
//! allocated). What a failed restore made is removed.

use crate::{procfs, EngineError, Result};
use cryopod_image::{CgroupDir, Manifest, Process, CGROUP_CONTROLLERS, CGROUP_SETTINGS};
use std::collections::BTreeMap;
use std::path::PathBuf;

const ROOT: &str = "/sys/fs/cgroup";

/// Per controller kept, the cgroup path of `pid` (from /proc/PID/cgroup:
/// "ID:CONTROLLERS:PATH" lines, CONTROLLERS comma-separated).
fn paths_of(pid: i32) -> Result<BTreeMap<&'static str, String>> {
    let text = procfs::read(pid, "cgroup")?;
    let mut out = BTreeMap::new();
    for line in text.lines() {
        let mut f = line.splitn(3, ':');
        let (Some(_), Some(ctrls), Some(path)) = (f.next(), f.next(), f.next()) else { continue };
        for c in CGROUP_CONTROLLERS {
            if ctrls.split(',').any(|x| x == c) {
                out.insert(c, path.to_string());
            }
        }
    }
    Ok(out)
}

/// `path` relative to `base` ("" for `base` itself), if it is below it.
fn below<'a>(path: &'a str, base: &str) -> Option<&'a str> {
    if path == base {
        return Some("");
    }
    let base = base.trim_end_matches('/');
    path.strip_prefix(base)?.strip_prefix('/')
}

fn dir(controller: &str, abs: &str) -> PathBuf {
    PathBuf::from(ROOT).join(controller).join(abs.trim_start_matches('/'))
}

/// Record each live process's cgroups below the root's (`root`: its host
/// PID), and those cgroups with their settings, parents first.
pub fn collect(procs: &mut [Process], root: i32) -> Result<Vec<CgroupDir>> {
    let base = paths_of(root)?;
    let mut dirs: std::collections::BTreeSet<(String, String)> = Default::default();
    for p in procs.iter_mut().filter(|p| p.zombie_status.is_none()) {
        for (c, path) in paths_of(p.pid)? {
            let Some(b) = base.get(c) else { continue };
            let rel = below(&path, b).ok_or_else(|| EngineError::Unsupported {
                pid: p.pid,
                what: format!("it is in {c} cgroup {path}, outside the tree's ({b})"),
            })?;
            if rel.is_empty() {
                continue;
            }
            // Its parents too (made first at restore).
            let mut acc = String::new();
            for part in rel.split('/') {
                acc = if acc.is_empty() { part.to_string() } else { format!("{acc}/{part}") };
                dirs.insert((c.to_string(), acc.clone()));
            }
            p.cgroups.push((c.to_string(), rel.to_string()));
        }
    }
    // Parents sort before their children within a controller.
    let mut out = Vec::new();
    for (c, rel) in dirs {
        let b = &base[c.as_str()];
        let d = dir(&c, &format!("{b}/{rel}"));
        let mut settings = Vec::new();
        for (_, file) in CGROUP_SETTINGS.iter().filter(|(sc, _)| *sc == c) {
            let path = d.join(file);
            let v = std::fs::read_to_string(&path)
                .map_err(|e| EngineError::Proc { path: path.display().to_string(), msg: e.to_string() })?;
            settings.push((file.to_string(), v.trim().to_string()));
        }
        out.push(CgroupDir { controller: c, path: rel, settings });
    }
    Ok(out)
}

/// The cgroups made for a restore, below the root stub's; removed on drop
/// unless [`Made::keep`] was called.
#[derive(Default)]
pub struct Made {
    base: BTreeMap<&'static str, String>,
    made: Vec<PathBuf>,
    keep: bool,
}

impl Made {
    /// Make the image's cgroups below those of `root` (the root stub's
    /// host PID), with their settings.
    pub fn make(&mut self, m: &Manifest, root: i32) -> Result<()> {
        if m.cgroups.is_empty() {
            return Ok(());
        }
        self.base = paths_of(root)?;
        for c in &m.cgroups {
            let b = self.base.get(c.controller.as_str()).ok_or_else(|| {
                EngineError::Other(format!("the {} cgroup hierarchy is not mounted here", c.controller))
            })?;
            let d = dir(&c.controller, &format!("{b}/{}", c.path));
            match std::fs::create_dir(&d) {
                Ok(()) => self.made.push(d.clone()),
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
                Err(e) => return Err(EngineError::Other(format!("cannot make cgroup {}: {e}", d.display()))),
            }
            for (file, value) in &c.settings {
                let path = d.join(file);
                std::fs::write(&path, value)
                    .map_err(|e| EngineError::Other(format!("cannot set {} to {value}: {e}", path.display())))?;
            }
        }
        Ok(())
    }

    /// Move process `p` (host PID `host`) into its cgroups.
    pub fn move_in(&self, p: &Process, host: i32) -> Result<()> {
        for (c, rel) in &p.cgroups {
            let b = self.base.get(c.as_str()).ok_or_else(|| EngineError::Other(format!("no {c} cgroup made")))?;
            let procs = dir(c, &format!("{b}/{rel}")).join("cgroup.procs");
            std::fs::write(&procs, host.to_string()).map_err(|e| {
                EngineError::Other(format!("cannot move process {} into {}: {e}", p.pid, procs.display()))
            })?;
        }
        Ok(())
    }

    /// The tree runs in them now: leave them.
    pub fn keep(&mut self) {
        self.keep = true;
    }
}

impl Drop for Made {
    fn drop(&mut self) {
        if self.keep {
            return;
        }
        // Children first; their tasks may take a moment to be gone.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(2);
        for d in self.made.iter().rev() {
            while std::fs::remove_dir(d).is_err() && d.exists() && std::time::Instant::now() < deadline {
                std::thread::sleep(std::time::Duration::from_millis(10));
            }
        }
    }
}
