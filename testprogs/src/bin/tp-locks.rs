//! File locks across a checkpoint (issue 11, class 6). `tp-locks DIR`:
//! the parent takes a POSIX write lock on bytes 0..=99 of file `a` and a
//! read lock from byte 200 to the end, an open file description (OFD)
//! write lock on bytes 0..=9 of `c`, and a read lease on `d`; its child
//! takes an exclusive flock on `b`, then waits (F_SETLKW) for bytes
//! 50..=59 of `a`, which the parent holds. After the restore the parent
//! finds each lock held, as another open file description sees them (the
//! POSIX locks as its own PID's), and its lease; then it lets go of bytes
//! 0..=99: the child's wait ends, and it reports that it holds them. PASS
//! only if all of that holds.

use cryopod_testprogs::*;
use std::os::fd::AsRawFd;

fn flock_struct(ty: i16, start: i64, len: i64) -> libc::flock {
    // SAFETY: flock is plain data; zero is a valid value for every field.
    let mut f: libc::flock = unsafe { std::mem::zeroed() };
    f.l_type = ty;
    f.l_whence = libc::SEEK_SET as i16;
    f.l_start = start;
    f.l_len = len;
    f
}

fn fcntl_lock(fd: i32, cmd: i32, f: &mut libc::flock) -> i32 {
    // SAFETY: fcntl with a lock command and a live flock struct.
    unsafe { libc::fcntl(fd, cmd, f as *mut libc::flock) }
}

fn open(p: &std::path::Path, write: bool) -> std::fs::File {
    std::fs::OpenOptions::new().read(true).write(write).create(write).truncate(false).open(p).unwrap_or_else(|e| {
        println!("FAIL (setup: {}: {e})", p.display());
        std::process::exit(1)
    })
}

fn setup_failed(what: &str) -> ! {
    println!("FAIL (setup: {what}: {})", std::io::Error::last_os_error());
    std::process::exit(1)
}

/// What a new open file description sees of a write lock over
/// `start..start+len` of `path`: (type, pid) of a conflicting lock, or
/// (F_UNLCK, 0). (The description stays open: closing any descriptor of
/// a file drops every POSIX lock the process holds on it.)
fn seen(path: &std::path::Path, start: i64, len: i64) -> (i16, i32) {
    let f = open(path, true);
    let mut q = flock_struct(libc::F_WRLCK as i16, start, len);
    let r = fcntl_lock(f.as_raw_fd(), libc::F_OFD_GETLK, &mut q);
    std::mem::forget(f);
    match r {
        0 => (q.l_type, q.l_pid),
        _ => (-1, -1),
    }
}

fn main() {
    let dir = work_dir();
    let mut c = Checks::new();
    let p = |n: &str| dir.join(n);
    for n in ["a", "b", "c", "d"] {
        std::fs::write(p(n), vec![b'x'; 4096]).unwrap_or_else(|_| setup_failed(n));
    }
    let a = open(&p("a"), true);
    let cf = open(&p("c"), true);
    let d = open(&p("d"), false);
    let (ar, cr, dr) = (a.as_raw_fd(), cf.as_raw_fd(), d.as_raw_fd());
    if fcntl_lock(ar, libc::F_SETLK, &mut flock_struct(libc::F_WRLCK as i16, 0, 100)) != 0 {
        setup_failed("POSIX write lock");
    }
    if fcntl_lock(ar, libc::F_SETLK, &mut flock_struct(libc::F_RDLCK as i16, 200, 0)) != 0 {
        setup_failed("POSIX read lock");
    }
    if fcntl_lock(cr, libc::F_OFD_SETLK, &mut flock_struct(libc::F_WRLCK as i16, 0, 10)) != 0 {
        setup_failed("OFD lock");
    }
    // SAFETY: fcntl with an integer argument.
    if unsafe { libc::fcntl(dr, libc::F_SETLEASE, libc::F_RDLCK) } != 0 {
        setup_failed("lease");
    }
    let mut fds = [0i32; 2];
    // SAFETY: pipe fills the array.
    if unsafe { libc::pipe(fds.as_mut_ptr()) } != 0 {
        setup_failed("pipe");
    }
    // SAFETY: the child only opens, locks, writes and exits.
    let child = unsafe { libc::fork() };
    if child == 0 {
        let b = open(&p("b"), true);
        // SAFETY: flock and fcntl on descriptors of this process.
        unsafe {
            if libc::flock(b.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) != 0 {
                libc::_exit(3);
            }
            libc::write(fds[1], b"f".as_ptr().cast(), 1);
            let a2 = open(&p("a"), true);
            // Waits until the parent lets go of bytes 0..=99.
            let r = fcntl_lock(a2.as_raw_fd(), libc::F_SETLKW, &mut flock_struct(libc::F_WRLCK as i16, 50, 10));
            let mut q = flock_struct(libc::F_WRLCK as i16, 50, 10);
            // Ours now: another description sees it as this process's.
            let f3 = open(&p("a"), true);
            fcntl_lock(f3.as_raw_fd(), libc::F_OFD_GETLK, &mut q);
            std::mem::forget(f3);
            let ok = r == 0 && q.l_type == libc::F_WRLCK as i16 && q.l_pid == libc::getpid();
            libc::write(fds[1], if ok { b"y".as_ptr() } else { b"n".as_ptr() }.cast(), 1);
            libc::_exit(0);
        }
    }
    let mut b = [0u8; 1];
    // SAFETY: read of one byte from the pipe.
    if unsafe { libc::read(fds[0], b.as_mut_ptr().cast(), 1) } != 1 || b[0] != b'f' {
        setup_failed("the child's flock");
    }
    // (Let the child block in its F_SETLKW.)
    std::thread::sleep(std::time::Duration::from_millis(200));
    ready_and_wait(&dir);
    // SAFETY: getpid has no arguments.
    let me = unsafe { libc::getpid() };
    c.eq("POSIX write lock on a 0..=99", seen(&p("a"), 0, 100), (libc::F_WRLCK as i16, me));
    c.eq("POSIX read lock on a 200..", seen(&p("a"), 300, 10), (libc::F_RDLCK as i16, me));
    c.eq("nothing on a 100..=199", seen(&p("a"), 100, 100), (libc::F_UNLCK as i16, 0));
    c.eq("OFD write lock on c 0..=9", seen(&p("c"), 0, 10), (libc::F_WRLCK as i16, -1));
    let b2 = open(&p("b"), true);
    // SAFETY: flock on our own new descriptor.
    let r = unsafe { libc::flock(b2.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
    c.eq(
        "the child's flock on b holds",
        (r, std::io::Error::last_os_error().raw_os_error()),
        (-1, Some(libc::EWOULDBLOCK)),
    );
    // SAFETY: fcntl with no argument.
    c.eq("the read lease on d", unsafe { libc::fcntl(dr, libc::F_GETLEASE) }, libc::F_RDLCK);
    // Let go of 0..=99: the child's wait ends.
    fcntl_lock(ar, libc::F_SETLK, &mut flock_struct(libc::F_UNLCK as i16, 0, 100));
    let mut b = [0u8; 1];
    // SAFETY: read of one byte from the pipe.
    let n = unsafe { libc::read(fds[0], b.as_mut_ptr().cast(), 1) };
    c.eq("the waiting child got its lock", (n, b[0]), (1, b'y'));
    let mut st = 0;
    // SAFETY: waitpid on our child.
    unsafe { libc::waitpid(child, &mut st, 0) };
    c.eq("the child exited 0", st, 0);
    // (Kept open to the end: closing one would drop the POSIX locks.)
    std::mem::forget((a, cf, d));
    c.finish();
}
