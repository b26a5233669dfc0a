//! Restore orchestration: validate the whole image before touching the
//! system, open files, fork the stub tree with the original PIDs, turn each
//! stub into its process by injected syscalls, then resume everything
//! together. A failure after the first fork kills every process created and
//! names the object that failed.

use crate::guard::{Guard, Outcome};
use crate::mm::{self, AreaCtx};
use crate::pidns::HostPids;
use crate::remote::{nr, Remote, SCRATCH_DATA};
use crate::tree::{self, StubPlan};
use crate::{fault, files, ident, signals, threads, EngineError, Progress, Result};
use cryopod_image::store::PackReader;
use cryopod_image::{Manifest, Process};
use cryopod_sys::inject::{own_syscall_site, Injector};
use cryopod_sys::ptrace::{self, Stop};
use cryopod_sys::{fd, io, pipe, process, sched, signal, tty, TargetFd, PAGE_SIZE};
use std::collections::{BTreeMap, HashMap, HashSet};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::time::{Duration, Instant};
use tracing::debug;

pub struct RestoreOptions<'a> {
    /// The image, opened once and checked against its owner.
    pub image: &'a crate::trust::CheckedImage,
    /// Threads used to verify page hashes and to fill memory.
    pub threads: usize,
    /// Set to restore a pod (the image must hold one).
    pub pod: Option<PodRestore<'a>>,
    /// A guardian started by the caller, who hands the tree over (commits)
    /// by dropping it once its own records are written (a pod's); else the
    /// restore starts its own and commits once every task runs.
    pub guard: Option<Guard>,
}

/// What restoring a pod adds: the namespaces were made by the caller.
pub struct PodRestore<'a> {
    /// The new pod's root directory as seen from here: the image's paths
    /// are opened under it.
    pub root: String,
    /// Runs in the pod's first process right after it is forked into a new
    /// PID namespace (joins the pod's other namespaces and cgroup).
    pub enter: &'a (dyn Fn() -> std::result::Result<(), String> + Sync),
    /// For a pod in its own user namespace, whose PID namespace must belong
    /// to it: runs in a go-between that joins the user namespace (and the
    /// others) before the PID namespace is made; `enter` then runs in PID 1.
    pub before_pid_ns: Option<&'a (dyn Fn() -> std::result::Result<(), String> + Sync)>,
    /// Files the image names as external, supplied as fds of ours.
    pub inherit: Vec<(String, BorrowedFd<'a>)>,
    /// A process already in the pod's IPC and network namespaces (its POSIX
    /// message queues and TCP listeners are made there).
    pub ns_of: i32,
    /// The pod's old address (bytes) when it comes back at another and
    /// the user asked for its connections there to be closed.
    pub tcp_closed_at: Option<Vec<u8>>,
    /// The image's packs, opened and verified by the caller before it made
    /// anything of the pod (a damaged or altered chunk must stop a restore
    /// before any process exists).
    pub packs: &'a PackReader,
    /// Runs once every process is made and every connection is out of
    /// repair, before the tasks are let go (a migration's destination
    /// freezes the pod's cgroup here, so that nothing of it runs before
    /// the source has let its copy go).
    pub before_resume: Option<&'a (dyn Fn() -> std::result::Result<(), String> + Sync)>,
    /// Private anonymous memory is left to this filler, which goes on
    /// after the restore returns (see [`crate::lazy`]); its processes are
    /// added to it as they are made, and it is sealed by the caller.
    pub lazy: Option<&'a crate::lazy::LazyPages>,
}

#[derive(Debug)]
pub struct RestoreOutcome {
    /// Host PID of the root (of the pod's first process).
    pub root_pid: i32,
    /// The root's process group, if it leads one of its own (a shell job).
    pub root_group: Option<i32>,
    pub processes: usize,
    pub threads: usize,
    pub memory_bytes: u64,
    pub elapsed: Duration,
}

