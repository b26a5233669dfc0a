//! Identity and limits: credentials (uids, gids, groups, capabilities,
//! securebits, no_new_privs), resource limits, umask, cwd, root,
//! personality, and the mm fields behind /proc/pid/{cmdline,environ,exe}
//! (restored with PR_SET_MM_MAP).

use crate::procfs;
use crate::remote::{nr, words, Remote};
use crate::Result;
use cryopod_image::{Creds, MmInfo, ProcAttrs, Process};

const PR_GET_SECUREBITS: u64 = 27;
const PR_SET_SECUREBITS: u64 = 28;
const PR_SET_KEEPCAPS: u64 = 8;
const PR_CAPBSET_DROP: u64 = 24;
const PR_CAP_AMBIENT: u64 = 47;
const PR_CAP_AMBIENT_RAISE: u64 = 2;
const PR_SET_NO_NEW_PRIVS: u64 = 38;
const PR_SET_MM: u64 = 35;
const PR_SET_MM_MAP: u64 = 14;
const PR_SET_DUMPABLE: u64 = 4;
const PR_GET_DUMPABLE: u64 = 3;
const PR_SET_CHILD_SUBREAPER: u64 = 36;
const PR_GET_CHILD_SUBREAPER: u64 = 37;
const PR_SET_THP_DISABLE: u64 = 41;
const PR_GET_THP_DISABLE: u64 = 42;
const PR_SET_MEMORY_MERGE: u64 = 67;
const PR_GET_MEMORY_MERGE: u64 = 68;
const CAP_VERSION_3: u32 = 0x2008_0522;
const SECBIT_KEEP_CAPS: u32 = 1 << 4;

pub fn collect_creds(r: &mut Remote) -> Result<Creds> {
    let st = procfs::read(r.pid, "status")?;
    let groups = procfs::status_field(&st, "Groups")
        .map(|g| g.split_whitespace().filter_map(|x| x.parse().ok()).collect())
        .unwrap_or_default();
    let securebits = r.call("prctl(PR_GET_SECUREBITS)", nr::PRCTL, &[PR_GET_SECUREBITS])? as u32;
    Ok(Creds {
        uids: procfs::status_ids(&st, "Uid"),
        gids: procfs::status_ids(&st, "Gid"),
        groups,
        cap_inh: procfs::status_hex(&st, "CapInh"),
        cap_prm: procfs::status_hex(&st, "CapPrm"),
        cap_eff: procfs::status_hex(&st, "CapEff"),
        cap_bnd: procfs::status_hex(&st, "CapBnd"),
        cap_amb: procfs::status_hex(&st, "CapAmb"),
        securebits,
        no_new_privs: procfs::status_field(&st, "NoNewPrivs").as_deref() == Some("1"),
    })
}

