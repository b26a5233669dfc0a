//! Checkpoint and restore of whole pods. A checkpoint freezes the pod's
//! cgroup, records the pod's own state (names, limits, network, mounts and
//! tmpfs files) and hands the frozen tree to the engine, which stores the
//! pod's processes with their in-pod PIDs. A restore builds a new pod from
//! that record (holder, cgroup, network), lets the engine fork the tree
//! into a fresh PID namespace, and records the pod under its (new) name.
//!
//! With a key (`--key`) the pod's files in the image are sealed like its
//! memory (`cryopod_image::seal`): the tmpfs archive, the SysV segments'
//! contents, and the copy of a detached pod's log. A restore opens each
//! one whole, authenticated, into memory of its own before anything of the
//! pod is made. (The log copy is optional, as without a key: removing it
//! loses only the old output; any change to it is refused.)

use crate::cgroup::Cgroup;
use crate::create::{Extra, Holder};
use crate::mounts;
use crate::state::{IpConfig, PodRecord, PodSpec, StateDir};
use crate::{net, PodError, Result};
use cryopod_engine::checkpoint::PodCheckpoint;
use cryopod_engine::guard::{Guard, Outcome};
use cryopod_engine::lazy::{LazyPages, Source};
use cryopod_engine::outdir::OutDir;
use cryopod_engine::restore::PodRestore;
use cryopod_engine::{
    CheckedImage, CheckpointOptions, CheckpointSummary, EngineError, Progress, RestoreOptions, RestoreOutcome,
};
use cryopod_image::seal::FileWriter;
use cryopod_image::{ImageDir, ImageKey, PodImage};
use serde::{Deserialize, Serialize};
use std::io::{Read, Seek};
use std::os::fd::{AsFd, BorrowedFd};
use std::os::unix::fs::MetadataExt;
use std::path::PathBuf;
use std::time::Duration;

/// The tmpfs archive's file name in an image.
const ARCHIVE: &str = "tmpfs.tar";
/// A copy of a detached pod's log, so the restored pod's log goes on.
const LOG_COPY: &str = cryopod_image::stream::POD_LOG;

/// An engine error; the pod says itself whether it was left running.
pub(crate) fn engine_err(e: EngineError) -> PodError {
    match e {
        EngineError::LeftRunning(inner) => PodError::Engine(*inner),
        e => PodError::Engine(e),
    }
}

/// What only a process inside the pod's UTS and network namespaces sees.
#[derive(Serialize, Deserialize)]
struct Inside {
    hostname: String,
    domainname: String,
    net: net::NetConfig,
}

fn read_inside() -> Result<Inside> {
    let read = |p: &str| std::fs::read_to_string(p).map(|s| s.trim().to_string()).map_err(PodError::io(p));
    Ok(Inside {
        hostname: read("/proc/sys/kernel/hostname")?,
        domainname: read("/proc/sys/kernel/domainname").map(|d| if d == "(none)" { String::new() } else { d })?,
        net: net::dump()?,
    })
}

/// The host name, domain name and network of the pod of `init`.
fn inside(init: i32) -> Result<Inside> {
    let flags = libc::CLONE_NEWUTS | libc::CLONE_NEWNET;
    crate::join::read_inside(init, flags, "the pod's host name and network", read_inside)
}

