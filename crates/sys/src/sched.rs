//! CPU affinity of threads: saved and restored with each thread, and used
//! to keep the restorer and its stubs on one CPU while it injects (a ptrace
//! round trip across CPUs costs several times more). Masks are 64-bit words
//! (bit n of word w = CPU 64w + n), as the image records them.

use crate::{Pid, SysError, SysResult};
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