/// Set the credentials of one thread (creds are per thread in Linux). Done
/// last, since dropping privilege ends what we may inject.
pub fn restore_creds(r: &mut Remote, c: &Creds) -> Result<()> {
    let last_cap = std::fs::read_to_string("/proc/sys/kernel/cap_last_cap")
        .ok()
        .and_then(|s| s.trim().parse::<u64>().ok())
        .unwrap_or(40);
    for cap in 0..=last_cap {
        if c.cap_bnd & (1 << cap) == 0 {
            r.call("prctl(PR_CAPBSET_DROP)", nr::PRCTL, &[PR_CAPBSET_DROP, cap])?;
        }
    }
    if !c.groups.is_empty() || c.uids[0] != 0 {
        let g: Vec<u8> = c.groups.iter().flat_map(|x| x.to_ne_bytes()).collect();
        let a = if g.is_empty() { r.data } else { r.put(0, &g)? };
        r.call("setgroups", nr::SETGROUPS, &[c.groups.len() as u64, a])?;
    }
    r.call("setresgid", nr::SETRESGID, &[u64::from(c.gids[0]), u64::from(c.gids[1]), u64::from(c.gids[2])])?;
    r.call("prctl(PR_SET_KEEPCAPS)", nr::PRCTL, &[PR_SET_KEEPCAPS, 1])?;
    r.call("setresuid", nr::SETRESUID, &[u64::from(c.uids[0]), u64::from(c.uids[1]), u64::from(c.uids[2])])?;
    let mut b = Vec::new();
    b.extend_from_slice(&CAP_VERSION_3.to_ne_bytes());
    b.extend_from_slice(&0i32.to_ne_bytes());
    for half in 0..2 {
        let sh = half * 32;
        for v in [c.cap_eff, c.cap_prm, c.cap_inh] {
            b.extend_from_slice(&((v >> sh) as u32).to_ne_bytes());
        }
    }
    let a = r.put(0, &b)?;
    r.call("capset", nr::CAPSET, &[a, a + 8])?;
    for cap in 0..=last_cap {
        if c.cap_amb & (1 << cap) != 0 {
            r.call("prctl(PR_CAP_AMBIENT_RAISE)", nr::PRCTL, &[PR_CAP_AMBIENT, PR_CAP_AMBIENT_RAISE, cap, 0, 0])?;
        }
    }
    // KEEP_CAPS alone is unprivileged; other securebits need CAP_SETPCAP.
    let keep = u64::from(c.securebits & SECBIT_KEEP_CAPS != 0);
    r.call("prctl(PR_SET_KEEPCAPS)", nr::PRCTL, &[PR_SET_KEEPCAPS, keep])?;
    let cur = r.call("prctl(PR_GET_SECUREBITS)", nr::PRCTL, &[PR_GET_SECUREBITS])? as u32;
    if cur != c.securebits {
        r.call("prctl(PR_SET_SECUREBITS)", nr::PRCTL, &[PR_SET_SECUREBITS, u64::from(c.securebits)])?;
    }
    if c.no_new_privs {
        r.call("prctl(PR_SET_NO_NEW_PRIVS)", nr::PRCTL, &[PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0])?;
    }
    Ok(())
}

/// mm fields from /proc/pid/stat, brk (injected), auxv and the exe link.
pub fn collect_mm(r: &mut Remote) -> Result<MmInfo> {
    let st = procfs::stat(r.pid)?;
    let brk = r.call("brk(0)", nr::BRK, &[0])?;
    Ok(MmInfo {
        start_code: st.field(26),
        end_code: st.field(27),
        start_stack: st.field(28),
        start_data: st.field(45),
        end_data: st.field(46),
        start_brk: st.field(47),
        brk,
        arg_start: st.field(48),
        arg_end: st.field(49),
        env_start: st.field(50),
        env_end: st.field(51),
        auxv: procfs::auxv(r.pid)?,
        exe: procfs::readlink(&format!("/proc/{}/exe", r.pid)).unwrap_or_default(),
    })
}

/// PR_SET_MM_MAP: code/data/brk/stack/arg/env bounds, auxv and exe file.
pub fn restore_mm(r: &mut Remote, mm: &MmInfo) -> Result<()> {
    let auxv: Vec<u8> = words(&mm.auxv);
    let auxv_addr = r.put(1024, &auxv)?;
    // Same file as the stub's own executable: nothing to change (and the
    // kernel refuses to swap an exe that is still mapped).
    let current = procfs::readlink(&format!("/proc/{}/exe", r.pid)).unwrap_or_default();
    let exe_fd = if mm.exe.is_empty() || mm.exe.ends_with(" (deleted)") || mm.exe == current {
        None
    } else {
        Some(crate::mm::open_in_task(r, &mm.exe, libc::O_RDONLY)?)
    };
    let mut b = words(&[
        mm.start_code,
        mm.end_code,
        mm.start_data,
        mm.end_data,
        mm.start_brk,
        mm.brk,
        mm.start_stack,
        mm.arg_start,
        mm.arg_end,
        mm.env_start,
        mm.env_end,
        auxv_addr,
    ]);
    b.extend_from_slice(&(auxv.len() as u32).to_ne_bytes());
    b.extend_from_slice(&(exe_fd.map(|f| f as u32).unwrap_or(u32::MAX)).to_ne_bytes());
    let a = r.put(512, &b)?;
    let res = r.call("prctl(PR_SET_MM_MAP)", nr::PRCTL, &[PR_SET_MM, PR_SET_MM_MAP, a, b.len() as u64, 0]);
    if let Some(fd) = exe_fd {
        r.call("close", nr::CLOSE, &[fd])?;
    }
    res?;
    Ok(())
}