/// Check that this machine can run the image at all (no process created).
/// `root` is where the image's paths are found ("" for a plain tree).
pub fn preflight(m: &Manifest, root: &str) -> Result<()> {
    crate::cpu::check_image(&m.cpu)?;
    ident::check_oom_scores(m)?;
    let vdso = own_vdso_hash()?;
    if vdso != m.vdso_hash {
        return Err(EngineError::Other(format!(
            "this kernel's vDSO differs from the one in the image (image taken on {}, this is {})",
            m.kernel,
            cryopod_sys::ns::kernel_release()
        )));
    }
    // A pod gets a PID namespace of its own: its PIDs cannot be taken.
    let pids_to_check = if m.pod.is_some() { &[][..] } else { &m.processes[..] };
    for p in pids_to_check {
        let ids = std::iter::once(p.pid).chain(p.threads.iter().map(|t| t.tid));
        for id in ids {
            // A zombie (e.g. of the checkpointed tree, orphaned to init) is
            // normally reaped at once; give a slow init a few seconds.
            let deadline = Instant::now() + Duration::from_secs(5);
            while crate::procfs::stat(id).map(|s| s.state == 'Z').unwrap_or(false) && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(20));
            }
            if let Ok(st) = std::fs::read_to_string(format!("/proc/{id}/stat")) {
                let who = st.split(") ").next().unwrap_or("").replace(" (", " ");
                let state = st.rsplit(") ").next().and_then(|r| r.split(' ').next()).unwrap_or("?").to_string();
                return Err(EngineError::PidTaken(id, format!("{who}, state {state}")));
            }
        }
    }
    files::check_mapped_files(m, root)?;
    crate::unix::check_external_peers(m, root)
}

fn own_vdso_hash() -> Result<[u8; 32]> {
    let me = std::process::id() as i32;
    for m in crate::procfs::maps(me)? {
        if m.path == "[vdso]" {
            let mut code = vec![0u8; (m.end - m.start) as usize];
            cryopod_sys::mem::read(me, m.start, &mut code)?;
            return Ok(*blake3::hash(&code).as_bytes());
        }
    }
    Err(EngineError::Other("this process has no vDSO".into()))
}

/// Open the packs of `image` and check every chunk (its hash; sealed,
/// its authenticity).
pub fn verified_packs(image: &crate::trust::CheckedImage, threads: usize, progress: Progress) -> Result<PackReader> {
    verified_packs_but(image, threads, &Default::default(), progress)
}

/// [`verified_packs`], but for the chunks `known` holds (checked when an
/// earlier image of the same packs arrived).
pub fn verified_packs_but(
    image: &crate::trust::CheckedImage,
    threads: usize,
    known: &cryopod_image::store::KnownChunks,
    progress: Progress,
) -> Result<PackReader> {
    let m = image.manifest();
    let reader = image.dir().packs(m)?;
    progress("verify", 0, 1);
    let t_verify = Instant::now();
    reader.verify_unknown(m, threads, known)?;
    debug!(ms = t_verify.elapsed().as_secs_f64() * 1e3, "page hashes verified");
    Ok(reader)
}