pub struct PodCheckpointOptions<'a> {
    pub name: String,
    pub dir: PathBuf,
    pub leave_running: bool,
    pub threads: usize,
    pub compress: cryopod_image::Compression,
    pub exclude_dontdump: bool,
    /// Connections to unix peers outside the pod (its host's /dev/log, a
    /// daemon's socket) kept by name (`--external-unix`).
    pub external_unix: bool,
    /// What the image builds on (`--parent`, `--store`).
    pub base: Option<&'a cryopod_image::chain::Base>,
    /// Dirty tracking of the pod's tree (`--track`): the pod is then read
    /// frozen (see `cryopod_engine::incremental`).
    pub tracker: Option<&'a std::sync::Mutex<cryopod_engine::track::Tracker>>,
    /// The key the image is sealed under (`--key`).
    pub key: Option<&'a ImageKey>,
    /// Keep the pod frozen with its network locked afterwards (a
    /// migration's source: see [`checkpoint_held`]).
    pub hold: bool,
    /// A live migration's pre-copy round: the pod runs again as soon as
    /// its state is taken, its pages are read while it runs (see
    /// `cryopod_engine::CheckpointOptions::precopy`).
    pub precopy: bool,
    /// With `hold`: its private anonymous pages are not read but listed,
    /// to be fetched once it runs elsewhere (a lazy migration: see
    /// `cryopod_engine::CheckpointOptions::leave_private`).
    pub leave_private: bool,
}

/// Checkpoint pod `o.name` into `o.dir` and keep it frozen, its network
/// locked: it is then either let go again or ended (see `crate::held`).
pub fn checkpoint_held(
    state: &StateDir,
    o: &PodCheckpointOptions<'_>,
    progress: Progress,
) -> Result<(CheckpointSummary, crate::held::HeldPod)> {
    if !o.hold || o.leave_running {
        return Err(PodError::Invalid("a held checkpoint is asked with hold and without leave_running".into()));
    }
    let s = checkpoint_once(state, o, false, progress)?;
    let rec = state.load(&o.name)?;
    Ok((s, crate::held::HeldPod::new(state, rec)?))
}

/// Checkpoint pod `o.name` into `o.dir`; unless `leave_running`, the pod
/// is then stopped and removed (it lives on in the image).
pub fn checkpoint(state: &StateDir, o: &PodCheckpointOptions<'_>, progress: Progress) -> Result<CheckpointSummary> {
    let t0 = std::time::Instant::now();
    match checkpoint_once(state, o, o.leave_running && o.tracker.is_none(), progress) {
        // Memory read while the pod ran could not be kept as it was at the
        // freeze: everything again, the pod frozen throughout.
        Err(PodError::LeftRunning(e)) if matches!(*e, PodError::Engine(EngineError::CowInexact(_))) => {
            let why = e.to_string();
            tracing::warn!("{why}; checkpointing again with the pod frozen throughout");
            let mut s = checkpoint_once(state, o, false, progress)?;
            s.elapsed = t0.elapsed();
            s.fallback = Some(why);
            Ok(s)
        }
        r => r,
    }
}