/// cwd, root, umask, personality and rlimits of a process.
pub fn collect_process_env(pid: i32, p: &mut Process) -> Result<()> {
    p.cwd = procfs::readlink(&format!("/proc/{pid}/cwd"))?;
    p.root = procfs::readlink(&format!("/proc/{pid}/root"))?;
    if p.root.ends_with(crate::gone::DELETED) {
        return Err(crate::EngineError::Unsupported {
            pid,
            what: format!("its root directory {} was removed", p.root),
        });
    }
    let st = procfs::read(pid, "status")?;
    p.umask = procfs::status_field(&st, "Umask").and_then(|v| u32::from_str_radix(&v, 8).ok()).unwrap_or(0o022);
    p.personality = u32::from_str_radix(procfs::read(pid, "personality")?.trim(), 16).unwrap_or(0);
    Ok(())
}

/// Resource limits, read from inside the task: prlimit on another process
/// needs matching uids or CAP_SYS_RESOURCE.
pub fn collect_rlimits(r: &mut Remote) -> Result<Vec<(u64, u64)>> {
    // All of them in one read of /proc (a remote call each costs about
    // 0.1 ms, inside the freeze); asked one by one where it fails.
    if let Some(l) = procfs::read(r.pid, "limits").ok().and_then(|t| parse_limits(&t)) {
        return Ok(l);
    }
    let mut out = Vec::new();
    for res in 0..16u64 {
        r.call("prlimit64", nr::PRLIMIT64, &[0, res, 0, r.data])?;
        let v = r.get_u64s(0, 2)?;
        out.push((v[0], v[1]));
    }
    Ok(out)
}

/// The 16 resource limits (soft, hard) in `/proc/PID/limits`, one line
/// each after a heading, in resource order: a name padded to 25 columns,
/// then each value, "unlimited" for RLIM_INFINITY. None if it is not
/// exactly that.
fn parse_limits(text: &str) -> Option<Vec<(u64, u64)>> {
    let mut lines = text.lines();
    lines.next().filter(|h| h.starts_with("Limit"))?;
    let value = |v: &str| match v {
        "unlimited" => Some(u64::MAX),
        v => v.parse::<u64>().ok(),
    };
    let out: Vec<(u64, u64)> = lines
        .map(|l| {
            let mut f = l.get(26..)?.split_whitespace();
            Some((value(f.next()?)?, value(f.next()?)?))
        })
        .collect::<Option<_>>()?;
    (out.len() == 16).then_some(out)
}

/// umask, personality, root, cwd and (with `rlimits`) the resource limits,
/// set from outside with our privilege.
/// `cwd`: where to enter (a removed working directory was made again,
/// see [`crate::gone`]).
pub fn restore_process_env(r: &mut Remote, p: &Process, cwd: &str, rlimits: bool) -> Result<()> {
    r.call("umask", nr::UMASK, &[u64::from(p.umask)])?;
    r.call("personality", nr::PERSONALITY, &[u64::from(p.personality)])?;
    if p.root != "/" {
        let a = r.put_str(0, &p.root)?;
        r.call(&format!("chroot({})", p.root), nr::CHROOT, &[a])?;
    }
    let a = r.put_str(0, cwd)?;
    r.call(&format!("chdir({cwd})"), nr::CHDIR, &[a])?;
    if rlimits {
        for (res, &(soft, hard)) in p.rlimits.iter().enumerate() {
            cryopod_sys::process::set_rlimit(r.pid, res as i32, soft, hard)
                .map_err(|e| crate::EngineError::Other(format!("{}: {e}", crate::trust::rlimit_name(res))))?;
        }
    }
    Ok(())
}

/// Resource limits set by the task itself (injected prlimit64 on itself),
/// with the credentials it has by then: a user's image cannot get more
/// than the user may set.
pub fn restore_rlimits_as_task(r: &mut Remote, rlimits: &[(u64, u64)]) -> Result<()> {
    for (res, &(soft, hard)) in rlimits.iter().enumerate() {
        let a = r.put(0, &words(&[soft, hard]))?;
        r.call(&format!("prlimit64({})", crate::trust::rlimit_name(res)), nr::PRLIMIT64, &[0, res as u64, a, 0])?;
    }
    Ok(())
}

