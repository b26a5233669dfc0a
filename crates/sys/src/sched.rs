//! What the scheduler keeps of a thread, read and set from outside it: its
//! CPU affinity (also used to keep the restorer and its stubs on one CPU
//! while it injects: a ptrace round trip across CPUs costs several times
//! more), its scheduling policy and its I/O priority. Masks are 64-bit
//! words (bit n of word w = CPU 64w + n), as the image records them.

use crate::{Pid, SysError, SysResult};
use cryopod_image::SchedParams;
use rustix::thread::CpuSet;

fn thread(tid: Pid) -> Option<rustix::process::Pid> {
    rustix::process::Pid::from_raw(tid)
}

/// CPU affinity of a thread (0 = the calling thread), as 64-bit mask words
/// (trailing empty words left out; at least one word).
pub fn get_affinity(tid: Pid) -> SysResult<Vec<u64>> {
    let set = rustix::thread::sched_getaffinity(thread(tid))
        .map_err(|e| SysError::new("sched_getaffinity", tid, e.into()))?;
    let mut words = vec![0u64; CpuSet::MAX_CPU.div_ceil(64)];
    for cpu in (0..CpuSet::MAX_CPU).filter(|&c| set.is_set(c)) {
        words[cpu / 64] |= 1 << (cpu % 64);
    }
    let used = words.iter().rposition(|&w| w != 0).map_or(1, |i| i + 1);
    words.truncate(used);
    Ok(words)
}

/// Set the CPU affinity of a thread (0 = the calling thread). CPUs beyond
/// the largest set rustix holds (1024) are left out.
pub fn set_affinity(tid: Pid, mask: &[u64]) -> SysResult<()> {
    let mut set = CpuSet::new();
    for (w, &word) in mask.iter().enumerate() {
        for bit in (0..64).filter(|b| word & (1 << b) != 0) {
            let cpu = w * 64 + bit;
            if cpu < CpuSet::MAX_CPU {
                set.set(cpu);
            }
        }
    }
    rustix::thread::sched_setaffinity(thread(tid), &set).map_err(|e| SysError::new("sched_setaffinity", tid, e.into()))
}

/// The CPU the calling thread runs on.
pub fn current_cpu() -> usize {
    rustix::thread::sched_getcpu()
}

/// A mask with just `cpu` set.
pub fn one_cpu(cpu: usize) -> Vec<u64> {
    let mut m = vec![0u64; cpu / 64 + 1];
    m[cpu / 64] |= 1 << (cpu % 64);
    m
}

/// `struct sched_attr` as the kernel has it (its first version with the
/// utilisation clamps: 56 bytes).
#[repr(C)]
#[derive(Default)]
struct RawSchedAttr {
    size: u32,
    policy: u32,
    flags: u64,
    nice: i32,
    priority: u32,
    runtime: u64,
    deadline: u64,
    period: u64,
    util_min: u32,
    util_max: u32,
}

/// The scheduling policy and parameters of thread `tid` (any thread), as
/// the image records them (its nice value is recorded on its own).
pub fn get_sched(tid: Pid) -> SysResult<SchedParams> {
    let mut a = RawSchedAttr::default();
    let size = std::mem::size_of::<RawSchedAttr>() as u32;
    // SAFETY: sched_getattr writes at most `size` bytes into `a`, a
    // sched_attr of that size.
    let r = unsafe { libc::syscall(libc::SYS_sched_getattr, tid, &mut a as *mut RawSchedAttr, size, 0u32) };
    if r < 0 {
        return Err(SysError::last("sched_getattr", tid));
    }
    Ok(SchedParams {
        policy: a.policy,
        flags: a.flags,
        priority: a.priority,
        runtime: a.runtime,
        deadline: a.deadline,
        period: a.period,
    })
}

/// Set the scheduling policy and parameters of thread `tid`, with `nice`
/// for a fair policy (utilisation clamps left as they are).
pub fn set_sched(tid: Pid, s: &SchedParams, nice: i32) -> SysResult<()> {
    let a = RawSchedAttr {
        size: std::mem::size_of::<RawSchedAttr>() as u32,
        policy: s.policy,
        flags: s.flags,
        nice,
        priority: s.priority,
        runtime: s.runtime,
        deadline: s.deadline,
        period: s.period,
        util_min: 0,
        util_max: 0,
    };
    // SAFETY: sched_setattr reads the sched_attr `a`, whose size field
    // says how large it is.
    let r = unsafe { libc::syscall(libc::SYS_sched_setattr, tid, &a as *const RawSchedAttr, 0u32) };
    if r < 0 {
        return Err(SysError::last(format!("sched_setattr(policy {}, priority {})", s.policy, s.priority), tid));
    }
    Ok(())
}

const IOPRIO_WHO_PROCESS: i32 = 1;

/// The I/O priority of thread `tid` as `ioprio_get` reports it (0: none
/// set, it follows the nice value).
pub fn get_ioprio(tid: Pid) -> SysResult<u32> {
    // SAFETY: ioprio_get with integer arguments only.
    let r = unsafe { libc::syscall(libc::SYS_ioprio_get, IOPRIO_WHO_PROCESS, tid) };
    if r < 0 {
        return Err(SysError::last("ioprio_get", tid));
    }
    Ok(r as u32)
}

/// Set the I/O priority of thread `tid`.
pub fn set_ioprio(tid: Pid, prio: u32) -> SysResult<()> {
    // SAFETY: ioprio_set with integer arguments only.
    let r = unsafe { libc::syscall(libc::SYS_ioprio_set, IOPRIO_WHO_PROCESS, tid, prio as i32) };
    if r < 0 {
        return Err(SysError::last(format!("ioprio_set({prio:#x})"), tid));
    }
    Ok(())
}
