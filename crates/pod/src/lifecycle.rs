//! A running pod's life: its status for `ps`, running a command inside it
//! (`exec`), and stopping it so that nothing of it remains (processes,
//! cgroup, veth, mounts, state).

use crate::cgroup::Cgroup;
use crate::create::POD_NS;
use crate::state::{noted_owner, now_unix, PodRecord, StateDir, CHECKPOINTER, CREATOR};
use crate::{net, PodError, Result};
use cryopod_sys::clone::{fork_with_pid, Forked};
use cryopod_sys::{creds, ns, pidfd, process, signal};
use serde::Serialize;
use std::os::fd::AsFd;
use std::time::{Duration, Instant};

/// One line of `cryopod ps`.
#[derive(Debug, Clone, Serialize)]
pub struct PodStatus {
    pub name: String,
    /// running, frozen or exited.
    pub state: String,
    pub init_pid: i32,
    pub ip: Option<String>,
    pub memory_bytes: Option<u64>,
    pub uptime_s: u64,
    pub cmd: Vec<String>,
}

pub fn status(state: &StateDir, rec: &PodRecord) -> PodStatus {
    let cg = Cgroup::of(state, &rec.name);
    let state = if !rec.alive() {
        "exited"
    } else if cg.freezer_state().map(|s| s != "THAWED").unwrap_or(false) {
        "frozen"
    } else {
        "running"
    };
    PodStatus {
        name: rec.name.clone(),
        state: state.into(),
        init_pid: rec.init_pid,
        ip: rec.spec.ip.map(|i| i.to_string()),
        memory_bytes: cg.memory_usage(),
        uptime_s: now_unix().saturating_sub(rec.created_unix),
        cmd: rec.cmd.clone(),
    }
}

fn running(state: &StateDir, name: &str) -> Result<PodRecord> {
    let rec = state.load(name)?;
    if !rec.alive() {
        return Err(PodError::Invalid(format!(
            "pod {name} is not running (its command ended); `cryopod stop {name}` removes it"
        )));
    }
    Ok(rec)
}

/// Run `cmd` inside pod `name` (all its namespaces and its cgroup); returns
/// the command's exit code.
pub fn exec(state: &StateDir, name: &str, cmd: &[String]) -> Result<i32> {
    if cmd.is_empty() {
        return Err(PodError::Invalid("no command given to run in the pod".into()));
    }
    let rec = running(state, name)?;
    if Cgroup::of(state, name).freezer_state()? != "THAWED" {
        return Err(PodError::Invalid(format!("pod {name} is frozen (a checkpoint is running?)")));
    }
    let pfd = pidfd::pidfd_open(rec.init_pid)?;
    match fork_with_pid(0)? {
        Forked::Child => {
            let r = (|| -> Result<i32> {
                Cgroup::of(state, name).join(0)?;
                let user = if rec.spec.userns { libc::CLONE_NEWUSER } else { 0 };
                ns::enter(pfd.as_fd(), rec.init_pid, POD_NS | libc::CLONE_NEWPID | user)?;
                if rec.spec.userns {
                    creds::become_root()?;
                }
                let st = std::process::Command::new(&cmd[0])
                    .args(&cmd[1..])
                    .status()
                    .map_err(|e| PodError::Invalid(format!("cannot run {} in pod {name}: {e}", cmd[0])))?;
                use std::os::unix::process::ExitStatusExt;
                Ok(st.code().unwrap_or_else(|| 128 + st.signal().unwrap_or(0)))
            })();
            match r {
                Ok(code) => process::exit_now(code),
                Err(e) => {
                    eprintln!("cryopod: {e}");
                    process::exit_now(127)
                }
            }
        }
        Forked::Parent(child) => {
            signal::forward_signals(child, &[libc::SIGTERM, libc::SIGINT, libc::SIGHUP, libc::SIGQUIT])?;
            let (_, st) = process::waitpid(child, 0)?;
            Ok(process::exit_code(st))
        }
    }
}