fn checkpoint_once(
    state: &StateDir,
    o: &PodCheckpointOptions<'_>,
    cow: bool,
    progress: Progress,
) -> Result<CheckpointSummary> {
    let rec = state.load(&o.name)?;
    if !rec.alive() {
        return Err(PodError::Invalid(format!("pod {} is not running: there is nothing to checkpoint", o.name)));
    }
    let cg = Cgroup::of(state, &o.name);
    if cg.freezer_state()? != "THAWED" {
        return Err(PodError::Invalid(format!("pod {} is frozen already (is another checkpoint running?)", o.name)));
    }
    let out = OutDir::prepare(&o.dir)?;
    // The areas' flags are read by a BPF program loaded now, not while
    // the pod is frozen.
    let flags = cryopod_engine::vmflags::prepare(rec.init_pid);
    // Should we die while the pod is frozen, the guardian thaws it (and
    // if it dies too, the next cryopod command, seeing our note).
    let guard = Guard::start(Outcome::Resume).map_err(engine_err)?;
    tracing::debug!(guard = guard.pid(), "guardian started");
    guard.thaw_on_abort(cg.freezer_file()?.as_fd()).map_err(engine_err)?;
    let note = state.dir(&o.name).join(crate::state::CHECKPOINTER);
    crate::state::note_owner(&note).map_err(PodError::io(&note))?;
    // A large pod's memory is write-protected before the freeze, while it
    // runs, so that the freeze stays short (see cryopod_engine::arm).
    let armed = match cow {
        true => cryopod_engine::arm::arm(rec.init_pid).unwrap_or_else(|e| {
            tracing::info!("not armed before the freeze ({e}): its memory is protected while frozen");
            None
        }),
        false => None,
    };
    // The network is locked from before the freeze until the pod runs again
    // (or, checkpointed, until it is gone). Not for a pre-copy round: its
    // image is never restored, so its connections need not hold still,
    // and the pod's peers lose nothing (their segments wait in the
    // sockets' queues while it is frozen, rather than be dropped and sent
    // again only after a retransmission timeout).
    let since = std::time::Instant::now();
    let locked = match o.precopy {
        true => Ok(()),
        false => lock_network(&rec, &guard),
    };
    let res = locked.and_then(|_| cg.freeze(Duration::from_secs(10))).and_then(|_| {
        checkpoint_frozen(
            state,
            &rec,
            &cg,
            o,
            Attempt { out: &out, since, cow, armed: armed.as_ref(), flags: &flags },
            &guard,
            progress,
        )
    });
    // Held: frozen and locked it stays (the note stays until the hold
    // ends: a cryopod command finding it with us gone thaws the pod).
    let held = o.hold && res.is_ok();
    if !held {
        let _ = cg.thaw();
        let _ = std::fs::remove_file(&note);
    }
    if res.is_err() || (o.leave_running && !o.hold) {
        crate::lifecycle::unlock_network(&rec);
    }
    // On failure, what was written goes when `out` is dropped unfinished.
    let summary = res.map_err(|e| PodError::LeftRunning(Box::new(e)))?;
    if !o.leave_running && !o.hold {
        // The engine killed every process of the pod.
        crate::lifecycle::wait_gone(&rec, Duration::from_secs(10));
        crate::lifecycle::cleanup(state, &rec)?;
    }
    Ok(summary)
}

/// One attempt at a pod checkpoint: its output directory, when the pod
/// was frozen, and whether memory may be read while the pod runs.
struct Attempt<'a> {
    out: &'a OutDir,
    since: std::time::Instant,
    cow: bool,
    armed: Option<&'a cryopod_engine::arm::Armed>,
    flags: &'a cryopod_engine::vmflags::Source,
}

/// Lock the pod's network (if it has one); the guardian unlocks it should
/// we die before the end of a checkpoint meant to leave it running.
fn lock_network(rec: &PodRecord, guard: &Guard) -> Result<()> {
    let Some(veth) = &rec.veth else { return Ok(()) };
    let nl = cryopod_sys::sock::netlink_route()?;
    guard.send_on_abort(Outcome::Resume, nl.as_fd(), &net::unlock_request(veth)?).map_err(engine_err)?;
    net::set_locked(veth, true)
}

