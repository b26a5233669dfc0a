//! The process tree: parent/child links, sessions, process groups and
//! zombies. On restore, the restorer forks the root stub with its PID; each
//! stub (a copy of the restorer, so it holds the whole plan) starts its
//! session, forks its own children with their PIDs, moves its fds into
//! place, reports ready and waits to be seized, or dies if the restorer
//! does first (the lifeline pipe reaches its end). Process groups are joined
//! afterwards by injected setpgid, once every group leader exists.

use crate::remote::{nr, Remote};
use crate::Result;
use cryopod_image::{Manifest, Process};
use cryopod_sys::clone::{fork_with, fork_with_pid, Forked};
use cryopod_sys::{events, fd, io, process, signal, TargetFd};
use std::collections::BTreeMap;
use std::os::fd::BorrowedFd;

/// An epoll instance to fill: its fd number in the owner, and the interest
/// list.
pub type EpollSetup = (TargetFd, Vec<cryopod_image::EpollEntry>);

/// What every stub needs to know, built by the restorer before forking.
pub struct StubPlan<'a> {
    pub m: &'a Manifest,
    pub children: BTreeMap<i32, Vec<i32>>,
    /// Per pid: (target fd, source fd in the restorer, close-on-exec). A
    /// stub is a copy of the restorer: it has every source at its number.
    pub fds: BTreeMap<i32, Vec<(TargetFd, BorrowedFd<'a>, bool)>>,
    /// Restorer fds every stub keeps until the restorer closes them in it
    /// (re-created memfds and deleted files, mapped by injected mmap).
    pub keep: Vec<BorrowedFd<'a>>,
    /// Per pid: epoll instances it owns (its fd number for the instance, and
    /// the interest list to register under its own fd numbers).
    pub epolls: BTreeMap<i32, Vec<EpollSetup>>,
    /// Write end of the readiness pipe.
    pub ready_w: BorrowedFd<'a>,
    /// The lifeline's read end. A stub waits on it until it is seized,
    /// and exits when it reads the end (the restorer died).
    pub lifeline_r: BorrowedFd<'a>,
    /// The number of the lifeline's write end: only the restorer keeps it,
    /// every stub closes it in its own table first.
    pub lifeline_w: TargetFd,
    /// For a pod: the root is forked into a new PID namespace (becoming its
    /// PID 1) and first runs this to join the pod's other namespaces.
    pub enter: Option<&'a (dyn Fn() -> std::result::Result<(), String> + Sync)>,
    /// See `restore::PodRestore::before_pid_ns`.
    pub before_pid_ns: Option<&'a (dyn Fn() -> std::result::Result<(), String> + Sync)>,
    /// Unix socket steps the stubs run on request, and per pid the read end
    /// of the pipe that brings the requests (step numbers, then "Q").
    pub unix: Option<&'a crate::unix::plan::Plan>,
    pub cmd: BTreeMap<i32, BorrowedFd<'a>>,
    /// Per session leader with a pair of the image as its controlling
    /// terminal: that pair's terminal end, taken before it forks.
    pub ctty: BTreeMap<i32, BorrowedFd<'a>>,
}

/// Children of each process, from ppid links.
pub fn children_map(m: &Manifest) -> BTreeMap<i32, Vec<i32>> {
    let mut map: BTreeMap<i32, Vec<i32>> = BTreeMap::new();
    for p in &m.processes {
        if p.pid != m.root_pid {
            map.entry(p.ppid).or_default().push(p.pid);
        }
    }
    map
}

/// Processes in creation order (parents before children).
pub fn tree_order(m: &Manifest) -> Vec<&Process> {
    let ch = children_map(m);
    let mut out = Vec::new();
    let mut queue = std::collections::VecDeque::from([m.root_pid]);
    while let Some(pid) = queue.pop_front() {
        if let Some(p) = m.processes.iter().find(|p| p.pid == pid) {
            out.push(p);
        }
        if let Some(c) = ch.get(&pid) {
            queue.extend(c.iter().copied());
        }
    }
    out
}

