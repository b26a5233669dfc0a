//! Creating a pod: cgroup, a holder process that builds the namespaces
//! (all but PID), the host half of the network, then the pod's PID 1 forked
//! into a new PID namespace, joining the holder's namespaces and its cgroup.
//! `run` starts `cryopod-init` as PID 1; a restore forks its own stub there
//! with the same [`Holder::enter`] step. Any failure undoes what was made.

use crate::cgroup::{Cgroup, Limits};
use crate::state::{IpConfig, PodRecord, PodSpec, StateDir};
use crate::{fs, net, PodError, Result};
use cryopod_sys::clone::{fork_via, fork_with, fork_with_pid, Forked};
use cryopod_sys::{creds, events, exec, fd, io, ns, pidfd, pipe, process, Errno, SysError, TargetFd};
use std::os::fd::{AsRawFd, OwnedFd};
use std::path::PathBuf;
use std::time::Duration;

/// Host uids and gids that a `--userns` pod's 0..65535 map to.
pub const USERNS_BASE: u32 = 100_000;
pub const USERNS_SIZE: u32 = 65_536;

/// A host id as a `--userns` pod sees it (None: not mapped into it).
pub fn pod_id(host: u64) -> Option<u32> {
    host.checked_sub(u64::from(USERNS_BASE)).filter(|&v| v < u64::from(USERNS_SIZE)).map(|v| v as u32)
}

/// Namespaces a pod's processes share with the holder (PID is separate).
pub const POD_NS: i32 =
    libc::CLONE_NEWNS | libc::CLONE_NEWUTS | libc::CLONE_NEWIPC | libc::CLONE_NEWNET | libc::CLONE_NEWCGROUP;

/// What a restored pod gets beyond the standard setup: the mounts it had
/// made, and the files of its tmpfs mounts.
#[derive(Default)]
pub struct Extra {
    pub mounts: Vec<cryopod_image::pod::PodMount>,
    pub archive: Option<std::fs::File>,
    /// IPC objects, with the (checked) files of the segments' contents.
    pub ipc: Option<(cryopod_image::pod::PodIpc, Vec<std::fs::File>)>,
    /// Network configuration the pod had, and the address it had.
    pub net: Option<(net::NetConfig, Option<std::net::Ipv4Addr>)>,
    /// eth0's hardware address, for a pod back at its own address.
    pub mac: Option<Vec<u8>>,
    /// A restore: the host end of the veth joins the bridge only once every
    /// socket is made (`net::attach`).
    pub attach_later: bool,
}

/// A process holding a pod's new namespaces until its PID 1 has joined them.
pub struct Holder {
    pub pid: i32,
    pidfd: OwnedFd,
    cmd_w: Option<OwnedFd>,
    pub cgroup: Cgroup,
    /// Host end of the veth, if the pod has an address.
    pub veth: Option<String>,
    /// proc mounts of the pod's own, made by its PID 1 (in its PID namespace).
    proc_mounts: Vec<cryopod_image::pod::PodMount>,
    /// The rootfs PID 1 pivots into itself (`--userns` pods).
    pivot_later: Option<PathBuf>,
    /// The pod has a root file system of its own.
    in_rootfs: bool,
}

fn expect_ready(status: &OwnedFd, what: &str) -> Result<()> {
    match io::read_line(status) {
        Some(l) if l == "R" => Ok(()),
        Some(l) => Err(PodError::Invalid(format!("{what}: {}", l.strip_prefix("E ").unwrap_or(&l)))),
        None => Err(PodError::Invalid(format!("{what}: the namespace holder died"))),
    }
}

