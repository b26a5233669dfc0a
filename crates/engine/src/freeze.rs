//! Freezing a process tree: seize and interrupt every thread of every
//! process, re-reading the tree until no new task appears (a task may fork
//! or clone while we freeze). Thawing detaches everything, resuming it.
//!
//! A task waiting for its vfork child cannot stop until that child execs
//! or exits, which a child we hold stopped never does: a thread that does
//! not stop in time makes the attempt fail with `EngineError::Busy` after
//! everything is let go again (the caller tries again).

use crate::{procfs, EngineError, Result};
use cryopod_sys::ptrace::{self, Stop};
use std::collections::BTreeMap;
use std::time::{Duration, Instant};

/// How long a seized thread may take to stop.
const STOP_WAIT: Duration = Duration::from_millis(500);

/// A frozen tree: pid → its threads (leader first), plus zombies.
#[derive(Default)]
pub struct Frozen {
    pub procs: BTreeMap<i32, Vec<i32>>,
    pub zombies: Vec<i32>,
    /// Processes that were stopped by a signal (job control) before we came.
    pub stopped: Vec<i32>,
    /// Every tid we seized, so that thaw can detach exactly these.
    seized: Vec<i32>,
}

impl Frozen {
    /// Resume every seized thread (used on success with --leave-running and
    /// on any failure).
    pub fn thaw(&mut self) {
        for &t in self.seized.iter().rev() {
            let _ = ptrace::detach(t, 0);
        }
        self.seized.clear();
    }

    /// Kill the tree (default end of a checkpoint). With `collect`, as
    /// their tracer we also collect each task's end: until a tracer does, a
    /// dead tracee stays a zombie, and a PID namespace's init waits for all
    /// of them (a pod). A plain tree's parent reaps it after we detach.
    pub fn kill(&mut self, collect: bool) {
        for &p in self.procs.keys() {
            let _ = cryopod_sys::process::kill(p, libc::SIGKILL);
        }
        if !collect {
            self.thaw();
            return;
        }
        // In any order: a PID namespace's init finishes only after the
        // others are collected.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        let mut left = self.seized.clone();
        while !left.is_empty() && std::time::Instant::now() < deadline {
            left.retain(|&t| match cryopod_sys::process::waitpid(t, libc::WNOHANG) {
                Ok((0, _)) => true,
                // A stop reported on the way out: the end comes next.
                Ok((_, st)) => !libc::WIFEXITED(st) && !libc::WIFSIGNALED(st),
                Err(_) => false,
            });
            if !left.is_empty() {
                std::thread::sleep(std::time::Duration::from_micros(200));
            }
        }
        self.thaw();
    }
}

/// `PF_EXITING` in /proc/PID/stat's flags: the task is in exit.
const PF_EXITING: u64 = 0x4;
/// How long a freeze waits for a process in exit to become a zombie.
const EXIT_WAIT: Duration = Duration::from_millis(500);

/// Seize a thread (false: it exited meanwhile). A thread already on its
/// way out (the kernel refuses to trace it: EPERM) counts as exited: a
/// task in exit goes on even in a frozen cgroup, into a zombie, which the
/// rescan records as one.
fn seize(tid: i32) -> Result<bool> {
    // The syscalls a checkpoint injects must not meet the program's seccomp
    // filters or strict mode (a filter may kill the process for a syscall
    // it never makes itself): suspended while we trace, where we may
    // (CAP_SYS_ADMIN); otherwise a thread under seccomp gets no injection
    // its filters would refuse (see `checkpoint::has_seccomp`).
    if SUSPEND_SECCOMP.load(std::sync::atomic::Ordering::Relaxed) {
        match ptrace::seize(tid, ptrace::OPTS_DUMP | ptrace::OPT_SUSPEND_SECCOMP) {
            Ok(()) => return Ok(true),
            Err(e) if e.errno.0 == libc::EPERM && !exiting(tid) => {
                tracing::debug!("seccomp cannot be suspended while tracing (no CAP_SYS_ADMIN?)");
                SUSPEND_SECCOMP.store(false, std::sync::atomic::Ordering::Relaxed);
            }
            Err(e) if e.errno.0 == libc::ESRCH => return Ok(false),
            Err(e) if e.errno.0 == libc::EPERM => return Ok(false),
            Err(e) => return Err(e.into()),
        }
    }
    match ptrace::seize(tid, ptrace::OPTS_DUMP) {
        Ok(()) => Ok(true),
        Err(e) if e.errno.0 == libc::ESRCH => Ok(false),
        Err(e) if e.errno.0 == libc::EPERM && exiting(tid) => Ok(false),
        Err(e) => Err(e.into()),
    }
}