/// Fork the root stub (and, through it, the whole tree). Returns its pid.
pub fn spawn(plan: &StubPlan) -> Result<i32> {
    let root = plan.m.root_pid;
    if let Some(before) = plan.before_pid_ns {
        return spawn_via(plan, before);
    }
    let forked = match plan.enter {
        Some(_) => fork_with(libc::CLONE_NEWPID as u64, 0)?,
        None => fork_with_pid(root)?,
    };
    match forked {
        Forked::Child => root_stub(plan),
        Forked::Parent(p) => Ok(p),
    }
}

fn root_stub(plan: &StubPlan) -> ! {
    let root = plan.m.root_pid;
    if let Some(enter) = plan.enter {
        if let Err(e) = enter() {
            report(plan, &format!("E {root} entering the pod: {}\n", e.replace('\n', " ")));
            process::exit_now(1);
        }
    }
    stub_main(plan, root)
}

/// Fork the root stub through a go-between that first runs `before` and
/// makes the PID namespace (so that it belongs to the user namespace
/// `before` joined); the root is then re-parented to us (a subreaper).
fn spawn_via(plan: &StubPlan, before: &(dyn Fn() -> std::result::Result<(), String> + Sync)) -> Result<i32> {
    process::become_subreaper()?;
    match cryopod_sys::clone::fork_via(before)? {
        Forked::Child => root_stub(plan),
        Forked::Parent(p) => Ok(p),
    }
}

fn report(plan: &StubPlan, line: &str) {
    let _ = io::write_all(plan.ready_w, line.as_bytes());
}

fn stub_main(plan: &StubPlan, pid: i32) -> ! {
    // Before anything else (children inherit our fds): the restorer alone
    // holds the lifeline's write end.
    fd::close_at(plan.lifeline_w);
    match stub_setup(plan, pid) {
        Ok(()) => {}
        Err(e) => {
            report(plan, &format!("E {pid} {}\n", crate::chain(&e).replace('\n', " ")));
            process::exit_now(1);
        }
    }
    io::wait_while_open(plan.lifeline_r)
}

fn stub_setup(plan: &StubPlan, pid: i32) -> Result<()> {
    // Everything blocked but SIGCHLD (an ignored SIGCHLD from a zombie child
    // is then discarded instead of staying pending) and SIGTRAP (raised by
    // the injection gadget; a forced signal that is blocked would have its
    // handler reset).
    signal::set_signal_mask(!((1u64 << (libc::SIGCHLD - 1)) | (1u64 << (libc::SIGTRAP - 1))));
    let p = plan
        .m
        .processes
        .iter()
        .find(|p| p.pid == pid)
        .ok_or_else(|| crate::EngineError::Other(format!("no record for pid {pid}")))?;
    if p.sid == pid {
        process::new_session()?;
        // Before forking: members get the terminal by inheriting it.
        if let Some(t) = plan.ctty.get(&pid) {
            cryopod_sys::tty::make_controlling(t)
                .map_err(|e| crate::EngineError::context("its controlling terminal".to_string())(e.into()))?;
        }
    }
    for &c in plan.children.get(&pid).map(|v| v.as_slice()).unwrap_or(&[]) {
        if let Forked::Child = fork_with_pid(c)? {
            stub_main(plan, c);
        }
    }
    if let Some(status) = p.zombie_status {
        if p.pgid == pid && p.sid != pid {
            process::set_process_group(0, 0)?;
        }
        report(plan, &format!("Z {pid}\n"));
        process::die_with_status(status);
    }
    let mut keep: Vec<TargetFd> = plan.keep.iter().map(TargetFd::of).collect();
    keep.push(TargetFd::of(plan.ready_w));
    keep.push(TargetFd::of(plan.lifeline_r));
    let cmd = plan.cmd.get(&pid).copied();
    keep.extend(cmd.map(TargetFd::of));
    for &(target, src, cloexec) in plan.fds.get(&pid).map(|v| v.as_slice()).unwrap_or(&[]) {
        fd::dup_to(src, target, cloexec)?;
        keep.push(target);
    }
    fd::close_all_but(&keep);
    report(plan, &format!("R {pid}\n"));
    if let (Some(unix), Some(cmd)) = (plan.unix, cmd) {
        serve_steps(plan, unix, p, cmd);
        fd::close_at(TargetFd::of(cmd));
    }
    // epoll entries are keyed by (file, fd number): register them once
    // every fd is at the number the process knows it by, unix sockets and
    // pidfds included (the socket steps above place them).
    register_epolls(plan, pid)?;
    report(plan, &format!("P {pid}\n"));
    fd::close_at(TargetFd::of(plan.ready_w));
    Ok(())
}