/// Restore the image `o.image`. Returns once every task runs.
pub fn restore(o: &RestoreOptions, progress: Progress) -> Result<RestoreOutcome> {
    let t0 = Instant::now();
    // Should we die before every task runs, every process of the image dies
    // (stubs also with their lifeline, seized ones with PTRACE_O_EXITKILL).
    let guard = match &o.guard {
        Some(g) => g.clone(),
        None => Guard::start(Outcome::Kill)?,
    };
    let m = o.image.manifest();
    // Every chunk is checked (and, sealed, authenticated) before anything
    // is made; a pod's were before its namespaces were.
    let opened;
    let reader = match &o.pod {
        Some(p) => p.packs,
        None => {
            opened = verified_packs(o.image, o.threads, progress)?;
            &opened
        }
    };
    let owner = o.image.owner().cloned();
    match (&o.pod, &m.pod) {
        (Some(_), None) => return Err(EngineError::Other("the image holds a process tree, not a pod".into())),
        (None, Some(p)) => {
            return Err(EngineError::Other(format!("the image holds pod {}: restore it as a pod", p.name)));
        }
        _ => {}
    }
    let fs_root = o.pod.as_ref().map(|p| p.root.clone()).unwrap_or_default();
    preflight(m, &fs_root)?;
    fault::check("restore-before-fork")?;

    // Re-create memfds and deleted files, and open every file description,
    // at fd numbers above any the tree uses.
    process::raise_nofile();
    let max_target = m.processes.iter().flat_map(|p| p.fds.iter().map(|f| f.fd)).max().unwrap_or(2);
    let base = (max_target + 1).max(16);
    // Files are opened with the image owner's file permissions.
    let old_fs = owner.as_ref().map(|o| cryopod_sys::creds::set_fs_ids(o.uid, o.gid));
    let inherit = o.pod.as_ref().map(|p| p.inherit.clone()).unwrap_or_default();
    let opened = files::create_objects(m, reader, base, &fs_root).and_then(|objects| {
        files::open_all(
            m,
            base,
            &objects,
            &fs_root,
            &inherit,
            o.pod.as_ref().map(|p| p.ns_of),
            o.pod.as_ref().and_then(|p| p.tcp_closed_at.as_deref()),
        )
        .map(|opened| (objects, opened))
    });
    if let Some((u, g)) = old_fs {
        cryopod_sys::creds::set_fs_ids(u, g);
    }
    // `_gone` removes the names made again for files whose names were gone
    // when the restore ends, however it ends.
    let (objects, files::Opened { srcs, conns, pairs, gone: _gone, cwds }) = opened?;
    // The numbers every stub inherits them at (closed in each by injection).
    let object_fds: HashMap<u32, TargetFd> = objects.iter().map(|(&k, v)| (k, TargetFd::of(v))).collect();
    let (ready_r, ready_w) = pipe::pipe()?;
    // (Moved, not copied: a second write end left open would keep the
    // pipes from ever reading their end.)
    let ready_w = fd::move_at_least(ready_w, base)?;
    let (life_r, life_w) = pipe::pipe()?;
    let life_r = fd::move_at_least(life_r, base)?;
    let life_w = fd::move_at_least(life_w, base)?;
    let mut fd_plan: BTreeMap<i32, Vec<(TargetFd, BorrowedFd, bool)>> = BTreeMap::new();
    for p in &m.processes {
        let v = p
            .fds
            .iter()
            .filter_map(|f| srcs[f.file as usize].as_ref().map(|s| (TargetFd(f.fd), s.as_fd(), f.cloexec)))
            .collect();
        fd_plan.insert(p.pid, v);
    }
    // Each epoll instance is filled in by its owner, through one of its fds.
    let mut epolls: BTreeMap<i32, Vec<tree::EpollSetup>> = BTreeMap::new();
    let mut seen_epolls = std::collections::HashSet::new();
    for p in &m.processes {
        for f in &p.fds {
            if let cryopod_image::FileKind::Epoll { owner, entries } = &m.files[f.file as usize].kind {
                if *owner == p.pid && seen_epolls.insert(f.file) {
                    epolls.entry(p.pid).or_default().push((TargetFd(f.fd), entries.clone()));
                }
            }
        }
    }
    // Unix sockets: made by the stubs, on request, at staging fds above
    // every fd they keep.
    let mut unix = crate::unix::plan::Plan::build(m, TargetFd(0))?;
    let mut cmd_r: BTreeMap<i32, OwnedFd> = BTreeMap::new();
    let mut cmd_w: BTreeMap<i32, OwnedFd> = BTreeMap::new();
    if !unix.steps.is_empty() {
        for p in m.processes.iter().filter(|p| p.zombie_status.is_none()) {
            let (r, w) = pipe::pipe()?;
            cmd_r.insert(p.pid, fd::move_at_least(r, base)?);
            cmd_w.insert(p.pid, w);
        }
        unix.stage = TargetFd(fd::highest_open_fd().0 + 1);
    }
    let plan = StubPlan {
        m,
        epolls,
        children: tree::children_map(m),
        fds: fd_plan,
        keep: objects.values().map(|o| o.as_fd()).collect(),
        ready_w: ready_w.as_fd(),
        lifeline_r: life_r.as_fd(),
        lifeline_w: TargetFd::of(&life_w),
        enter: o.pod.as_ref().map(|p| p.enter),
        before_pid_ns: o.pod.as_ref().and_then(|p| p.before_pid_ns),
        unix: (!unix.steps.is_empty()).then_some(&unix),
        cmd: cmd_r.iter().map(|(&p, f)| (p, f.as_fd())).collect(),
        ctty: m.processes.iter().filter_map(|p| crate::tty::ctty_source(p, &pairs).map(|fd| (p.pid, fd))).collect(),
    };
    // Memory that forked processes share: made once, here, for every stub
    // to inherit (a lazy restore's pages come later).
    let lazy = o.pod.as_ref().and_then(|p| p.lazy).is_some();
    let mut templates = match lazy {
        true => Default::default(),
        false => crate::forked_memory::Templates::prepare(m, reader, o.threads)?,
    };
    debug!("forking the stub tree");
    let root = tree::spawn(&plan);
    templates.release_own();
    let root = root?;
    // From here on these are numbers in the stubs' tables, which the
    // stubs inherited ours at.
    let stub_ready_w = TargetFd::of(plan.ready_w);
    let lifeline_r = TargetFd::of(plan.lifeline_r);
    let cmd_fds: BTreeMap<i32, TargetFd> = plan.cmd.iter().map(|(&p, f)| (p, TargetFd::of(f))).collect();
    drop(plan);
    drop(srcs);
    drop(objects);
    drop(ready_w);
    drop(life_r);
    drop(cmd_r);
    let created: Vec<i32> = m.processes.iter().map(|p| p.pid).collect();
    // Declared before the result: dropped (removed, on failure) after the
    // tree is killed and collected.
    let mut cgroups = crate::cgroups::Made::default();
    let res = wait_ready(m, &ready_r)
        .and_then(|placed| run_unix_steps(&unix, &cmd_w, &ready_r).map(|_| placed))
        .and_then(|placed| wait_placed(m, &ready_r, placed))
        .and_then(|_| {
            let mut pids = if m.pod.is_some() { HostPids::of_tree(root)? } else { HostPids::plain() };
            wait_zombies(m, &pids)?;
            cgroups.make(m, root)?;
            let b = Build {
                m,
                lazy: o.pod.as_ref().and_then(|p| p.lazy),
                reader,
                threads: o.threads,
                object_fds: &object_fds,
                ready_w: stub_ready_w,
                lifeline_r,
                guard: &guard,
                conns: &conns,
                cmd_fds: &cmd_fds,
                cwds: &cwds,
                cgroups: &cgroups,
                owner: owner.as_ref(),
                templates: &templates,
                before_resume: o.pod.as_ref().and_then(|p| p.before_resume),
                progress,
            };
            build_all(&b, &mut pids)
        });
    match res {
        Ok(()) => {
            cgroups.keep();
            let (mem, _) = m.memory_bytes();
            let root_rec = m.processes.iter().find(|p| p.pid == m.root_pid);
            Ok(RestoreOutcome {
                root_pid: root,
                root_group: root_rec.filter(|p| p.pgid == p.pid).map(|p| p.pgid),
                processes: m.processes.len(),
                threads: m.processes.iter().map(|p| p.threads.len()).sum(),
                memory_bytes: mem,
                elapsed: t0.elapsed(),
            })
        }
        Err(e) => {
            // A pod's processes all die with its first one.
            if m.pod.is_some() {
                let _ = process::kill(root, libc::SIGKILL);
            } else {
                for &p in created.iter().rev() {
                    let _ = process::kill(p, libc::SIGKILL);
                }
            }
            // Collect what dies, our tracees included: a pod's first process
            // ends only once every other process of its namespace is
            // collected, and we trace them.
            let deadline = Instant::now() + Duration::from_secs(10);
            while Instant::now() < deadline {
                match process::waitpid(-1, libc::WNOHANG) {
                    Ok((p, st)) if p == root && (libc::WIFEXITED(st) || libc::WIFSIGNALED(st)) => break,
                    Ok((0, _)) => std::thread::sleep(Duration::from_millis(1)),
                    Ok(_) => {}
                    Err(_) => break,
                }
            }
            Err(e)
        }
    }
}