fn checkpoint_frozen(
    state: &StateDir,
    rec: &PodRecord,
    cg: &Cgroup,
    o: &PodCheckpointOptions<'_>,
    Attempt { out, since: frozen_since, cow, armed, flags }: Attempt,
    guard: &Guard,
    progress: Progress,
) -> Result<CheckpointSummary> {
    let init = rec.init_pid;
    let root = format!("/proc/{init}/root");
    let info = inside(init)?;
    let read = |p: &str| std::fs::read_to_string(p).map_err(PodError::io(p));
    let pod_mounts = cryopod_engine::procfs::parse_mountinfo(&read(&format!("/proc/{init}/mountinfo"))?);
    let host_mounts = cryopod_engine::procfs::parse_mountinfo(&read("/proc/self/mountinfo")?);
    // A --userns pod's owners are recorded as the pod sees them.
    let pod_mounts = mounts::classify(&pod_mounts, rec.spec.rootfs.is_some(), &host_mounts, rec.spec.userns)?;
    let tmpfs_archive = if pod_mounts.iter().any(|m| matches!(m.kind, cryopod_image::pod::PodMountKind::Tmpfs { .. })) {
        let f = out.create(ARCHIVE)?;
        let (size, hash) = mounts::archive(&root, &pod_mounts, (f, &o.dir.join(ARCHIVE)), o.key)?;
        Some((ARCHIVE.to_string(), size, hash))
    } else {
        None
    };
    let limits = cg.limits()?;
    let mut ipc = crate::ipc::collect(init, out, o.key)?;
    if rec.spec.userns {
        crate::ipc::to_pod_ids(&mut ipc, |id| {
            crate::create::pod_id(u64::from(id)).ok_or_else(|| {
                PodError::Invalid(format!("an IPC object of the pod is owned by host id {id}, not the pod's"))
            })
        })?;
    }
    let image = PodImage {
        name: rec.name.clone(),
        hostname: info.hostname,
        domainname: info.domainname,
        rootfs: rec.spec.rootfs.as_ref().map(|p| p.display().to_string()),
        ip: rec.spec.ip.map(|i| (u32::from(i.addr), i.prefix)),
        memory: limits.memory,
        pids: limits.pids,
        cpus: limits.cpus,
        cmd: rec.cmd.clone(),
        detached: rec.detached,
        links: info.net.links,
        routes: info.net.routes,
        net_sysctls: info.net.sysctls,
        mounts: pod_mounts,
        tmpfs_archive,
        ipc,
        userns: rec.spec.userns,
    };
    // The log a detached pod writes to lives outside it: supplied again by
    // the restore.
    let mut external = Vec::new();
    if rec.detached {
        let log = state.log_path(&rec.name);
        let md = std::fs::metadata(&log).map_err(PodError::io(&log))?;
        external.push((md.dev(), md.ino(), "log".to_string()));
        // Its contents so far (the pod is frozen), for the restored pod's log.
        let copy = out.create(LOG_COPY)?;
        let mut src = std::fs::File::open(&log).map_err(PodError::io(&log))?;
        let err = PodError::io(o.dir.join(LOG_COPY));
        let mut w = FileWriter::new(o.key, LOG_COPY, std::io::BufWriter::new(copy)).map_err(PodError::io(&log))?;
        std::io::copy(&mut src, &mut w).and_then(|_| w.finish()).map_err(err)?;
    }
    // A pod left running hears the world again as it thaws (its memory
    // may still be being read); one that is to die stays locked until it
    // is gone. Frozen again (a retry), it is locked again.
    let thaw = || {
        // (Held: its network stays locked; frozen again before the engine
        // lets go of its tasks.)
        if o.leave_running && !o.hold {
            // (Thawed whatever happens; tried again at the end.)
            crate::lifecycle::unlock_network(rec);
        }
        cg.thaw().map_err(engine_err_back)
    };
    let refreeze = || {
        if let Some(v) = &rec.veth {
            net::set_locked(v, true).map_err(engine_err_back)?;
        }
        cg.freeze(Duration::from_secs(10)).map_err(engine_err_back)
    };
    let opts = CheckpointOptions {
        pid: init,
        dir: o.dir.clone(),
        // Held: not killed (the engine lets go of the tasks, which the
        // cgroup keeps frozen).
        leave_running: o.leave_running || o.hold,
        cow,
        threads: o.threads,
        compress: o.compress,
        key: o.key,
        exclude_dontdump: o.exclude_dontdump,
        external_unix: o.external_unix,
        base: o.base,
        tracker: o.tracker,
        precopy: o.precopy,
        leave_private: o.leave_private,
        pod: Some(PodCheckpoint {
            root,
            external,
            thaw: &thaw,
            refreeze: &refreeze,
            image,
            ids: rec.spec.userns.then_some((crate::create::USERNS_BASE, crate::create::USERNS_SIZE)),
            out,
            frozen_since,
            flags: flags.clone(),
            hold: o.hold,
        }),
        guard: Some(guard.clone()),
        armed,
    };
    cryopod_engine::checkpoint(&opts, progress).map_err(engine_err)
}

fn engine_err_back(e: PodError) -> EngineError {
    EngineError::Caller(Box::new(e))
}