/// Process-wide attributes a fork inherits: dumpable, child subreaper,
/// THP disabled, core dump filter. `areas`: the process's areas, as
/// collected while it is frozen (a probe is mapped where none is).
pub fn collect_attrs(r: &mut Remote, areas: &[cryopod_image::Vma]) -> Result<ProcAttrs> {
    let dumpable = r.call("prctl(PR_GET_DUMPABLE)", nr::PRCTL, &[PR_GET_DUMPABLE])? as u32;
    r.call("prctl(PR_GET_CHILD_SUBREAPER)", nr::PRCTL, &[PR_GET_CHILD_SUBREAPER, r.data])?;
    let child_subreaper = r.get(0, 4)?.iter().any(|&b| b != 0);
    let thp_disable = r.call("prctl(PR_GET_THP_DISABLE)", nr::PRCTL, &[PR_GET_THP_DISABLE])? != 0;
    // (A kernel without KSM says EINVAL: nothing merges there.)
    let memory_merge = r.raw(nr::PRCTL, &[PR_GET_MEMORY_MERGE, 0, 0, 0, 0])? == 1;
    let coredump_filter = procfs::read(r.pid, "coredump_filter")
        .ok()
        .and_then(|s| u32::from_str_radix(s.trim(), 16).ok())
        .unwrap_or(0x33);
    let oom_score_adj = procfs::number(r.pid, "oom_score_adj").unwrap_or(0) as i32;
    let loginuid = procfs::number(r.pid, "loginuid").map_or(u32::MAX, |v| v as u32);
    // Registrations are kept in the address space, readable only from
    // inside it (Linux 6.3); an older kernel cannot tell them.
    let membarrier = match r.raw(nr::MEMBARRIER, &[MEMBARRIER_CMD_GET_REGISTRATIONS, 0, 0])? {
        m if m >= 0 => m as u32 & MEMBARRIER_REGISTRATIONS,
        e => {
            tracing::debug!(pid = r.pid, errno = -e, "membarrier registrations cannot be read");
            0
        }
    };
    let lock_future = collect_lock_future(r, areas)?;
    Ok(ProcAttrs {
        dumpable,
        child_subreaper,
        thp_disable,
        memory_merge,
        lock_future,
        coredump_filter,
        oom_score_adj,
        loginuid,
        membarrier,
    })
}

/// mlockall(MCL_FUTURE) leaves its mark only in the address space's
/// default area flags (mm->def_flags), which /proc does not show: the
/// flags of an area mapped now do. A one-page area is mapped at a hole,
/// looked at and unmapped at once; it is shared (its own shmem object), so
/// it merges with none of the process's areas and leaves their boundaries
/// as they were. Should we die meanwhile, the task unmaps it on its way
/// back to its own code (see `injection::undo_on_death`); a task that
/// could not do that by itself is not probed (logged). Locked, the page
/// counts in VmLck; locked but not on fault (MCL_ONFAULT), it is populated
/// at once (mincore).
fn collect_lock_future(r: &mut Remote, areas: &[cryopod_image::Vma]) -> Result<u32> {
    let page = cryopod_sys::PAGE_SIZE;
    let used: Vec<(u64, u64)> = areas.iter().map(|v| (v.start, v.end)).collect();
    let at = crate::mm::find_hole(&used, page)
        .ok_or_else(|| crate::EngineError::Other(format!("pid {}: no room for a one-page probe", r.pid)))?;
    let Some((sp, taken)) = crate::injection::undo_on_death(r, nr::MUNMAP, &[at, page])? else {
        tracing::warn!(pid = r.pid, "mlockall(MCL_FUTURE) not looked for: the task cannot undo a probe by itself");
        return Ok(0);
    };
    let before = locked_kib(r.pid)?;
    let prot = (libc::PROT_READ | libc::PROT_WRITE) as u64;
    let flags = (libc::MAP_SHARED | libc::MAP_ANONYMOUS | libc::MAP_FIXED_NOREPLACE) as u64;
    let addr = r.inj.raw_via(sp, nr::MMAP, &[at, page, prot, flags, u64::MAX, 0])?;
    if addr == -i64::from(libc::EAGAIN) {
        // Only a locked mapping over RLIMIT_MEMLOCK fails so.
        return Err(crate::EngineError::Unsupported {
            pid: r.pid,
            what: "mlockall(MCL_FUTURE) at its RLIMIT_MEMLOCK: whether areas are locked on fault cannot be told".into(),
        });
    }
    if addr < 0 || addr as u64 != at {
        return Err(crate::EngineError::Other(format!(
            "pid {}: mapping a page at {at:#x} to read its default area flags: {}",
            r.pid,
            if addr < 0 { format!("errno {}", -addr) } else { format!("got {addr:#x}") }
        )));
    }
    let seen = (|| -> Result<(u64, bool)> {
        let after = locked_kib(r.pid)?;
        let got = r.inj.raw_via(sp, nr::MINCORE, &[at, page, r.data + taken])?;
        if got < 0 {
            return Err(crate::EngineError::Other(format!("pid {}: mincore of the probe: errno {}", r.pid, -got)));
        }
        Ok((after, r.get(taken, 1)?.first().is_some_and(|b| b & 1 != 0)))
    })();
    r.call("munmap(probe)", nr::MUNMAP, &[at, page])?;
    let (after, resident) = seen?;
    Ok(match (after > before, resident) {
        (false, _) => 0,
        (true, true) => libc::MCL_FUTURE as u32,
        (true, false) => (libc::MCL_FUTURE | libc::MCL_ONFAULT) as u32,
    })
}

