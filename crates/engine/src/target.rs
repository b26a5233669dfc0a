//! Which processes a checkpoint may take at all, decided before anything
//! is touched: the process must exist, be a user process (kernel threads
//! have no memory of their own to save), and be neither the system's init
//! (everything depends on it) nor cryopod itself or one of its ancestors
//! (freezing the process that runs the checkpoint would hang it).

use crate::{procfs, EngineError, Result};

/// `PF_KTHREAD` in the flags of /proc/PID/stat (field 9).
const PF_KTHREAD: u64 = 0x0020_0000;

/// Refuse, in one sentence, a tree rooted at `pid` that cannot be
/// checkpointed.
pub fn check(pid: i32) -> Result<()> {
    let refuse = |why: &str| Err(EngineError::NotCheckpointable { pid, why: why.to_string() });
    if pid <= 0 || !std::path::Path::new(&format!("/proc/{pid}")).exists() {
        return Err(EngineError::NoProcess(pid));
    }
    if pid == 1 {
        return refuse("it is the system's init, on which every other process depends");
    }
    let st = procfs::stat(pid).map_err(|_| EngineError::NoProcess(pid))?;
    let empty_maps = procfs::read(pid, "maps").is_ok_and(|m| m.is_empty());
    if st.field(9) & PF_KTHREAD != 0 || (empty_maps && st.state != 'Z') {
        return refuse("it is a kernel thread, not a user process");
    }
    let mut p = std::process::id() as i32;
    let mut steps = 0;
    while p > 1 && steps < 4096 {
        if p == pid {
            let who =
                if p == std::process::id() as i32 { "it is cryopod itself" } else { "it is an ancestor of cryopod" };
            return refuse(&format!("{who}, which cannot freeze the tree it runs in"));
        }
        p = procfs::stat(p).map(|s| s.ppid).unwrap_or(0);
        steps += 1;
    }
    Ok(())
}