/// One line from the readiness pipe.
fn read_report(r: &OwnedFd) -> Result<String> {
    io::read_line(r).ok_or_else(|| EngineError::Other("a restored process died before it was ready".into()))
}

/// Have the stubs run the unix socket steps, one at a time, in order.
fn run_unix_steps(unix: &crate::unix::plan::Plan, cmd_w: &BTreeMap<i32, OwnedFd>, ready_r: &OwnedFd) -> Result<()> {
    for (i, s) in unix.steps.iter().enumerate() {
        let w = cmd_w.get(&s.pid).ok_or_else(|| EngineError::Other(format!("no stub for process {}", s.pid)))?;
        io::write_all(w, format!("{i}\n").as_bytes())?;
        let line = read_report(ready_r)?;
        if line != format!("K {i}") {
            let msg = line.splitn(3, ' ').nth(2).unwrap_or(&line).to_string();
            return Err(EngineError::Restore {
                object: format!("unix sockets (process {}, step {:?})", s.pid, s.op),
                source: Box::new(EngineError::Other(msg)),
            });
        }
    }
    for w in cmd_w.values() {
        io::write_all(w, b"Q\n")?;
    }
    Ok(())
}

/// Read readiness lines until every process reported ("R", or "Z" for a
/// zombie). Returns the processes that also reported "P" (every fd in
/// place, epolls filled) meanwhile: those with no socket steps to wait for.
fn wait_ready(m: &Manifest, r: &OwnedFd) -> Result<HashSet<i32>> {
    let mut pending: HashSet<i32> = m.processes.iter().map(|p| p.pid).collect();
    let mut placed = HashSet::new();
    while !pending.is_empty() {
        match parse_report(&read_report(r)?)? {
            ('R' | 'Z', pid) => {
                pending.remove(&pid);
            }
            (_, pid) => {
                placed.insert(pid);
            }
        }
    }
    Ok(placed)
}