/// The image's TCP connections on local address `addr`, as
/// "local ↔ remote".
fn connections_at(m: &cryopod_image::Manifest, addr: std::net::Ipv4Addr) -> Vec<String> {
    use cryopod_engine::inet::show;
    m.files
        .iter()
        .filter_map(|f| match &f.kind {
            cryopod_image::FileKind::Tcp(c) if c.local.0 == addr.octets() => {
                Some(format!("{} ↔ {}", show(c.family, &c.local.0, c.local.1), show(c.family, &c.remote.0, c.remote.1)))
            }
            _ => None,
        })
        .collect()
}

/// Is the restored pod at the address it had?
fn spec_ip_same(old: Option<std::net::Ipv4Addr>, new: Option<IpConfig>) -> bool {
    new.is_none_or(|n| Some(n.addr) == old)
}

/// A file the manifest names beside itself (name, size, BLAKE3 of the
/// file as stored), opened through the image and checked: a plain name, a
/// regular file of the image's owner, its size and hash as recorded; in a
/// sealed image, opened whole with the key into memory of its own. Returns
/// the contents, at their start.
pub(crate) fn checked_file(img: &ImageDir, (name, size, hash): &(String, u64, [u8; 32])) -> Result<std::fs::File> {
    let f = img.open_file(name)?;
    let damaged = || PodError::Invalid(format!("image: {} is damaged (size or hash differs)", f.path()));
    if f.size() != *size {
        return Err(damaged());
    }
    let mut r = Hashing { inner: f.file().take(*size), hash: blake3::Hasher::new(), len: 0 };
    let file = match img.key() {
        None => {
            std::io::copy(&mut r, &mut std::io::sink()).map_err(PodError::io(f.path()))?;
            f.file().try_clone().map_err(PodError::io(f.path()))?
        }
        Some(key) => {
            let mut plain = scratch(name)?;
            key.open_file(name, &mut r, *size, &mut plain)?;
            plain
        }
    };
    if r.len != *size || r.hash.finalize().as_bytes() != hash {
        return Err(damaged());
    }
    let mut file = file;
    file.rewind().map_err(PodError::io(f.path()))?;
    Ok(file)
}

/// A reader that hashes and counts what goes through it.
struct Hashing<R> {
    inner: R,
    hash: blake3::Hasher,
    len: u64,
}

impl<R: Read> Read for Hashing<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.hash.update(&buf[..n]);
        self.len += n as u64;
        Ok(n)
    }
}

/// Memory of our own (a memfd) for the opened contents of a sealed file.
fn scratch(name: &str) -> Result<std::fs::File> {
    let fd = rustix::fs::memfd_create("cryopod-opened", rustix::fs::MemfdFlags::CLOEXEC)
        .map_err(|e| PodError::io(format!("memory for {name}"))(e.into()))?;
    Ok(std::fs::File::from(fd))
}

/// The old log a detached pod's image holds, opened (with the key of a
/// sealed image) and appended to `log`.
fn copy_old_log(img: &ImageDir, log: &mut std::fs::File, path: &std::path::Path) -> Result<()> {
    let Some(old) = img.open_optional(LOG_COPY)? else { return Ok(()) };
    let mut r = old.file().take(old.size());
    match img.key() {
        None => std::io::copy(&mut r, log).map(|_| ()).map_err(PodError::io(path)),
        Some(key) => {
            // Whole and authenticated before a byte of it goes to the log.
            let mut plain = scratch(LOG_COPY)?;
            key.open_file(LOG_COPY, &mut r, old.size(), &mut plain)?;
            plain.rewind().map_err(PodError::io(path))?;
            std::io::copy(&mut plain, log).map(|_| ()).map_err(PodError::io(path))
        }
    }
}

/// Check the pod's own files in an image (tmpfs archive, SysV segment
/// contents) as a restore would; `inspect` and `check` use it too.
pub fn check_files(img: &ImageDir, pod: &PodImage) -> Result<()> {
    if let Some(rec) = &pod.tmpfs_archive {
        checked_file(img, rec)?;
    }
    crate::ipc::check_files(&pod.ipc, img)?;
    Ok(())
}