/// Wait (up to `timeout`) until the pod's PID 1 is gone; false if it is not.
pub(crate) fn wait_gone(rec: &PodRecord, timeout: Duration) -> bool {
    let deadline = Instant::now() + timeout;
    while rec.alive() {
        if Instant::now() > deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    true
}

/// Stop pod `name`: SIGTERM to its PID 1 (passed on to the command), then
/// SIGKILL after `timeout`; then remove its cgroup, veth and record. Mounts
/// live in the pod's mount namespace and go with its last process.
pub fn stop(state: &StateDir, name: &str, timeout: Duration) -> Result<()> {
    let rec = match state.load(name) {
        Ok(r) => r,
        // A pod whose creation was cut short (its directory but no record):
        // remove what it may have left, by name.
        Err(PodError::Unknown(_)) if state.dir(name).is_dir() => {
            if let Some((pid, true)) = crate::state::noted_owner(&state.dir(name).join(CREATOR)) {
                return Err(PodError::Invalid(format!("pod {name} is still being created (by pid {pid})")));
            }
            return cleanup_unrecorded(state, name);
        }
        Err(e) => return Err(e),
    };
    let cg = Cgroup::of(state, name);
    if cg.exists() {
        // A frozen task cannot act on a signal.
        cg.thaw()?;
    }
    if rec.alive() {
        process::kill(rec.init_pid, libc::SIGTERM)?;
        if !wait_gone(&rec, timeout) {
            tracing::info!(pod = name, "did not stop after SIGTERM; sending SIGKILL");
            let _ = process::kill(rec.init_pid, libc::SIGKILL);
            wait_gone(&rec, Duration::from_secs(10));
        }
    }
    cleanup(state, &rec)
}

/// Remove what a pod whose creation was cut short (a directory, no
/// record) may have left: its veth is looked for by the name cryopod gives.
fn cleanup_unrecorded(state: &StateDir, name: &str) -> Result<()> {
    let (veth, _) = net::veth_names(name);
    cleanup_by_name(state, name, net::link_exists(&veth)?.then_some(veth))
}

/// Like [`cleanup`], for a pod known only by its name (and veth, if any).
pub fn cleanup_by_name(state: &StateDir, name: &str, veth: Option<String>) -> Result<()> {
    let rec = PodRecord {
        name: name.to_string(),
        init_pid: 0,
        init_start: 0,
        created_unix: 0,
        spec: Default::default(),
        cmd: Vec::new(),
        veth,
        detached: false,
    };
    cleanup(state, &rec)
}

/// Remove what is left of a pod whose processes are gone (or going).
pub fn cleanup(state: &StateDir, rec: &PodRecord) -> Result<()> {
    let cg = Cgroup::of(state, &rec.name);
    if cg.exists() {
        // PID 1 is gone, so the kernel kills the rest of the PID namespace;
        // anything still listed is on its way out.
        for p in cg.procs().unwrap_or_default() {
            let _ = process::kill(p, libc::SIGKILL);
        }
        cg.remove(Duration::from_secs(10))?;
    }
    // The bridge goes too once no pod uses it.
    net::remove_veth(rec.veth.as_deref())?;
    state.release(&rec.name);
    Ok(())
}

/// Unlock a pod's network (if it has one); a failure is only logged (what
/// calls this goes on: a thaw, a recovery).
pub(crate) fn unlock_network(rec: &PodRecord) {
    if let Some(v) = &rec.veth {
        if let Err(e) = crate::net::set_locked(v, false) {
            tracing::warn!(pod = %rec.name, "{e}");
        }
    }
}

/// Put right what cryopod commands that died left of pods (every command
/// that deals with pods runs this first): a pod whose creation or restore
/// was cut short is removed (processes, cgroup, veth, directory); a pod
/// left frozen by a checkpoint cut short is thawed. A guardian process
/// normally did the urgent part already (see cryopod_engine::guard).
pub fn recover(state: &StateDir) {
    state.remove_dead_reservations();
    for name in state.names() {
        let dir = state.dir(&name);
        match state.load(&name) {
            Err(PodError::Unknown(_)) => {
                if let Some((pid, false)) = noted_owner(&dir.join(CREATOR)) {
                    tracing::warn!(pod = %name, pid, "removing what a cut-short run or restore left");
                    if let Err(e) = cleanup_unrecorded(state, &name) {
                        tracing::warn!(pod = %name, "{e}");
                    }
                }
            }
            Ok(rec) => {
                // Recorded, but its maker died before handing it over: a
                // restore's guardian killed it (remove it); a pod that
                // runs was complete (keep it).
                if let Some((pid, false)) = noted_owner(&dir.join(CREATOR)) {
                    if rec.alive() {
                        unlock_network(&rec);
                        let _ = std::fs::remove_file(dir.join(CREATOR));
                    } else {
                        tracing::warn!(pod = %name, pid, "removing a pod whose restore was cut short");
                        if let Err(e) = cleanup(state, &rec) {
                            tracing::warn!(pod = %name, "{e}");
                        }
                        continue;
                    }
                }
                if let Some((pid, false)) = noted_owner(&dir.join(CHECKPOINTER)) {
                    tracing::warn!(pod = %name, pid, "thawing a pod left by a cut-short checkpoint");
                    unlock_network(&rec);
                    if Cgroup::of(state, &name).thaw().is_ok() {
                        let _ = std::fs::remove_file(dir.join(CHECKPOINTER));
                    }
                }
            }
            Err(_) => {}
        }
    }
}