/// VmLck of process `pid`, in KiB.
fn locked_kib(pid: i32) -> Result<u64> {
    let status = procfs::read(pid, "status")?;
    procfs::status_field(&status, "VmLck")
        .and_then(|v| v.trim_end_matches("kB").trim().parse().ok())
        .ok_or_else(|| crate::EngineError::Proc { path: format!("/proc/{pid}/status"), msg: "no VmLck".into() })
}

/// Areas mapped from now on locked again, as mlockall(MCL_FUTURE) had
/// them: called once the restore maps nothing more in the process.
pub fn restore_lock_future(r: &mut Remote, a: &ProcAttrs) -> Result<()> {
    if a.lock_future != 0 {
        r.call("mlockall(MCL_FUTURE)", nr::MLOCKALL, &[u64::from(a.lock_future)])?;
    }
    Ok(())
}

const MEMBARRIER_CMD_GET_REGISTRATIONS: u64 = 1 << 9;
/// REGISTER_GLOBAL_EXPEDITED, REGISTER_PRIVATE_EXPEDITED and its
/// SYNC_CORE and RSEQ variants: the commands that register.
const MEMBARRIER_REGISTRATIONS: u32 = (1 << 2) | (1 << 4) | (1 << 6) | (1 << 8);

/// Can this process give a restored process its OOM score adjustment?
/// Raising one is free; lowering it below the restorer's floor needs
/// CAP_SYS_RESOURCE: tried on ourselves first (and undone), so that an
/// image asking for it is refused before anything is made.
pub fn check_oom_scores(m: &cryopod_image::Manifest) -> Result<()> {
    match m.processes.iter().filter(|p| p.zombie_status.is_none()).min_by_key(|p| p.attrs.oom_score_adj) {
        Some(p) => oom_score_settable(p.pid, p.attrs.oom_score_adj),
        None => Ok(()),
    }
}

/// Can we give process `pid` the OOM score adjustment `low`? (See
/// [`check_oom_scores`].)
fn oom_score_settable(pid: i32, low: i32) -> Result<()> {
    let own = procfs::own_number("oom_score_adj").unwrap_or(0) as i32;
    if low >= own {
        return Ok(());
    }
    let f = "/proc/self/oom_score_adj";
    match std::fs::write(f, low.to_string()) {
        Ok(()) => {
            let _ = std::fs::write(f, own.to_string());
            Ok(())
        }
        Err(e) => Err(crate::EngineError::Unsupported {
            pid,
            what: format!(
                "an OOM score adjustment of {low}, below this cryopod's {own}: setting it needs CAP_SYS_RESOURCE ({e})"
            ),
        }),
    }
}

/// The process's login uid, which only the process itself may write
/// (and with CAP_AUDIT_CONTROL): before its root or credentials change.
pub fn restore_loginuid(r: &mut Remote, a: &ProcAttrs) -> Result<()> {
    let now = procfs::number(r.pid, "loginuid").map(|v| v as u32);
    if now.is_none_or(|n| n == a.loginuid) {
        return Ok(());
    }
    let path = r.put_str(0, "/proc/self/loginuid")?;
    let fd =
        r.call("open(/proc/self/loginuid)", nr::OPENAT, &[libc::AT_FDCWD as u64, path, libc::O_WRONLY as u64, 0])?;
    let text = a.loginuid.to_string();
    let buf = r.put(256, text.as_bytes())?;
    let wrote = r.raw(nr::WRITE, &[fd, buf, text.len() as u64]);
    r.raw(nr::CLOSE, &[fd])?;
    match wrote? {
        n if n >= 0 => Ok(()),
        e => Err(crate::EngineError::Other(format!(
            "cannot set the login uid {} (errno {}): it needs CAP_AUDIT_CONTROL",
            a.loginuid, -e
        ))),
    }
}