impl Holder {
    /// Create the cgroup, the namespaces and the network of pod `name`.
    pub fn create(state: &StateDir, name: &str, spec: &PodSpec, extra: &Extra) -> Result<Holder> {
        let cgroup = Cgroup::of(state, name);
        let t = std::time::Instant::now();
        cgroup.create(&Limits { memory: spec.memory, pids: spec.pids, cpus: spec.cpus })?;
        let (status_r, status_w) = pipe::pipe()?;
        let (cmd_r, cmd_w) = pipe::pipe()?;
        let pid = match fork_with_pid(0) {
            Ok(Forked::Child) => {
                drop((status_r, cmd_w));
                let r = holder_main(name, spec, extra, &cgroup, &cmd_r, &status_w);
                if let Err(e) = r {
                    let _ = io::write_all(&status_w, format!("E {e}\n").as_bytes());
                }
                process::exit_now(0)
            }
            Ok(Forked::Parent(p)) => p,
            Err(e) => {
                let _ = cgroup.remove(Duration::from_secs(1));
                return Err(e.into());
            }
        };
        drop((status_w, cmd_r));
        let pidfd = pidfd::pidfd_open(pid);
        let proc_mounts = extra.mounts.iter().filter(|m| is_proc(m)).cloned().collect();
        let pivot_later = spec.rootfs.clone().filter(|_| spec.userns);
        let in_rootfs = spec.rootfs.is_some();
        let mut h =
            Holder { pid, pidfd: pidfd?, cmd_w: Some(cmd_w), cgroup, veth: None, proc_mounts, pivot_later, in_rootfs };
        let res = (|| {
            if spec.userns {
                // The holder made its user namespace: map the pod's ids.
                expect_ready(&status_r, "creating the pod's user namespace")?;
                for (file, what) in [("uid_map", "uid"), ("gid_map", "gid")] {
                    let p = format!("/proc/{pid}/{file}");
                    std::fs::write(&p, format!("0 {USERNS_BASE} {USERNS_SIZE}\n"))
                        .map_err(|e| PodError::Invalid(format!("mapping the pod's {what}s ({p}): {e}")))?;
                }
                h.command("M")?;
            }
            expect_ready(&status_r, "creating the pod's namespaces")?;
            tracing::debug!(ms = t.elapsed().as_secs_f64() * 1e3, "pod: cgroup and namespaces made");
            if let Some(ip) = &spec.ip {
                h.veth = Some(net::host_setup(name, ip, pid, !extra.attach_later, spec.bridge.as_deref())?);
                h.command("N")?;
                expect_ready(&status_r, "configuring the pod's network")?;
                tracing::debug!(ms = t.elapsed().as_secs_f64() * 1e3, "pod: network made");
            }
            Ok(())
        })();
        if let Err(e) = res {
            h.undo();
            return Err(e);
        }
        Ok(h)
    }

    /// Tell the holder what to do next ("M": ids mapped, "N": network).
    fn command(&self, c: &str) -> Result<()> {
        // Released: the write fails as on a closed descriptor.
        let w = self.cmd_w.as_ref().ok_or_else(|| SysError::new("write", 0, Errno(libc::EBADF)))?;
        Ok(io::write_all(w, format!("{c}\n").as_bytes())?)
    }

    /// In the pod's freshly forked PID 1: join the cgroup and the holder's
    /// namespaces, then mount the pod's own /proc.
    pub fn enter(&self) -> Result<()> {
        self.join(0)?;
        self.settle()
    }

    /// Join the cgroup and the holder's namespaces (and `extra` ones).
    fn join(&self, extra: i32) -> Result<()> {
        self.cgroup.join(0)?;
        ns::enter(&self.pidfd, self.pid, POD_NS | extra)?;
        Ok(())
    }

    /// As the pod's PID 1: its own /proc (and proc mounts), cwd /.
    pub fn settle(&self) -> Result<()> {
        match &self.pivot_later {
            Some(root) => {
                fs::mount_proc(&root.display().to_string())?;
                fs::pivot_into(root)?;
            }
            None => fs::mount_proc("")?,
        }
        for m in &self.proc_mounts {
            crate::mounts::apply(m, "", self.in_rootfs)?;
        }
        ns::chdir("/")?;
        Ok(())
    }

    /// The holder's view of the pod's root (open pod files from the host).
    pub fn root(&self) -> PathBuf {
        match &self.pivot_later {
            // Not pivoted into yet: the rootfs inside the holder's view.
            Some(r) => PathBuf::from(format!("/proc/{}/root{}", self.pid, r.display())),
            None => PathBuf::from(format!("/proc/{}/root", self.pid)),
        }
    }

    /// In a go-between of a `--userns` pod: join its user namespace (as its
    /// root) and the holder's others, before making the PID namespace.
    pub fn join_user(&self) -> Result<()> {
        self.join(libc::CLONE_NEWUSER)?;
        Ok(creds::become_root()?)
    }

    /// The pod's PID 1 has joined: let the holder go.
    pub fn release(mut self) {
        self.cmd_w = None;
        let _ = process::waitpid(self.pid, 0);
    }