pub struct PodRestoreOptions<'a> {
    /// The image, opened once and checked (a pod image is root's).
    pub image: &'a CheckedImage,
    /// A new name (default: the pod's name in the image).
    pub name: Option<String>,
    /// A new address (default: the one in the image).
    pub ip: Option<IpConfig>,
    /// At a new address: give the connections on the old one back closed
    /// (reset) rather than refuse.
    pub tcp_close: bool,
    pub threads: usize,
    /// Keep the restored pod frozen, its network not attached (a
    /// migration's destination: see [`restore_held`]).
    pub hold: bool,
    /// The host's bridge for the pod's veth (`--bridge`; see
    /// `PodSpec::bridge`).
    pub bridge: Option<String>,
    /// With `hold`: fill the pod's private memory after it runs again (see
    /// `cryopod_engine::lazy` and `crate::held::LazyFill`).
    pub lazy: bool,
    /// Chunks checked already, as they arrived (a live migration's rounds).
    pub known: Option<&'a cryopod_image::store::KnownChunks>,
}

/// Restore the pod in `o.image` as a new pod; returns its record. (A
/// user's pod image never gets here: `CheckedImage` refuses it, since a
/// pod's record asks for mounts, a root file system, IPC objects and
/// addresses that only root may set up.)
pub fn restore(state: &StateDir, o: &PodRestoreOptions, progress: Progress) -> Result<(PodRecord, RestoreOutcome)> {
    if o.lazy {
        return Err(PodError::Invalid("a lazy restore is asked with hold".into()));
    }
    let (rec, outcome, guard, _) = restore_guarded(state, o, (None, None), progress)?;
    // The pod is recorded: handed over. Only then does the note that we
    // were making it go (a restore cut short between the two leaves a pod
    // the guardian killed, which the next command removes).
    drop(guard);
    let _ = std::fs::remove_file(state.dir(&rec.name).join(crate::state::CREATOR));
    Ok((rec, outcome))
}

/// Restore the pod in `o.image` (with `o.hold`) and keep it frozen, its
/// network not attached, until it is let go or undone (see
/// `crate::held`).
///
/// `remote` (with `o.lazy`): the pages the image left out, fetched from
/// the source (a lazy migration: see `cryopod_engine::lazy::remote`).
/// `warmth`, kept until the pod's processes are about to be forked (a
/// fork needs this process single-threaded), makes their cgroup moves
/// cheap (see [`crate::cgroup::Warmth`]).
pub fn restore_held(
    state: &StateDir,
    o: &PodRestoreOptions,
    remote: Option<cryopod_engine::lazy::Remote>,
    warmth: Option<crate::cgroup::Warmth>,
    progress: Progress,
) -> Result<(crate::held::HeldRestore, RestoreOutcome)> {
    if !o.hold || (remote.is_some() && !o.lazy) {
        return Err(PodError::Invalid("a held restore is asked with hold (and pages from the source, lazy)".into()));
    }
    let (rec, outcome, guard, lazy) = restore_guarded(state, o, (remote, warmth), progress)?;
    Ok((crate::held::HeldRestore::new(rec, guard, lazy), outcome))
}

