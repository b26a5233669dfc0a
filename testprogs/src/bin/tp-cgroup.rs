//! cgroups of its own across a checkpoint (issue 11, class 11). `tp-cgroup
//! DIR`: a parent and its child; the child says where it is ("CHILD N",
//! N as its pod sees it) and waits until the harness has moved it into
//! cgroups of its own below the pod's (`DIR/moved`), notes its
//! /proc/self/cgroup, and is checkpointed. After the restore it must be in
//! exactly the same cgroups (the harness checks their settings). PASS only
//! if it is.

use cryopod_testprogs::*;
use std::io::Write;

fn main() {
    let dir = work_dir();
    // SAFETY: fork; the child only polls files, reads its cgroups, exits.
    let child = unsafe { libc::fork() };
    if child == 0 {
        // SAFETY: getpid has no arguments.
        println!("CHILD {}", unsafe { libc::getpid() });
        let _ = std::io::stdout().flush();
        let moved = dir.join("moved");
        while !moved.exists() {
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
        let before = std::fs::read_to_string("/proc/self/cgroup").unwrap_or_default();
        let _ = std::fs::write(dir.join("noted"), &before);
        wait_go(&dir);
        let after = std::fs::read_to_string("/proc/self/cgroup").unwrap_or_default();
        let ok = after == before && !before.is_empty();
        if !ok {
            println!("child: cgroups before:\n{before}after:\n{after}");
        }
        // SAFETY: ends the child.
        unsafe { libc::_exit(if ok { 0 } else { 1 }) };
    }
    let mut c = Checks::new();
    while !dir.join("noted").exists() {
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
    ready_and_wait(&dir);
    let mut st = 0;
    // SAFETY: waits for our child.
    unsafe { libc::waitpid(child, &mut st, 0) };
    c.check("the child is in the same cgroups", libc::WIFEXITED(st) && libc::WEXITSTATUS(st) == 0, format!("{st:#x}"));
    c.finish()
}