    /// Undo everything: holder gone (its namespaces with it), veth, cgroup.
    pub fn undo(&mut self) {
        self.cmd_w = None;
        let _ = process::kill(self.pid, libc::SIGKILL);
        let _ = process::waitpid(self.pid, 0);
        let _ = net::remove_veth(self.veth.take().as_deref());
        let _ = self.cgroup.remove(Duration::from_secs(2));
    }
}

fn is_proc(m: &cryopod_image::pod::PodMount) -> bool {
    matches!(&m.kind, cryopod_image::pod::PodMountKind::Fresh { fstype } if fstype == "proc")
}

fn holder_main(name: &str, spec: &PodSpec, extra: &Extra, cg: &Cgroup, cmd: &OwnedFd, status: &OwnedFd) -> Result<()> {
    cg.join(0)?;
    if spec.userns {
        // Everything else is then owned by the pod's user namespace; the
        // parent maps its ids before we go on.
        ns::unshare(libc::CLONE_NEWUSER)?;
        io::write_all(status, b"R\n")?;
        if io::read_line(cmd).as_deref() != Some("M") {
            return Err(PodError::Invalid("the pod's ids were not mapped".into()));
        }
        creds::become_root()?;
    }
    ns::unshare(POD_NS)?;
    // While the host's /proc (and the image) are still in view.
    if let Some((ipc, files)) = &extra.ipc {
        crate::ipc::restore(ipc, files)?;
    }
    if !spec.hostname.is_empty() {
        ns::set_hostname(&spec.hostname)?;
    }
    if !spec.domainname.is_empty() {
        ns::set_domainname(&spec.domainname)?;
    }
    fs::setup(spec.rootfs.as_deref(), !spec.userns)?;
    // Not pivoted yet (a --userns pod): the pod's root is the rootfs here.
    let root = match &spec.rootfs {
        Some(r) if spec.userns => r.display().to_string(),
        _ => String::new(),
    };
    let standard = crate::mounts::standard(spec.rootfs.is_some());
    for m in extra.mounts.iter().filter(|m| !is_proc(m) && !standard.contains(&m.target.as_str())) {
        crate::mounts::apply(m, &root, spec.rootfs.is_some())?;
    }
    if let Some(a) = &extra.archive {
        let a = a.try_clone().map_err(PodError::io("tmpfs archive"))?;
        crate::mounts::unpack(a, &extra.mounts, &root, spec.userns)?;
    }
    net::pod_setup(name, None, None, false)?;
    let extra_net = || match &extra.net {
        Some((cfg, old)) => net::apply_extra(cfg, *old),
        None => Ok(()),
    };
    if spec.ip.is_none() {
        extra_net()?;
    }
    io::write_all(status, b"R\n")?;
    // Commands until the parent lets go (end of file).
    while let Some(c) = io::read_line(cmd) {
        if c == "N" {
            net::pod_setup(name, spec.ip.as_ref(), extra.mac.as_deref(), spec.bridge.is_none())?;
            extra_net()?;
            io::write_all(status, b"R\n")?;
        }
    }
    Ok(())
}

/// Refuse an address another pod or this host already uses.
pub fn check_ip_free(state: &StateDir, ip: &IpConfig) -> Result<()> {
    for p in state.list()? {
        if p.spec.ip.map(|i| i.addr) == Some(ip.addr) {
            return Err(PodError::Invalid(format!("address {} is already used by pod {}", ip.addr, p.name)));
        }
    }
    if net::addresses()?.contains(&ip.addr) {
        return Err(PodError::Invalid(format!("address {} is already in use on this host", ip.addr)));
    }
    Ok(())
}

/// What `cryopod run` asks for.
pub struct RunOptions {
    pub name: String,
    pub spec: PodSpec,
    pub cmd: Vec<String>,
    pub detached: bool,
}

/// Start a pod running `o.cmd` under `cryopod-init` (the program's bytes in
/// `init_program`). Returns its record once PID 1 runs.
pub fn run(state: &StateDir, o: &RunOptions, init_program: &[u8]) -> Result<PodRecord> {
    if o.cmd.is_empty() {
        return Err(PodError::Invalid("no command given to run in the pod".into()));
    }
    let dir = reserve(state, &o.name, &o.spec)?;
    let res = start(state, o, init_program, &dir);
    if res.is_err() {
        state.release(&o.name);
    }
    res
}