/// Whether seccomp may be suspended while we trace (until refused once).
static SUSPEND_SECCOMP: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(true);

/// Is a thread's seccomp suspended while this process traces it?
pub fn seccomp_suspended() -> bool {
    SUSPEND_SECCOMP.load(std::sync::atomic::Ordering::Relaxed)
}

/// Has process `pid` ("self" for this one) a vDSO mapped? (None: its map
/// cannot be read.) Where this process has one, a process without is in
/// the middle of an exec or an exit.
fn has_vdso(pid: &str) -> Option<bool> {
    std::fs::read_to_string(format!("/proc/{pid}/maps")).ok().map(|m| m.contains("[vdso]"))
}

/// Is thread `tid` gone, a zombie, or dead?
fn exiting(tid: i32) -> bool {
    match procfs::stat(tid) {
        Ok(s) => matches!(s.state, 'Z' | 'X' | 'x'),
        Err(_) => true,
    }
}

/// A seized thread that stopped, ended, or did not stop in time.
enum Stopped {
    Yes,
    Gone,
    Late,
}

fn seize_one(tid: i32, fr: &mut Frozen) -> Result<bool> {
    if !seize(tid)? {
        return Ok(false);
    }
    ptrace::interrupt(tid)?;
    match wait_stop(tid, Instant::now() + STOP_WAIT)? {
        Stopped::Yes => Ok(true),
        Stopped::Gone => Ok(false),
        Stopped::Late => Err(late(fr, &[tid])),
    }
}

/// Wait until a seized and interrupted thread stops, at most until
/// `deadline`.
fn wait_stop(tid: i32, deadline: Instant) -> Result<Stopped> {
    // A stop usually comes within microseconds: look again soon at first.
    let mut nap = Duration::from_micros(5);
    loop {
        let (got, status) = cryopod_sys::process::waitpid(tid, libc::WNOHANG)?;
        if got == 0 {
            if Instant::now() > deadline {
                return Ok(Stopped::Late);
            }
            std::thread::sleep(nap);
            nap = (nap * 2).min(Duration::from_micros(500));
            continue;
        }
        match ptrace::decode_status(status) {
            Stop::Event(_, _) => return Ok(Stopped::Yes),
            // A signal arrived first: let it be delivered, keep waiting.
            Stop::Signal(sig) => ptrace::cont(tid, sig)?,
            Stop::Syscall => ptrace::cont(tid, 0)?,
            Stop::Exited(_) | Stop::Killed(_) => return Ok(Stopped::Gone),
        }
    }
}

/// Threads that did not stop in time while everything was asked to stop
/// at once: each waits, most likely, for its vfork child, which we hold.
/// Let the children of their processes go (to exec or exit; the final
/// rescan seizes them again) and wait for the late threads once more.
fn wait_for_vfork_parents(fr: &mut Frozen, late_ones: Vec<(i32, i32)>) -> Result<()> {
    for &(pid, _) in &late_ones {
        for child in procfs::children(pid)? {
            for t in fr.procs.remove(&child).unwrap_or_default() {
                let _ = ptrace::detach(t, 0);
                fr.seized.retain(|&x| x != t);
            }
        }
    }
    let still = wait_all(fr, late_ones)?;
    if still.is_empty() {
        return Ok(());
    }
    Err(late(fr, &still.iter().map(|&(_, t)| t).collect::<Vec<_>>()))
}

/// Wait (at most STOP_WAIT in all) for each (process, thread) to stop;
/// those that did join the frozen tree. Returns those that did not.
fn wait_all(fr: &mut Frozen, threads: Vec<(i32, i32)>) -> Result<Vec<(i32, i32)>> {
    let deadline = Instant::now() + STOP_WAIT;
    let mut late_ones = Vec::new();
    for (pid, t) in threads {
        match wait_stop(t, deadline)? {
            Stopped::Yes => fr.procs.entry(pid).or_default().push(t),
            Stopped::Gone => {}
            Stopped::Late => late_ones.push((pid, t)),
        }
    }
    Ok(late_ones)
}

/// Some threads did not stop in time: let every stopped one go (a vfork
/// child among them then goes on), wait for the late ones to stop after
/// all and let them go too; the error says to try again.
fn late(fr: &mut Frozen, tids: &[i32]) -> EngineError {
    fr.thaw();
    for &t in tids {
        if let Ok(Stopped::Yes) = wait_stop(t, Instant::now() + Duration::from_secs(5)) {
            let _ = ptrace::detach(t, 0);
        }
    }
    EngineError::Busy(tids[0])
}