/// A restore, with the guardian that kills the pod's processes should we
/// die before the caller hands the pod over.
fn restore_guarded(
    state: &StateDir,
    o: &PodRestoreOptions,
    (remote, warmth): (Option<cryopod_engine::lazy::Remote>, Option<crate::cgroup::Warmth>),
    progress: Progress,
) -> Result<(PodRecord, RestoreOutcome, Guard, Option<LazyPages>)> {
    let m = o.image.manifest();
    let pod = m.pod.clone().ok_or_else(|| PodError::Invalid("the image holds a process tree, not a pod".into()))?;
    // Before the pod's namespaces are made: a CPU without what the image's
    // CPU had is refused with nothing set up.
    cryopod_engine::cpu::check_image(&m.cpu).map_err(engine_err)?;
    cryopod_engine::ident::check_oom_scores(m).map_err(engine_err)?;
    let name = o.name.clone().unwrap_or_else(|| pod.name.clone());
    let moved_from = pod.ip.map(|(a, _)| std::net::Ipv4Addr::from(a)).filter(|&old| !spec_ip_same(Some(old), o.ip));
    if let (Some(old), false) = (moved_from, o.tcp_close) {
        let held = connections_at(m, old);
        if !held.is_empty() {
            return Err(PodError::Invalid(format!(
                "the pod holds TCP connections on its old address {old} ({}), which cannot move to {}; restore it at \
                 {old}, or add --tcp-close to restore it with them closed",
                held.join(", "),
                o.ip.map(|i| i.addr.to_string()).unwrap_or_default()
            )));
        }
    }
    let ip = match o.ip {
        Some(ip) => Some(ip),
        None => pod.ip.map(|(a, p)| IpConfig::parse(&format!("{}/{p}", std::net::Ipv4Addr::from(a)))).transpose()?,
    };
    let spec = PodSpec {
        hostname: pod.hostname.clone(),
        domainname: pod.domainname.clone(),
        rootfs: pod.rootfs.as_ref().map(PathBuf::from),
        ip,
        memory: pod.memory,
        pids: pod.pids,
        cpus: pod.cpus,
        userns: pod.userns,
        bridge: o.bridge.clone(),
    };
    // Every chunk checked (sealed: authenticated) before anything is made.
    let none = Default::default();
    let known = o.known.unwrap_or(&none);
    let packs = cryopod_engine::restore::verified_packs_but(o.image, o.threads, known, progress).map_err(engine_err)?;
    let packs = std::sync::Arc::new(packs);
    // Its thread starts with the first process filled, after every fork.
    let source = Source { chunks: m.chunks.clone(), reader: packs.clone(), remote };
    let mut lazy = o.lazy.then(|| LazyPages::new(source)).transpose().map_err(engine_err)?;
    // (Its thread goes just before the forks, the guardian's first: the
    // holder's move into the cgroup, and PID 1's after it, follow its last
    // move within a few milliseconds.)
    drop(warmth);
    // Should we die before the pod is recorded, every process made for it
    // dies (the next cryopod command removes what else is left of it).
    let guard = Guard::start(Outcome::Kill).map_err(engine_err)?;
    crate::create::reserve(state, &name, &spec)?;
    let res = restore_reserved(state, o, (&name, &pod, spec), (&guard, &packs, lazy.as_ref()), progress);
    if res.is_err() {
        state.release(&name);
    }
    if let Some(l) = lazy.as_mut() {
        l.sealed();
    }
    res.map(|(rec, outcome)| (rec, outcome, guard, lazy))
}

