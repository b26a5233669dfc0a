//! The pod's cgroup on this host's cgroup v1 hierarchies: `<parent>/<name>`
//! under the memory, pids, cpu and freezer controllers, where the parent
//! is the host's ([`StateDir::cgroup_parent`]: `cryopod` for the default
//! state directory), so that two cryopod hosts on one machine (network
//! namespaces with state directories of their own) never share a cgroup. Limits are written
//! when the pod is created (and read back for a checkpoint); the freezer
//! stops every task of the pod at once for a consistent checkpoint.

use crate::state::StateDir;
use crate::{PodError, Result};
use std::path::PathBuf;
use std::time::{Duration, Instant};

const ROOT: &str = "/sys/fs/cgroup";
const CONTROLLERS: [&str; 4] = ["memory", "pids", "cpu", "freezer"];
/// cpu.cfs_period_us used for `--cpus`.
const CPU_PERIOD_US: u64 = 100_000;

/// The limits a pod's cgroup enforces (None: unlimited).
#[derive(Debug, Clone, Copy, Default, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Limits {
    pub memory: Option<u64>,
    pub pids: Option<u64>,
    pub cpus: Option<f64>,
}

#[derive(Debug, Clone)]
pub struct Cgroup {
    pub name: String,
    /// The host's directory of pod cgroups.
    pub parent: String,
}

fn write(path: &PathBuf, value: &str) -> Result<()> {
    std::fs::write(path, value).map_err(|e| PodError::Io { path: path.display().to_string(), msg: e.to_string() })
}

fn read(path: &PathBuf) -> Result<String> {
    std::fs::read_to_string(path)
        .map(|s| s.trim().to_string())
        .map_err(|e| PodError::Io { path: path.display().to_string(), msg: e.to_string() })
}

impl Cgroup {
    /// Pod `pod` of the host whose state directory is `state`.
    pub fn of(state: &StateDir, pod: &str) -> Cgroup {
        Cgroup { name: pod.to_string(), parent: state.cgroup_parent() }
    }

    fn dir(&self, controller: &str) -> PathBuf {
        PathBuf::from(ROOT).join(controller).join(&self.parent).join(&self.name)
    }

    /// Check that the controllers exist (a clear sentence otherwise).
    pub fn check_host() -> Result<()> {
        for c in CONTROLLERS {
            let p = PathBuf::from(ROOT).join(c).join("cgroup.procs");
            if !p.exists() {
                return Err(PodError::Invalid(format!(
                    "the cgroup v1 '{c}' controller is not mounted at {ROOT}/{c}; pods need memory, pids, cpu and freezer"
                )));
            }
        }
        Ok(())
    }

    /// The freezer's state file, open for writing (handed to a guardian
    /// that thaws the pod should a checkpoint die).
    pub fn freezer_file(&self) -> Result<std::fs::File> {
        let p = self.dir("freezer").join("freezer.state");
        std::fs::OpenOptions::new().write(true).open(&p).map_err(PodError::io(&p))
    }

    /// Create the cgroup in every controller and set its limits.
    pub fn create(&self, limits: &Limits) -> Result<()> {
        Self::check_host()?;
        for c in CONTROLLERS {
            let d = self.dir(c);
            std::fs::create_dir_all(&d).map_err(PodError::io(&d))?;
        }
        if let Some(m) = limits.memory {
            write(&self.dir("memory").join("memory.limit_in_bytes"), &m.to_string())?;
        }
        if let Some(p) = limits.pids {
            write(&self.dir("pids").join("pids.max"), &p.to_string())?;
        }
        if let Some(c) = limits.cpus {
            let quota = (c * CPU_PERIOD_US as f64).round() as u64;
            write(&self.dir("cpu").join("cpu.cfs_period_us"), &CPU_PERIOD_US.to_string())?;
            write(&self.dir("cpu").join("cpu.cfs_quota_us"), &quota.max(1000).to_string())?;
        }
        Ok(())
    }