/// Fill this process's epoll instances, each through its own fd number.
fn register_epolls(plan: &StubPlan, pid: i32) -> Result<()> {
    for (epfd, entries) in plan.epolls.get(&pid).map(|v| v.as_slice()).unwrap_or(&[]) {
        for e in entries {
            let target = TargetFd(e.fd);
            let r = match e.file_at {
                None => events::epoll_add_at(pid, *epfd, target, e.events, e.data),
                Some((q, at)) if q == pid => {
                    events::epoll_add_through(pid, *epfd, target, TargetFd(at), e.events, e.data)
                }
                // Another process's file (every fd of the tree is in place
                // by now): a copy of it for the while.
                Some((q, at)) => cryopod_sys::pidfd::pidfd_open(q)
                    .and_then(|pfd| cryopod_sys::pidfd::pidfd_getfd(&pfd, q, TargetFd(at)))
                    .and_then(|copy| match TargetFd::of(&copy) == target {
                        // The number is free here: the copy is at it already.
                        true => events::epoll_add_at(pid, *epfd, target, e.events, e.data),
                        false => events::epoll_add_through(pid, *epfd, target, TargetFd::of(&copy), e.events, e.data),
                    }),
            };
            r.map_err(|e| crate::EngineError::context(format!("epoll fd {epfd}"))(e.into()))?;
        }
    }
    Ok(())
}

/// Run the socket steps the restorer asks this stub for, one line each,
/// until "Q" (or the restorer is gone).
fn serve_steps(plan: &StubPlan, unix: &crate::unix::plan::Plan, p: &Process, cmd: BorrowedFd) {
    let pid = p.pid;
    // The sockets this stub made, at their staging numbers, until the steps
    // that close them.
    let mut staged = crate::unix::plan::Staged::default();
    while let Some(i) = io::read_line(cmd).and_then(|l| l.parse::<usize>().ok()) {
        match unix.run(plan.m, p, i, &mut staged) {
            Ok(()) => report(plan, &format!("K {i}\n")),
            Err(e) => report(plan, &format!("E {pid} {}\n", crate::chain(&e).replace('\n', " "))),
        }
    }
}

/// Put every process in its process group. Leaders first, then members.
pub fn join_groups(m: &Manifest, remotes: &mut BTreeMap<i32, Remote>) -> Result<()> {
    let in_tree = |pid: i32| m.processes.iter().any(|p| p.pid == pid && p.zombie_status.is_none());
    for leaders_pass in [true, false] {
        for p in tree_order(m) {
            if p.zombie_status.is_some() || p.sid == p.pid {
                continue;
            }
            let is_leader = p.pgid == p.pid;
            if is_leader != leaders_pass || !(is_leader || in_tree(p.pgid)) {
                continue;
            }
            if let Some(r) = remotes.get_mut(&p.pid) {
                let target = if is_leader { 0 } else { p.pgid as u64 };
                r.call(&format!("setpgid({})", p.pgid), nr::SETPGID, &[0, target])?;
            }
        }
    }
    Ok(())
}