/// Read reports until every live process said "P": its fds are all at
/// their numbers (unix sockets and pidfds too) and its epoll instances
/// filled. Only then may it be seized.
fn wait_placed(m: &Manifest, r: &OwnedFd, mut placed: HashSet<i32>) -> Result<()> {
    let live = || m.processes.iter().filter(|p| p.zombie_status.is_none()).map(|p| p.pid);
    while live().any(|p| !placed.contains(&p)) {
        if let ('P', pid) = parse_report(&read_report(r)?)? {
            placed.insert(pid);
        }
    }
    Ok(())
}

/// A stub's report: its kind (R ready, Z zombie, P placed) and pid, or the
/// error it reported ("E pid message").
fn parse_report(line: &str) -> Result<(char, i32)> {
    let mut it = line.splitn(3, ' ');
    let kind = it.next().unwrap_or("");
    let pid: i32 = it.next().and_then(|x| x.parse().ok()).unwrap_or(0);
    match kind {
        "R" => Ok(('R', pid)),
        "Z" => Ok(('Z', pid)),
        "P" => Ok(('P', pid)),
        _ => Err(EngineError::Restore {
            object: format!("process {pid}"),
            source: Box::new(EngineError::Other(it.next().unwrap_or("failed").to_string())),
        }),
    }
}

/// Zombies must be dead before their parents are seized.
fn wait_zombies(m: &Manifest, pids: &HostPids) -> Result<()> {
    for p in m.processes.iter().filter(|p| p.zombie_status.is_some()) {
        let deadline = Instant::now() + Duration::from_secs(5);
        let host = pids.host(p.pid)?;
        while crate::procfs::stat(host).map(|s| s.state != 'Z').unwrap_or(false) {
            if Instant::now() > deadline {
                return Err(EngineError::Other(format!("zombie {} did not exit", p.pid)));
            }
            std::thread::sleep(Duration::from_micros(200));
        }
    }
    Ok(())
}

fn seize_stub(pid: i32) -> Result<()> {
    ptrace::seize(pid, ptrace::OPTS_RESTORE)?;
    ptrace::interrupt(pid)?;
    loop {
        match ptrace::wait(pid)? {
            Stop::Event(..) => return Ok(()),
            Stop::Signal(s) => ptrace::cont(pid, s)?,
            Stop::Syscall => ptrace::cont(pid, 0)?,
            Stop::Exited(_) | Stop::Killed(_) => return Err(EngineError::Other(format!("stub {pid} died"))),
        }
    }
}

