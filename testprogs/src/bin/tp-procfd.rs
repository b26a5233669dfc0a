//! Descriptors open on /proc of the tree itself (issue 11, class 10).
//! `tp-procfd DIR`: the parent opens its own /proc/self/stat and reads a
//! little of it (an offset to keep), and /proc/self/environ, which its
//! child then shares (one open file description, one offset); after the
//! fork it opens the child's status, its fd directory and its
//! task/TID/comm; the child opens its parent's cmdline. After the restore
//! each descriptor names the same process as before (its PID in what it
//! reads, the same link), the offsets are kept (and still shared), and
//! the directory lists the child's descriptors. PASS only if all of that
//! holds.

use cryopod_testprogs::*;
use std::ffi::CString;

fn setup_failed(what: &str) -> ! {
    println!("FAIL (setup: {what}: {})", std::io::Error::last_os_error());
    std::process::exit(1)
}

fn open(path: &str, flags: i32) -> i32 {
    let c = CString::new(path).unwrap_or_default();
    // SAFETY: open with a NUL-terminated path.
    let fd = unsafe { libc::open(c.as_ptr(), flags) };
    if fd < 0 {
        setup_failed(path);
    }
    fd
}

fn read_some(fd: i32, n: usize) -> Vec<u8> {
    let mut b = vec![0u8; n];
    // SAFETY: reads into a live buffer of n bytes.
    let r = unsafe { libc::read(fd, b.as_mut_ptr().cast(), n) };
    b.truncate(r.max(0) as usize);
    b
}

fn pread_all(fd: i32) -> String {
    let mut b = vec![0u8; 8192];
    // SAFETY: reads into a live buffer from offset 0.
    let r = unsafe { libc::pread(fd, b.as_mut_ptr().cast(), b.len(), 0) };
    b.truncate(r.max(0) as usize);
    String::from_utf8_lossy(&b).into_owned()
}

fn pos(fd: i32) -> i64 {
    // SAFETY: lseek with integer arguments.
    unsafe { libc::lseek(fd, 0, libc::SEEK_CUR) }
}

fn link(fd: i32) -> String {
    std::fs::read_link(format!("/proc/self/fd/{fd}")).map(|p| p.display().to_string()).unwrap_or_default()
}

/// Does the fd directory `dir` list fd `n`?
fn has_fd(dir: i32, n: i32) -> bool {
    let name = CString::new(n.to_string()).unwrap_or_default();
    // SAFETY: fstatat relative to the directory descriptor, into a zeroed
    // stat (without following the link).
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    unsafe { libc::fstatat(dir, name.as_ptr(), &mut st, libc::AT_SYMLINK_NOFOLLOW) == 0 }
}

fn main() {
    let dir = work_dir();
    let mut c = Checks::new();
    // SAFETY: getpid has no arguments.
    let me = unsafe { libc::getpid() };
    let stat = open("/proc/self/stat", libc::O_RDONLY);
    let head = read_some(stat, 7);
    let environ = open("/proc/self/environ", libc::O_RDONLY);
    let (mut pipe, mut done) = ([0i32; 2], [0i32; 2]);
    // SAFETY: pipe fills two ints; the child opens, reports and waits.
    let child = unsafe {
        libc::pipe(pipe.as_mut_ptr());
        libc::pipe(done.as_mut_ptr());
        libc::fork()
    };
    if child == 0 {
        let cmdline = open(&format!("/proc/{me}/cmdline"), libc::O_RDONLY);
        // The shared environ description: the child moves its offset.
        let moved = read_some(environ, 5).len() == 5;
        // SAFETY: a write from a live buffer.
        unsafe { libc::write(pipe[1], if moved { b"1" } else { b"0" }.as_ptr().cast(), 1) };
        // (Its parent's stat and environ it inherited: placed from the
        // parent that opens them at restore.)
        let before = [link(cmdline), link(stat), link(environ)];
        wait_go(&dir);
        let after = [link(cmdline), link(stat), link(environ)];
        let text = pread_all(cmdline);
        let ok = before == after && text.starts_with(&std::env::args().next().unwrap_or_default());
        if !ok {
            println!("child: links {before:?} -> {after:?}, cmdline reads {text:?}");
        }
        // Alive until the parent has looked at it.
        read_some(done[0], 1);
        // SAFETY: ends the child.
        unsafe { libc::_exit(if ok { 0 } else { 1 }) };
    }
    if read_some(pipe[0], 1) != b"1" {
        setup_failed("the child's descriptors");
    }
    let status = open(&format!("/proc/{child}/status"), libc::O_RDONLY);
    let fds = open(&format!("/proc/{child}/fd"), libc::O_RDONLY | libc::O_DIRECTORY);
    let comm = open(&format!("/proc/{child}/task/{child}/comm"), libc::O_RDONLY);
    let links = [link(stat), link(environ), link(status), link(fds), link(comm)];
    if !has_fd(fds, pipe[1]) {
        setup_failed("the child's fd directory");
    }
    let offsets = (pos(stat), pos(environ));
    if head.len() != 7 || offsets != (7, 5) || !pread_all(status).contains(&format!("\nPid:\t{child}\n")) {
        println!("FAIL (setup: offsets {offsets:?}, status {:?})", pread_all(status));
        std::process::exit(1);
    }
    ready_and_wait(&dir);

    c.eq("every link as it was", [link(stat), link(environ), link(status), link(fds), link(comm)], links);
    c.eq("offsets kept (environ's shared with the child)", (pos(stat), pos(environ)), offsets);
    c.check("the rest of our stat", read_some(stat, 4096).len() > 10, "nothing more to read");
    c.check(
        "stat names us",
        pread_all(stat).starts_with(&format!("{me} (")),
        pread_all(stat).chars().take(40).collect::<String>(),
    );
    let st = pread_all(status);
    c.check(
        "the child's status names it",
        st.contains(&format!("\nPid:\t{child}\n")),
        st.lines().take(8).collect::<Vec<_>>().join("|"),
    );
    c.eq("its comm", pread_all(comm), "tp-procfd\n".to_string());
    let listing = || {
        let mut v: Vec<String> = std::fs::read_dir(format!("/proc/{child}/fd"))
            .map(|d| d.flatten().map(|e| e.file_name().to_string_lossy().into_owned()).collect())
            .unwrap_or_default();
        v.sort();
        v.join(" ")
    };
    c.check("its fd directory lists its descriptors", has_fd(fds, pipe[1]), format!("fd {} of {}", pipe[1], listing()));
    let mut w = 0;
    // SAFETY: a write from a live buffer; waits for our child.
    unsafe {
        libc::write(done[1], b"x".as_ptr().cast(), 1);
        libc::waitpid(child, &mut w, 0)
    };
    c.check(
        "the child's view of its parent's cmdline",
        libc::WIFEXITED(w) && libc::WEXITSTATUS(w) == 0,
        format!("{w:#x}"),
    );
    c.finish()
}