/// Freeze a pod whose cgroup is frozen: every task is seized and asked to
/// stop while the freezer holds it (the tree cannot change meanwhile), then
/// `thaw` lets the tasks go, straight into their ptrace stop.
pub fn freeze_pod(root: i32, thaw: &dyn Fn() -> Result<()>) -> Result<Frozen> {
    let mut fr = Frozen::default();
    let res = (|| {
        let mut asked = Vec::new();
        let mut queue = vec![root];
        while let Some(pid) = queue.pop() {
            match procfs::stat(pid)?.state {
                'Z' => continue,
                'T' => fr.stopped.push(pid),
                _ => {}
            }
            for t in procfs::tids(pid)? {
                if seize(t)? {
                    fr.seized.push(t);
                    ptrace::interrupt(t)?;
                    asked.push((pid, t));
                }
            }
            queue.extend(procfs::children(pid)?);
        }
        crate::fault::check("pod-frozen")?;
        thaw()?;
        let late_ones = wait_all(&mut fr, asked)?;
        if !late_ones.is_empty() {
            wait_for_vfork_parents(&mut fr, late_ones)?;
        }
        // Anything that appeared anyway (nothing should) is frozen too.
        freeze_into(root, &mut fr)
    })();
    match res {
        Ok(()) => Ok(fr),
        Err(e) => {
            fr.thaw();
            let _ = thaw();
            Err(e)
        }
    }
}

/// Freeze the tree rooted at `root`. On error everything seized so far is
/// released again.
pub fn freeze(root: i32) -> Result<Frozen> {
    let mut fr = Frozen::default();
    match freeze_into(root, &mut fr) {
        Ok(()) => Ok(fr),
        Err(e) => {
            fr.thaw();
            Err(e)
        }
    }
}

fn freeze_into(root: i32, fr: &mut Frozen) -> Result<()> {
    let st = procfs::stat(root)?;
    if st.state == 'Z' {
        return Err(crate::EngineError::Other(format!("pid {root} is a zombie; nothing to checkpoint")));
    }
    let t0 = Instant::now();
    loop {
        let mut changed = false;
        let mut queue = vec![root];
        let mut seen = Vec::new();
        while let Some(pid) = queue.pop() {
            seen.push(pid);
            let st = procfs::stat(pid)?;
            if st.state == 'Z' {
                if !fr.zombies.contains(&pid) {
                    fr.zombies.push(pid);
                    changed = true;
                }
                continue;
            }
            // On its way out (its memory may be gone already, and ptrace
            // does not refuse it yet): looked at again until it is a
            // zombie, which exit becomes even in a frozen cgroup.
            if st.field(9) & PF_EXITING != 0 && pid != root && !fr.procs.contains_key(&pid) {
                if t0.elapsed() > EXIT_WAIT {
                    return Err(crate::EngineError::Busy(pid));
                }
                std::thread::sleep(Duration::from_millis(1));
                changed = true;
                continue;
            }
            if st.state == 'T' && !fr.procs.contains_key(&pid) && !fr.stopped.contains(&pid) {
                fr.stopped.push(pid);
            }
            let tids = procfs::tids(pid)?;
            let known = fr.procs.entry(pid).or_default().clone();
            for t in tids {
                if !known.contains(&t) {
                    if seize_one(t, fr)? {
                        fr.seized.push(t);
                        fr.procs.entry(pid).or_default().push(t);
                    }
                    changed = true;
                }
            }
            // Keep the leader first.
            fr.procs.entry(pid).or_default().sort_by_key(|&t| (t != pid, t));
            queue.extend(procfs::children(pid)?);
        }
        // Forget processes that vanished.
        fr.procs.retain(|p, _| seen.contains(p));
        if !changed {
            // A process caught inside an exec (its new memory map without
            // its vDSO yet: the exec sleeps reading its interpreter, and a
            // frozen cgroup holds it there) or an exit (its map gone): let
            // go and try again (seen once a few hundred moves of a shell
            // loop: "a process without a vDSO").
            if has_vdso("self") == Some(true) {
                if let Some(&pid) = fr.procs.keys().find(|&&p| has_vdso(&p.to_string()) == Some(false)) {
                    return Err(crate::EngineError::Busy(pid));
                }
            }
            return Ok(());
        }
    }
}