/// What turning stubs into processes needs.
struct Build<'a> {
    m: &'a Manifest,
    /// See [`PodRestore::lazy`].
    lazy: Option<&'a crate::lazy::LazyPages>,
    reader: &'a PackReader,
    /// Threads for filling memory.
    threads: usize,
    /// The stubs' end of the readiness pipe (closed in each by injection).
    ready_w: TargetFd,
    /// The stubs' end of their lifeline (closed the same way).
    lifeline_r: TargetFd,
    /// Told every process, to kill should we die before the hand-over.
    guard: &'a Guard,
    /// Restored TCP connections, left in repair mode until the tree is made.
    conns: &'a [files::Connection],
    /// Each stub's end of its socket request pipe (closed the same way).
    cmd_fds: &'a BTreeMap<i32, TargetFd>,
    /// Working directories made again, by the cwd the image records.
    cwds: &'a HashMap<String, String>,
    /// The tree's own cgroups, made (processes move in once seized).
    cgroups: &'a crate::cgroups::Made,
    /// memfds and deleted files re-created by the restorer, inherited by
    /// every stub at these fd numbers.
    object_fds: &'a HashMap<u32, TargetFd>,
    /// Owner of a non-root image: files are opened with their permissions.
    owner: Option<&'a crate::trust::Owner>,
    /// Memory that forked processes share, inherited by every stub.
    templates: &'a crate::forked_memory::Templates,
    /// See [`PodRestore::before_resume`].
    before_resume: Option<&'a (dyn Fn() -> std::result::Result<(), String> + Sync)>,
    progress: Progress<'a>,
}

fn build_all(b: &Build, pids: &mut HostPids) -> Result<()> {
    let m = b.m;
    let order: Vec<&Process> = tree::tree_order(m).into_iter().filter(|p| p.zombie_status.is_none()).collect();
    // Injection is a ptrace round trip per syscall; across CPUs each wakeup
    // costs ~40 us in this VM, on one CPU ~10 us. Keep the restorer's main
    // thread and every stub on one CPU until the threads get their own
    // affinity back (page fill workers unpin themselves).
    let own_affinity = sched::get_affinity(0)?;
    let cpu = sched::one_cpu(sched::current_cpu());
    sched::set_affinity(0, &cpu)?;
    let res = build_all_pinned(b, &order, &cpu, pids);
    let _ = sched::set_affinity(0, &own_affinity);
    res
}

fn build_all_pinned(b: &Build, order: &[&Process], cpu: &[u64], pids: &mut HostPids) -> Result<()> {
    let (m, reader, threads) = (b.m, b.reader, b.threads);
    let mut remotes: BTreeMap<i32, Remote> = BTreeMap::new();
    for p in order {
        let host = pids.host(p.pid)?;
        sched::set_affinity(host, cpu)?;
        seize_stub(host).map_err(EngineError::during(format!("process {}", p.pid)))?;
        b.guard.kill_on_abort(cryopod_sys::pidfd::pidfd_open(host)?.as_fd())?;
        let inj = Injector::with_gadget(host, own_syscall_site())?;
        remotes.insert(p.pid, Remote::new(inj, host, p.pid, 0, SCRATCH_DATA));
    }
    debug!("all stubs seized");
    tree::join_groups(m, &mut remotes)?;
    for p in order {
        b.cgroups.move_in(p, pids.host(p.pid)?)?;
    }
    let mut shmem_home = HashMap::new();
    let total: u64 = m.memory_bytes().0;
    let mut done = 0u64;
    let mut all_threads: Vec<(i32, bool)> = Vec::new();
    for p in order {
        let r = remotes.get_mut(&p.pid).ok_or_else(|| EngineError::Other("lost a stub".into()))?;
        let mut cx = AreaCtx {
            m,
            reader,
            threads,
            shmem_home: &mut shmem_home,
            object_fds: b.object_fds,
            lazy: b.lazy,
            templates: b.templates,
        };
        build_process(b, r, p, &mut cx, pids).map_err(EngineError::during(format!("process {}", p.pid)))?;
        for t in &p.threads {
            all_threads.push((pids.host(t.tid)?, p.stopped && t.tid == p.pid));
        }
        done += p
            .vmas
            .iter()
            .flat_map(|v| &v.runs)
            .filter(|r| r.chunk.is_some())
            .map(|r| u64::from(r.pages) * PAGE_SIZE)
            .sum::<u64>();
        (b.progress)("memory", done, total);
    }
    fault::check("restore-before-resume")?;
    files::finish_connections(m, b.conns, b.guard)?;
    if let Some(f) = b.before_resume {
        f().map_err(|e| EngineError::Other(format!("before the pod resumes: {e}")))?;
    }
    // Processes stopped by job control go back to being stopped.
    for (t, stopped) in all_threads {
        ptrace::detach(t, if stopped { libc::SIGSTOP } else { 0 })?;
    }
    Ok(())
}