    /// The limits in force (for a checkpoint).
    pub fn limits(&self) -> Result<Limits> {
        let num = |c: &str, f: &str| -> Result<String> { read(&self.dir(c).join(f)) };
        let mem: u64 = num("memory", "memory.limit_in_bytes")?.parse().unwrap_or(u64::MAX);
        let pids = num("pids", "pids.max")?;
        let quota: i64 = num("cpu", "cpu.cfs_quota_us")?.parse().unwrap_or(-1);
        let period: i64 = num("cpu", "cpu.cfs_period_us")?.parse().unwrap_or(CPU_PERIOD_US as i64);
        Ok(Limits {
            // The unlimited value is the largest page multiple.
            memory: (mem < (i64::MAX as u64 & !4095)).then_some(mem),
            pids: pids.parse().ok(),
            cpus: (quota > 0 && period > 0).then(|| quota as f64 / period as f64),
        })
    }

    /// Memory in use by the pod, in bytes.
    pub fn memory_usage(&self) -> Option<u64> {
        read(&self.dir("memory").join("memory.usage_in_bytes")).ok()?.parse().ok()
    }

    /// Move process `pid` (0: the caller) into the cgroup, in every controller.
    pub fn join(&self, pid: i32) -> Result<()> {
        for c in CONTROLLERS {
            write(&self.dir(c).join("cgroup.procs"), &pid.to_string())?;
        }
        Ok(())
    }

    /// Move process `pid` out of the pod, to the hierarchies' roots (the
    /// pod's namespace holder, its work done, before a held pod is frozen:
    /// frozen, it could not be let go).
    pub fn evict(pid: i32) -> Result<()> {
        for c in CONTROLLERS {
            write(&PathBuf::from(ROOT).join(c).join("cgroup.procs"), &pid.to_string())?;
        }
        Ok(())
    }

    /// Processes in the cgroup, in any controller it has.
    pub fn procs(&self) -> Result<Vec<i32>> {
        let mut out = Vec::new();
        for c in CONTROLLERS.iter().filter(|c| self.dir(c).exists()) {
            let s = read(&self.dir(c).join("cgroup.procs"))?;
            out.extend(s.lines().filter_map(|l| l.trim().parse::<i32>().ok()));
        }
        out.sort_unstable();
        out.dedup();
        Ok(out)
    }

    /// Is the cgroup there in any controller? (A creation cut short may
    /// have made only the first ones.)
    pub fn exists(&self) -> bool {
        CONTROLLERS.iter().any(|c| self.dir(c).exists())
    }

    pub fn freezer_state(&self) -> Result<String> {
        read(&self.dir("freezer").join("freezer.state"))
    }

