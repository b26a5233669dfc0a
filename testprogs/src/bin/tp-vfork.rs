//! A process that spends nearly all its time waiting for a vfork child: the
//! child sleeps 20 ms before it exits, so a checkpoint almost always finds
//! the parent in vfork (it cannot stop until the child goes on) and the
//! child running or stopped. Counts the children; after the go file it
//! checks that it went on doing so and that every child exited cleanly.

use cryopod_testprogs::*;
use std::arch::asm;

/// vfork; the child sleeps `ts` and exits 7 without touching the stack
/// (it shares ours). Returns the child's PID (or a negative errno).
fn vfork_sleep_exit(ts: &libc::timespec) -> i64 {
    let ret: i64;
    // SAFETY: the child runs only the syscalls below, with the timespec
    // pointer in rdi (kept across syscalls) and no stack use, then exits;
    // the parent resumes after vfork returns with rax = the child's PID.
    unsafe {
        asm!(
            "mov eax, 58",
            "syscall",
            "test rax, rax",
            "jnz 2f",
            "mov eax, 35",
            "xor esi, esi",
            "syscall",
            "mov eax, 60",
            "mov edi, 7",
            "syscall",
            "2:",
            in("rdi") ts as *const libc::timespec,
            lateout("rax") ret,
            out("rcx") _, out("rsi") _, out("r11") _,
        );
    }
    ret
}

fn main() {
    let dir = work_dir();
    let go = dir.join("go");
    let ts = libc::timespec { tv_sec: 0, tv_nsec: 20_000_000 };
    let (mut spawned, mut bad) = (0u64, 0u64);
    let mut announced = false;
    let mut at_go = None;
    loop {
        let child = vfork_sleep_exit(&ts);
        if child <= 0 {
            bad += 1;
            break;
        }
        let mut st = 0;
        // SAFETY: our own child.
        unsafe { libc::waitpid(child as i32, &mut st, 0) };
        if !(libc::WIFEXITED(st) && libc::WEXITSTATUS(st) == 7) {
            bad += 1;
        }
        spawned += 1;
        if !announced && spawned >= 3 {
            announced = true;
            println!("READY");
            use std::io::Write;
            std::io::stdout().flush().unwrap();
        }
        match at_go {
            None if go.exists() => at_go = Some(spawned),
            Some(n) if spawned >= n + 5 => break,
            _ => {}
        }
    }
    let mut c = Checks::new();
    c.eq("children that did not exit cleanly", bad, 0);
    c.check("went on vforking", at_go.is_some(), format!("{spawned} children"));
    c.finish();
}