fn build_process(b: &Build, r: &mut Remote, p: &Process, cx: &mut AreaCtx, pids: &mut HostPids) -> Result<()> {
    let host = r.pid;
    // The stub inherited glibc's rseq registration; the kernel would fault
    // writing to it once the stub's memory is gone.
    if let Some((ptr, len, sig)) = ptrace::get_rseq(host)? {
        r.call("rseq(unregister stub)", nr::RSEQ, &[ptr, u64::from(len), 1, u64::from(sig)])?;
    }
    // Everything the stub opens by path (mapped files, exe, cwd) is checked
    // with the image owner's file permissions.
    if let Some(o) = b.owner {
        r.call("setfsgid", nr::SETFSGID, &[u64::from(o.gid)])?;
        r.call("setfsuid", nr::SETFSUID, &[u64::from(o.uid)])?;
    }
    let stub = mm::stub_layout(host)?;
    let scratch = mm::map_scratch(r, &stub, p)?;
    let scratch_len = PAGE_SIZE + SCRATCH_DATA;
    let target: Vec<(u64, u64)> = p.vmas.iter().map(|v| (v.start, v.end)).collect();
    debug!(pid = p.pid, "clearing the stub's memory");
    mm::clear_stub(r, &stub, (scratch, scratch + scratch_len), p, &target, &b.templates.taken_by(p))?;
    debug!(pid = p.pid, "mapping and filling memory");
    mm::restore_areas(r, p, cx)?;
    mm::lock_areas(r, p, cx.lazy.is_some())?;
    // The inherited object fds: mapped now; the process's own fds to them
    // were reopened separately.
    for fd in cx.object_fds.values() {
        r.raw(nr::CLOSE, &[fd.raw() as u64])?;
    }
    fault::check("restore-after-memory")?;
    // The stub closes the readiness pipe itself right after reporting, but
    // may have been seized just before doing so.
    r.raw(nr::CLOSE, &[b.ready_w.raw() as u64])?;
    r.raw(nr::CLOSE, &[b.lifeline_r.raw() as u64])?;
    if let Some(c) = b.cmd_fds.get(&p.pid) {
        r.raw(nr::CLOSE, &[c.raw() as u64])?;
    }
    debug!(pid = p.pid, "mm fields");
    ident::restore_mm(r, &p.mm).map_err(EngineError::during("mm fields (PR_SET_MM_MAP)"))?;
    debug!(pid = p.pid, "signals and timers");
    signals::restore_actions(r, &p.sigactions)?;
    signals::restore_itimers(r, &p.itimers)?;
    signals::restore_timers(r, &p.posix_timers)?;
    debug!(pid = p.pid, "process environment");
    // A user's image gets its resource limits only once it runs as the
    // user (below), set by the task itself: never above what it may set.
    ident::restore_loginuid(r, &p.attrs)?;
    let cwd = b.cwds.get(&p.cwd).map(String::as_str).unwrap_or(&p.cwd);
    ident::restore_process_env(r, p, cwd, b.owner.is_none())?;
    ident::restore_attrs(r, &p.attrs)?;
    crate::locks::take(r, &p.locks)?;
    crate::tty::set_foreground(r, p, cx.m)?;
    // Threads: create the others with their TIDs, then per-thread state.
    let leader = p.threads.first().ok_or_else(|| EngineError::Other("no leader thread".into()))?;
    let mut others: Vec<Remote> = Vec::new();
    for t in &p.threads[1..] {
        let tid = threads::create(r, t.tid).map_err(EngineError::during(format!("thread {}", t.tid)))?;
        others.push(Remote::new(Injector::with_gadget(tid, r.inj.site)?, host, p.pid, r.data, SCRATCH_DATA));
    }
    pids.add_threads(host)?;
    debug!(pid = p.pid, "threads");
    threads::restore_state(r, leader)?;
    for (o, t) in others.iter_mut().zip(&p.threads[1..]) {
        threads::restore_state(o, t).map_err(EngineError::during(format!("thread {}", t.tid)))?;
    }
    for (o, t) in others.iter_mut().zip(&p.threads[1..]) {
        ident::restore_creds(o, &p.creds).map_err(EngineError::during(format!("credentials of thread {}", t.tid)))?;
    }
    debug!(pid = p.pid, "credentials");
    ident::restore_creds(r, &p.creds).map_err(EngineError::during("credentials"))?;
    if b.owner.is_some() {
        ident::restore_rlimits_as_task(r, &p.rlimits)?;
    }
    // Nice values and dumpable once the credentials are final (they decide
    // what the task may set, and a change of credentials resets dumpable).
    for (o, t) in std::iter::once(&mut *r).chain(others.iter_mut()).zip(&p.threads) {
        if !threads::restore_nice(o, t)? {
            tracing::warn!(pid = p.pid, tid = t.tid, nice = t.attrs.nice, "cannot restore the nice value");
        }
    }
    ident::restore_dumpable(r, &p.attrs)?;
    // From here on, no more int3: SIGTRAP's own disposition is set last, and
    // the scratch page (holding the gadget) goes away.
    r.inj.gadget = false;
    for o in others.iter_mut() {
        o.inj.gadget = false;
    }
    signals::restore_trap_action(r, &p.sigactions)?;
    // Pending signals, while every signal is still blocked in the stub:
    // first drop any the stub itself received (the image's alone remain).
    signals::drain_pending(r)?;
    for info in &p.shared_pending {
        signals::queue(r, None, info)?;
    }
    // A thread's own signals are queued by the thread itself: the kernel
    // lets only the receiving thread queue a kill()/tgkill() siginfo.
    for info in &leader.pending {
        signals::queue(r, Some(leader.tid), info)?;
    }
    for (o, t) in others.iter_mut().zip(&p.threads[1..]) {
        for info in &t.pending {
            signals::queue(o, Some(t.tid), info).map_err(EngineError::during(format!("thread {}", t.tid)))?;
        }
    }
    debug!(pid = p.pid, "pending signals queued; unmapping the scratch area");
    // (After the process's last mapping: later ones would be locked. The
    // scratch area holds the syscall used to inject: unmapped after.)
    ident::restore_lock_future(r, &p.attrs)?;
    r.call("munmap(scratch)", nr::MUNMAP, &[scratch, scratch_len])?;
    // Seccomp filters last of all, through the vDSO's syscall instruction.
    if p.threads.iter().any(|t| !t.seccomp.is_empty() || t.attrs.seccomp_strict) {
        let site = mm::vdso_syscall_site(host, &p.vmas)?;
        let hosts = p.threads.iter().map(|t| Ok((pids.host(t.tid)?, t))).collect::<Result<Vec<_>>>()?;
        threads::install_seccomp(host, &hosts, site, &p.vmas)?;
    }
    for t in &p.threads {
        threads::set_final(pids.host(t.tid)?, t, &b.m.cpu)
            .map_err(EngineError::during(format!("registers of thread {}", t.tid)))?;
    }
    Ok(())
}

