//! The process tree across checkpoint/restore: parent/child links, a child
//! in its own process group with a grandchild in that group, a child that
//! is a session leader, and zombies (one exited, one killed by a signal)
//! that can still be reaped with their status afterwards.

use cryopod_testprogs::*;

fn fork() -> i32 {
    unsafe { libc::fork() }
}

fn wait_status(pid: i32) -> i32 {
    let mut st = 0;
    let r = unsafe { libc::waitpid(pid, &mut st, 0) };
    if r != pid {
        return -1;
    }
    st
}

/// Exit 0 if every (name, ok) holds, else print the failures and exit 1.
fn child_verdict(who: &str, checks: &[(&str, bool)]) -> ! {
    let mut bad = false;
    for (name, ok) in checks {
        if !ok {
            println!("FAIL {who}: {name}");
            bad = true;
        }
    }
    unsafe { libc::_exit(if bad { 1 } else { 0 }) }
}

fn main() {
    let dir = work_dir();
    let mut c = Checks::new();
    let me = std::process::id() as i32;
    let (my_pgid, my_sid) = unsafe { (libc::getpgid(0), libc::getsid(0)) };

    // A: own process group, with grandchild A1 in it.
    let a = fork();
    if a == 0 {
        unsafe { libc::setpgid(0, 0) };
        let self_pid = std::process::id() as i32;
        let a1 = fork();
        if a1 == 0 {
            wait_go(&dir);
            let ok = unsafe { libc::getppid() == self_pid && libc::getpgid(0) == self_pid };
            child_verdict("A1", &[("parent and group", ok)]);
        }
        wait_go(&dir);
        let st = wait_status(a1);
        let ok_group = unsafe { libc::getpgid(0) == self_pid && libc::getppid() == me };
        child_verdict(
            "A",
            &[("group and parent", ok_group), ("grandchild passed", libc::WIFEXITED(st) && libc::WEXITSTATUS(st) == 0)],
        );
    }
    // B: session leader.
    let b = fork();
    if b == 0 {
        unsafe { libc::setsid() };
        let self_pid = std::process::id() as i32;
        wait_go(&dir);
        let ok = unsafe { libc::getsid(0) == self_pid && libc::getpgid(0) == self_pid && libc::getppid() == me };
        child_verdict("B", &[("session, group and parent", ok)]);
    }
    // Z: zombie with exit status 42; S: zombie killed by SIGTERM.
    let z = fork();
    if z == 0 {
        unsafe { libc::_exit(42) };
    }
    let s = fork();
    if s == 0 {
        unsafe {
            libc::signal(libc::SIGTERM, libc::SIG_DFL);
            libc::raise(libc::SIGTERM);
            libc::_exit(3);
        }
    }
    // T: stopped by SIGSTOP (a suspended job); after SIGCONT it exits 5.
    let t = fork();
    if t == 0 {
        unsafe {
            libc::raise(libc::SIGSTOP);
            libc::_exit(5);
        }
    }
    let mut st = 0;
    unsafe { libc::waitpid(t, &mut st, libc::WUNTRACED) };
    // Let the zombies die and A/B settle.
    let zombie =
        |p: i32| std::fs::read_to_string(format!("/proc/{p}/stat")).map(|s| s.contains(") Z ")).unwrap_or(false);
    while !(zombie(z) && zombie(s)) {
        std::thread::sleep(std::time::Duration::from_millis(2));
    }
    std::thread::sleep(std::time::Duration::from_millis(50));

    ready_and_wait(&dir);

    c.eq("own pgid", unsafe { libc::getpgid(0) }, my_pgid);
    c.eq("own sid", unsafe { libc::getsid(0) }, my_sid);
    c.eq("A's group", unsafe { libc::getpgid(a) }, a);
    c.eq("B's session", unsafe { libc::getsid(b) }, b);
    let st = wait_status(z);
    c.check("zombie reaped with exit 42", libc::WIFEXITED(st) && libc::WEXITSTATUS(st) == 42, format!("{st:#x}"));
    let st = wait_status(s);
    c.check(
        "zombie reaped as killed by SIGTERM",
        libc::WIFSIGNALED(st) && libc::WTERMSIG(st) == libc::SIGTERM,
        format!("{st:#x}"),
    );
    let state = std::fs::read_to_string(format!("/proc/{t}/stat")).unwrap_or_default();
    c.check("stopped child is still stopped", state.contains(") T "), state.clone());
    unsafe { libc::kill(t, libc::SIGCONT) };
    let st = wait_status(t);
    c.check(
        "stopped child continues and exits 5",
        libc::WIFEXITED(st) && libc::WEXITSTATUS(st) == 5,
        format!("{st:#x}"),
    );
    let st = wait_status(a);
    c.check("child A and grandchild passed", libc::WIFEXITED(st) && libc::WEXITSTATUS(st) == 0, format!("{st:#x}"));
    let st = wait_status(b);
    c.check("child B passed", libc::WIFEXITED(st) && libc::WEXITSTATUS(st) == 0, format!("{st:#x}"));
    c.finish();
}