    /// Freeze every task of the pod and wait until the kernel says FROZEN.
    /// A task the freezer cannot catch at that moment (seen: a parent
    /// leaving its vfork wait while its child exits) can hold the cgroup in
    /// FREEZING for good: after a short while the pod is thawed and frozen
    /// again, until `timeout`.
    pub fn freeze(&self, timeout: Duration) -> Result<()> {
        const ATTEMPT: Duration = Duration::from_millis(300);
        let state = self.dir("freezer").join("freezer.state");
        let deadline = Instant::now() + timeout;
        loop {
            write(&state, "FROZEN")?;
            let attempt = Instant::now() + ATTEMPT;
            while Instant::now() < attempt {
                if read(&state)? == "FROZEN" {
                    return Ok(());
                }
                std::thread::sleep(Duration::from_millis(1));
            }
            let _ = self.thaw();
            if Instant::now() > deadline {
                return Err(PodError::Invalid(format!(
                    "pod {} did not freeze within {timeout:?} (a task stuck in the kernel?); it was thawed again",
                    self.name
                )));
            }
            tracing::info!(pod = %self.name, "the freezer did not catch every task; thawed, freezing again");
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Thaw the pod (nothing to do where its freezer cgroup was never made).
    pub fn thaw(&self) -> Result<()> {
        if !self.dir("freezer").exists() {
            return Ok(());
        }
        write(&self.dir("freezer").join("freezer.state"), "THAWED")
    }

    /// Remove the cgroup (and those below it) from every controller; waits
    /// (up to `timeout`) for exiting tasks to leave them. The host's parent goes too once
    /// no pod uses it.
    pub fn remove(&self, timeout: Duration) -> Result<()> {
        let deadline = Instant::now() + timeout;
        for c in CONTROLLERS {
            let top = self.dir(c);
            // Cgroups the pod's processes were put in below its own
            // (restored with them), deepest first.
            let mut dirs = vec![top.clone()];
            let mut i = 0;
            while i < dirs.len() {
                if let Ok(rd) = std::fs::read_dir(&dirs[i]) {
                    dirs.extend(rd.flatten().filter(|e| e.file_type().is_ok_and(|t| t.is_dir())).map(|e| e.path()));
                }
                i += 1;
            }
            for d in dirs.iter().rev() {
                loop {
                    match std::fs::remove_dir(d) {
                        Ok(()) => break,
                        Err(e) if e.kind() == std::io::ErrorKind::NotFound => break,
                        Err(e) if Instant::now() > deadline => return Err(PodError::io(d)(e)),
                        Err(_) => std::thread::sleep(Duration::from_millis(10)),
                    }
                }
            }
            let d = top;
            if let Some(parent) = d.parent() {
                let _ = std::fs::remove_dir(parent);
            }
        }
        Ok(())
    }
}

/// How long a [`Warmth`] lasts at most.
const WARM_MAX: Duration = Duration::from_secs(10);
/// Its moves, this far apart (well within a grace period).
const WARM_EVERY: Duration = Duration::from_millis(4);

/// Cheap cgroup moves for a while, from [`Cgroup::keep_warm`] until
/// dropped.
///
/// Moving a process into a cgroup (a v1 `cgroup.procs` write) takes the
/// kernel's threadgroup lock for writing, and the first such write after
/// none for a while waits a whole RCU grace period for it: 5 to 30 ms
/// measured here, against 0.4 ms for one that follows another within a
/// grace period. A restored pod's namespace holder and its PID 1 move
/// into the pod's cgroup; where that restore is waited on (a migration's
/// stop), the wait is paid ahead: this process moves itself, every few
/// milliseconds, into the memory cgroup it is already in (nothing
/// changes), so that the lock stays ready.
pub struct Warmth {
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Cgroup {
    /// Keep cgroup moves cheap until the result is dropped (at most
    /// `WARM_MAX`). Best effort: where this process's own cgroup cannot be
    /// told or written, moves cost what they cost.
    pub fn keep_warm() -> Warmth {
        use std::sync::atomic::{AtomicBool, Ordering};
        let stop = std::sync::Arc::new(AtomicBool::new(false));
        let own = std::fs::read_to_string("/proc/self/cgroup").ok().and_then(|s| {
            s.lines().find_map(|l| {
                let mut f = l.splitn(3, ':');
                let (_, ctl, path) = (f.next()?, f.next()?, f.next()?);
                ctl.split(',').any(|c| c == CONTROLLERS[0]).then(|| path.to_string())
            })
        });
        let Some(own) = own else {
            return Warmth { stop, thread: None };
        };
        let procs = PathBuf::from(ROOT).join(CONTROLLERS[0]).join(own.trim_start_matches('/')).join("cgroup.procs");
        let pid = std::process::id().to_string();
        let flag = stop.clone();
        let thread = std::thread::Builder::new()
            .name("cgroup-warmth".into())
            .spawn(move || {
                let until = Instant::now() + WARM_MAX;
                while !flag.load(Ordering::Relaxed) && Instant::now() < until {
                    if let Err(e) = write(&procs, &pid) {
                        tracing::debug!("cgroup moves are not kept cheap: {e}");
                        return;
                    }
                    std::thread::sleep(WARM_EVERY);
                }
            })
            .ok();
        Warmth { stop, thread }
    }
}

impl Drop for Warmth {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Keeping moves cheap moves nothing: this process stays in the
    /// cgroups it was in, and the thread ends when the warmth goes.
    #[test]
    fn warmth_leaves_the_process_where_it_was() {
        let before = std::fs::read_to_string("/proc/self/cgroup").unwrap();
        let w = Cgroup::keep_warm();
        std::thread::sleep(Duration::from_millis(30));
        let t = Instant::now();
        drop(w);
        assert!(t.elapsed() < Duration::from_secs(1), "the warmth did not end");
        assert_eq!(std::fs::read_to_string("/proc/self/cgroup").unwrap(), before);
    }
}