/// Wait for the restored root (our child) and turn its end into an exit
/// code: its exit status, or 128 + the signal that killed it. Like a shell
/// running a job in the foreground: if we own the terminal on stdin and the
/// job has its own process group, the job gets the terminal while it runs,
/// and we take it back afterwards. Termination and user signals sent to us
/// meanwhile are passed on to the job.
pub fn wait_root(root: i32, job_group: Option<i32>) -> Result<i32> {
    let ours = process::own_group();
    let stdin = std::io::stdin();
    let handed = match job_group {
        Some(g) if g != ours && tty::foreground_group(&stdin) == Some(ours) => {
            tty::set_foreground_group(&stdin, g).is_ok()
        }
        _ => false,
    };
    // Signals sent to us (a supervisor stopping the job) go to the job.
    let forwarded =
        [libc::SIGTERM, libc::SIGINT, libc::SIGHUP, libc::SIGQUIT, libc::SIGUSR1, libc::SIGUSR2, libc::SIGCONT];
    signal::forward_signals(root, &forwarded)?;
    let res = wait_exit(root);
    if handed {
        let _ = tty::set_foreground_group(&stdin, ours);
    }
    res
}

fn wait_exit(root: i32) -> Result<i32> {
    loop {
        let (_, status) = process::waitpid(root, 0)?;
        if libc::WIFEXITED(status) || libc::WIFSIGNALED(status) {
            return Ok(process::exit_code(status));
        }
    }
}