/// What a new pod (run or restored) needs before anything is made: a
/// usable rootfs, the cgroup controllers, its name (reserved here), no
/// cgroup of that name left over, a free address. Returns the pod's state
/// directory; on a failure the name is free again.
pub fn reserve(state: &StateDir, name: &str, spec: &PodSpec) -> Result<PathBuf> {
    if let Some(r) = &spec.rootfs {
        fs::check_rootfs(r)?;
    }
    Cgroup::check_host()?;
    let dir = state.reserve(name)?;
    let res = (|| {
        if Cgroup::of(state, name).exists() {
            return Err(PodError::Invalid(format!("a cgroup for pod {name} is left over; remove it first")));
        }
        match &spec.ip {
            Some(ip) => check_ip_free(state, ip),
            None => Ok(()),
        }
    })();
    if let Err(e) = res {
        state.release(name);
        return Err(e);
    }
    Ok(dir)
}

fn start(state: &StateDir, o: &RunOptions, init_program: &[u8], dir: &std::path::Path) -> Result<PodRecord> {
    let memfd = events::memfd_create("cryopod-init")?;
    std::fs::write(format!("/proc/self/fd/{}", memfd.as_raw_fd()), init_program)
        .map_err(PodError::io("the cryopod-init memfd"))?;
    let log = if o.detached {
        let p = dir.join("log");
        Some(std::fs::OpenOptions::new().create(true).append(true).open(&p).map_err(PodError::io(&p))?)
    } else {
        None
    };
    let mut holder = Holder::create(state, &o.name, &o.spec, &Extra::default())?;
    let (err_r, err_w) = pipe::pipe()?;
    let exec_init = || -> Result<()> {
        // The pod is a session of its own from the first instant the
        // caller can see it (cryopod-init makes sure too, but only once it
        // runs: a checkpoint right after `run -d` would find the caller's
        // process group in the pod).
        cryopod_sys::process::new_session()?;
        if let Some(l) = &log {
            fd::dup_to(l, TargetFd(1), false)?;
            fd::dup_to(l, TargetFd(2), false)?;
            let null = std::fs::File::open("/dev/null").map_err(PodError::io("/dev/null"))?;
            fd::place(null.into(), TargetFd(0), false)?;
        }
        let mut argv = vec!["cryopod-init".to_string()];
        argv.extend(o.cmd.iter().cloned());
        Err(exec::exec_fd(&memfd, &argv).into())
    };
    // In PID 1: become cryopod-init; a failure is reported, then PID 1 exits.
    let first = |enter: &dyn Fn() -> Result<()>| {
        if let Err(e) = enter().and_then(|_| exec_init()) {
            let _ = io::write_all(&err_w, cryopod_engine::chain(&e).as_bytes());
        }
        process::exit_now(127)
    };
    let forked = if o.spec.userns {
        fork_in_userns(&holder, &|| first(&|| holder.settle()))
    } else {
        fork_with(libc::CLONE_NEWPID as u64, 0).map_err(PodError::from)
    };
    match forked {
        Ok(Forked::Child) => {
            first(&|| holder.enter());
            process::exit_now(127)
        }
        Ok(Forked::Parent(init)) => {
            drop(err_w);
            // The exec closes our pipe; a message means it failed.
            let mut msg = Vec::new();
            let _ = std::io::Read::read_to_end(&mut std::fs::File::from(err_r), &mut msg);
            if !msg.is_empty() {
                let _ = process::waitpid(init, 0);
                holder.undo();
                return Err(PodError::Invalid(format!("starting the pod: {}", String::from_utf8_lossy(&msg))));
            }
            let veth = holder.veth.clone();
            holder.release();
            let rec = PodRecord::new(&o.name, init, o.spec.clone(), o.cmd.clone(), veth, o.detached);
            state.save(&rec)?;
            let _ = std::fs::remove_file(dir.join(crate::state::CREATOR));
            Ok(rec)
        }
        Err(e) => {
            holder.undo();
            Err(e)
        }
    }
}

/// The PID namespace of a `--userns` pod must belong to its user
/// namespace (or its /proc cannot be mounted): a go-between joins the
/// holder's namespaces, then makes the PID namespace; PID 1 runs `first`
/// (callers are subreapers, so PID 1 comes back to them).
fn fork_in_userns(holder: &Holder, first: &dyn Fn()) -> Result<Forked> {
    match fork_via(&|| holder.join_user().map_err(|e| cryopod_engine::chain(&e)))? {
        Forked::Child => {
            first();
            process::exit_now(127)
        }
        parent => Ok(parent),
    }
}