/// Child subreaper, membarrier registrations, OOM score adjustment, THP
/// disable and core dump filter: what the stub has
/// from the restorer is replaced by the image's (any time before the end).
pub fn restore_attrs(r: &mut Remote, a: &ProcAttrs) -> Result<()> {
    r.call("prctl(PR_SET_CHILD_SUBREAPER)", nr::PRCTL, &[PR_SET_CHILD_SUBREAPER, u64::from(a.child_subreaper)])?;
    for bit in (0..32).map(|b| 1u32 << b).filter(|b| a.membarrier & MEMBARRIER_REGISTRATIONS & b != 0) {
        r.call(&format!("membarrier(register {bit:#x})"), nr::MEMBARRIER, &[u64::from(bit), 0, 0])?;
    }
    let oom = format!("/proc/{}/oom_score_adj", r.pid);
    std::fs::write(&oom, a.oom_score_adj.to_string())
        .map_err(|e| crate::EngineError::Other(format!("{oom}: setting {}: {e}", a.oom_score_adj)))?;
    r.call("prctl(PR_SET_THP_DISABLE)", nr::PRCTL, &[PR_SET_THP_DISABLE, u64::from(a.thp_disable), 0, 0, 0])?;
    if a.memory_merge {
        r.call("prctl(PR_SET_MEMORY_MERGE)", nr::PRCTL, &[PR_SET_MEMORY_MERGE, 1, 0, 0, 0])?;
    }
    std::fs::write(format!("/proc/{}/coredump_filter", r.pid), format!("{:#x}", a.coredump_filter))
        .map_err(|e| crate::EngineError::Other(format!("coredump_filter {:#x}: {e}", a.coredump_filter)))?;
    Ok(())
}

/// Dumpable, once the credentials are final (a change of uid or gid resets
/// it, and so does the fs uid the restorer uses for a user's image).
/// 2 (suid_dumpable) cannot be set: the credentials decide it.
pub fn restore_dumpable(r: &mut Remote, a: &ProcAttrs) -> Result<()> {
    if a.dumpable <= 1 {
        r.call("prctl(PR_SET_DUMPABLE)", nr::PRCTL, &[PR_SET_DUMPABLE, u64::from(a.dumpable)])?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use rustix::process::{getrlimit, Resource};

    /// /proc/self/limits read as the kernel has them (ours, where the
    /// remote calls would ask the process itself).
    #[test]
    fn limits_from_proc_are_the_kernels() {
        let l = parse_limits(&std::fs::read_to_string("/proc/self/limits").unwrap()).expect("16 limits");
        for (res, i) in [(Resource::Stack, 3), (Resource::Core, 4), (Resource::Nofile, 7), (Resource::Memlock, 8)] {
            let r = getrlimit(res);
            let want = (r.current.unwrap_or(u64::MAX), r.maximum.unwrap_or(u64::MAX));
            assert_eq!(l[i], want, "resource {i}");
        }
        assert!(parse_limits("Limit  x\nMax cpu time              1 2 seconds\n").is_none(), "a short list was taken");
    }

    /// An OOM score adjustment below ours is refused unless we may set it
    /// (CAP_SYS_RESOURCE, which this machine's root lacks), and asking
    /// leaves our own as it was.
    #[test]
    fn a_lower_oom_score_is_refused_without_the_capability() {
        let own = || std::fs::read_to_string("/proc/self/oom_score_adj").unwrap().trim().to_string();
        let before = own();
        match oom_score_settable(7, -999) {
            Ok(()) => {}
            Err(e) => {
                let msg = e.to_string();
                assert!(msg.contains("CAP_SYS_RESOURCE") && msg.contains("-999"), "{msg}");
            }
        }
        assert_eq!(own(), before);
        assert!(oom_score_settable(7, 1000).is_ok(), "raising it was refused");
    }
}