fn restore_reserved(
    state: &StateDir,
    o: &PodRestoreOptions,
    (name, pod, spec): (&str, &PodImage, PodSpec),
    (guard, packs, lazy): (&Guard, &cryopod_image::store::PackReader, Option<&LazyPages>),
    progress: Progress,
) -> Result<(PodRecord, RestoreOutcome)> {
    let img = o.image.dir();
    let archive = pod.tmpfs_archive.as_ref().map(|rec| checked_file(img, rec)).transpose()?;
    let shm_files = crate::ipc::check_files(&pod.ipc, img)?;
    let mut log = None;
    if pod.detached {
        let p = state.log_path(name);
        let mut f = std::fs::OpenOptions::new().create(true).append(true).open(&p).map_err(PodError::io(&p))?;
        copy_old_log(img, &mut f, &p)?;
        log = Some(f);
    }
    let inherit: Vec<(String, BorrowedFd)> = log.iter().map(|f| ("log".to_string(), f.as_fd())).collect();
    let net_cfg =
        net::NetConfig { links: pod.links.clone(), routes: pod.routes.clone(), sysctls: pod.net_sysctls.clone() };
    let old_ip = pod.ip.map(|(a, _)| std::net::Ipv4Addr::from(a));
    let extra = Extra {
        mounts: pod.mounts.clone(),
        archive,
        ipc: Some((pod.ipc.clone(), shm_files)),
        net: Some((net_cfg, old_ip)),
        // Back at its own address: its own hardware address too.
        mac: pod
            .links
            .iter()
            .find(|l| l.name == "eth0" && l.mac.len() == 6)
            .map(|l| l.mac.clone())
            .filter(|_| spec_ip_same(old_ip, o.ip)),
        // Nothing reaches the pod before its sockets are made and complete
        // (a peer's segment would meet no socket and reset its connection).
        attach_later: true,
    };
    let mut holder = Holder::create(state, name, &spec, &extra)?;
    if let Err(e) = cryopod_sys::pidfd::pidfd_open(holder.pid)
        .map_err(EngineError::from)
        .and_then(|pfd| guard.kill_on_abort(pfd.as_fd()))
    {
        holder.undo();
        return Err(engine_err(e));
    }
    let enter = || holder.enter().map_err(|e| cryopod_engine::chain(&e));
    // Held: nothing of the pod runs once let go by the engine (its
    // namespace holder, done, leaves the cgroup first: frozen, it could not
    // be let go).
    let holder_pid = holder.pid;
    let freeze_before_resume = || {
        tracing::debug!(holder = holder_pid, "held: the holder leaves the pod's cgroup, which is frozen");
        Cgroup::evict(holder_pid)
            .and_then(|_| Cgroup::of(state, name).freeze(Duration::from_secs(10)))
            .map_err(|e| cryopod_engine::chain(&e))
    };
    // A --userns pod: a go-between joins its user namespace first (its PID
    // namespace must belong to it), PID 1 then only settles in.
    let join_user = || holder.join_user().map_err(|e| cryopod_engine::chain(&e));
    let settle = || holder.settle().map_err(|e| cryopod_engine::chain(&e));
    let (enter, before_pid_ns): (&(dyn Fn() -> std::result::Result<(), String> + Sync), _) =
        if pod.userns { (&settle, Some(&join_user as _)) } else { (&enter, None) };
    let tcp_closed_at = old_ip.filter(|_| o.tcp_close && !spec_ip_same(old_ip, o.ip)).map(|a| a.octets().to_vec());
    let pod_restore = PodRestore {
        root: holder.root().display().to_string(),
        enter,
        before_pid_ns,
        inherit,
        ns_of: holder.pid,
        tcp_closed_at,
        packs,
        before_resume: o.hold.then_some(&freeze_before_resume as _),
        lazy,
    };
    let opts =
        RestoreOptions { image: o.image, threads: o.threads, pod: Some(pod_restore), guard: Some(guard.clone()) };
    let outcome = match cryopod_engine::restore(&opts, progress) {
        Ok(out) => out,
        Err(e) => {
            holder.undo();
            return Err(engine_err(e));
        }
    };
    let veth = holder.veth.clone();
    holder.release();
    // Its sockets are all there: the pod may hear the world again (held:
    // once it is let go).
    let unlocked = match o.hold {
        true => Ok(()),
        false => veth.as_deref().map_or(Ok(()), |v| net::attach(v, o.bridge.as_deref())),
    };
    if let Err(e) = unlocked.and_then(|_| crate::ipc::remove_marked(&pod.ipc, outcome.root_pid)) {
        let _ = cryopod_sys::process::kill(outcome.root_pid, libc::SIGKILL);
        let _ = cryopod_sys::process::waitpid(outcome.root_pid, 0);
        let _ = crate::lifecycle::cleanup_by_name(state, name, veth.clone());
        return Err(e);
    }
    let rec = PodRecord::new(name, outcome.root_pid, spec, pod.cmd.clone(), veth, pod.detached);
    state.save(&rec)?;
    Ok((rec, outcome))
}
