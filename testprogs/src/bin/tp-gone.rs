//! Files that are gone, and places held without opening (issue 11, class
//! 8). `tp-gone DIR` holds: a FIFO whose name was removed, with bytes
//! queued in it; a directory removed while open; a file replaced by
//! another of the same name (renamed over it); O_PATH descriptors of a
//! file, a directory and (with O_NOFOLLOW) a symbolic link itself; and a
//! child whose working directory was removed. After the restore each is
//! what it was: the same kind of file, its link still "(deleted)" where the
//! name is gone (the replaced file's names the place beside its old name
//! where it was made again, the name itself being taken), the FIFO's bytes there once, the replaced file's old
//! contents through the descriptor and the new ones by name, the O_PATH
//! descriptors usable as places (fstat, openat, readlinkat) and still
//! O_PATH. PASS only if all of that holds.

use cryopod_testprogs::*;
use std::ffi::CString;
use std::path::Path;

fn cstr(p: &Path) -> CString {
    CString::new(p.as_os_str().as_encoded_bytes()).unwrap_or_default()
}

fn setup_failed(what: &str) -> ! {
    println!("FAIL (setup: {what}: {})", std::io::Error::last_os_error());
    std::process::exit(1)
}

fn link(fd: i32) -> String {
    std::fs::read_link(format!("/proc/self/fd/{fd}")).map(|p| p.display().to_string()).unwrap_or_default()
}

fn mode_of(fd: i32) -> u32 {
    // SAFETY: fstat fills a stat struct; zero is a valid start.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    if unsafe { libc::fstat(fd, &mut st) } != 0 {
        return 0;
    }
    st.st_mode
}

fn read_some(fd: i32, n: usize) -> Vec<u8> {
    let mut b = vec![0u8; n];
    // SAFETY: reads into a live buffer of n bytes.
    let r = unsafe { libc::read(fd, b.as_mut_ptr().cast(), n) };
    b.truncate(r.max(0) as usize);
    b
}

fn open(p: &Path, flags: i32) -> i32 {
    // SAFETY: open with a NUL-terminated path.
    let fd = unsafe { libc::open(cstr(p).as_ptr(), flags, 0o600) };
    if fd < 0 {
        setup_failed(&p.display().to_string());
    }
    fd
}

fn flags_of(fd: i32) -> i32 {
    // SAFETY: fcntl with an integer command.
    unsafe { libc::fcntl(fd, libc::F_GETFL) }
}

fn main() {
    let dir = work_dir();
    let mut c = Checks::new();
    let p = |n: &str| dir.join(n);
    // A FIFO with bytes queued, its name removed.
    let fifo = p("fifo");
    // SAFETY: mkfifo, unlink, mkdir, rmdir and rename with NUL-terminated
    // paths; write from a live buffer.
    unsafe {
        if libc::mkfifo(cstr(&fifo).as_ptr(), 0o600) != 0 {
            setup_failed("mkfifo");
        }
    }
    let fr = open(&fifo, libc::O_RDONLY | libc::O_NONBLOCK);
    let fw = open(&fifo, libc::O_WRONLY);
    unsafe {
        libc::write(fw, b"fifo-bytes".as_ptr().cast(), 10);
        libc::unlink(cstr(&fifo).as_ptr());
    }
    // A directory removed while open.
    let gone_dir = p("gone-dir");
    let _ = std::fs::create_dir(&gone_dir);
    let dfd = open(&gone_dir, libc::O_RDONLY | libc::O_DIRECTORY);
    unsafe { libc::rmdir(cstr(&gone_dir).as_ptr()) };
    // A file replaced by another of the same name.
    let replaced = p("replaced");
    std::fs::write(&replaced, b"old contents").unwrap_or_else(|_| setup_failed("replaced"));
    let rfd = open(&replaced, libc::O_RDONLY);
    std::fs::write(p("new"), b"new contents").unwrap_or_else(|_| setup_failed("new"));
    std::fs::rename(p("new"), &replaced).unwrap_or_else(|_| setup_failed("rename"));
    // O_PATH: a file, a directory, a symbolic link itself.
    std::fs::create_dir_all(p("place")).unwrap_or_else(|_| setup_failed("place"));
    std::fs::write(p("place/inside"), b"inside").unwrap_or_else(|_| setup_failed("inside"));
    let _ = std::os::unix::fs::symlink("place/inside", p("link"));
    let pf = open(&p("place/inside"), libc::O_PATH);
    let pd = open(&p("place"), libc::O_PATH | libc::O_DIRECTORY);
    let pl = open(&p("link"), libc::O_PATH | libc::O_NOFOLLOW);
    // A child whose working directory is removed.
    let cwd_dir = p("gone-cwd");
    let _ = std::fs::create_dir(&cwd_dir);
    let mut pipe = [0i32; 2];
    // SAFETY: pipe fills two ints; the child only chdirs, rmdirs, reports
    // and waits.
    let child = unsafe {
        libc::pipe(pipe.as_mut_ptr());
        libc::fork()
    };
    if child == 0 {
        unsafe {
            let ok = libc::chdir(cstr(&cwd_dir).as_ptr()) == 0 && libc::rmdir(cstr(&cwd_dir).as_ptr()) == 0;
            libc::write(pipe[1], if ok { b"1" } else { b"0" }.as_ptr().cast(), 1);
        }
        wait_go(&dir);
        let here = std::fs::read_link("/proc/self/cwd").map(|p| p.display().to_string()).unwrap_or_default();
        let is_dir = mode_of(open(Path::new("."), libc::O_RDONLY | libc::O_DIRECTORY)) & libc::S_IFMT == libc::S_IFDIR;
        let ok = here == format!("{} (deleted)", cwd_dir.display()) && is_dir;
        if !ok {
            println!("child: cwd {here:?}, a directory: {is_dir}");
        }
        // SAFETY: ends the child.
        unsafe { libc::_exit(if ok { 0 } else { 1 }) };
    }
    if read_some(pipe[0], 1) != b"1" {
        setup_failed("the child's working directory");
    }
    let before = [link(fr), link(dfd), link(rfd), link(pf), link(pd), link(pl)];
    if !before[0].ends_with(" (deleted)") || !before[1].ends_with(" (deleted)") || !before[2].ends_with(" (deleted)") {
        println!("FAIL (setup: links {before:?})");
        std::process::exit(1);
    }
    ready_and_wait(&dir);

    let after = [link(fr), link(dfd), link(rfd), link(pf), link(pd), link(pl)];
    // (The replaced file's name is taken: it is made again beside it, so
    // its link names that place, still as deleted.)
    let same = |i: usize| {
        if i == 2 {
            after[2].starts_with(&before[2][..before[2].len() - 10]) && after[2].ends_with(" (deleted)")
        } else {
            after[i] == before[i]
        }
    };
    c.check("every link as it was", (0..6).all(same), format!("{after:?} for {before:?}"));
    c.eq("the FIFO is a FIFO", mode_of(fr) & libc::S_IFMT, libc::S_IFIFO);
    c.eq("its bytes, once", read_some(fr, 64), b"fifo-bytes".to_vec());
    // SAFETY: write from a live buffer.
    unsafe { libc::write(fw, b"more".as_ptr().cast(), 4) };
    c.eq("its two ends still one FIFO", read_some(fr, 64), b"more".to_vec());
    c.eq("the removed directory is one", mode_of(dfd) & libc::S_IFMT, libc::S_IFDIR);
    c.eq("the replaced file's old contents through the descriptor", read_some(rfd, 64), b"old contents".to_vec());
    c.eq("the new one by name", std::fs::read(&replaced).unwrap_or_default(), b"new contents".to_vec());
    for (what, fd, kind) in [("file", pf, libc::S_IFREG), ("directory", pd, libc::S_IFDIR), ("link", pl, libc::S_IFLNK)]
    {
        c.eq(&format!("O_PATH {what}: still O_PATH"), flags_of(fd) & libc::O_PATH, libc::O_PATH);
        // SAFETY: fstatat with AT_EMPTY_PATH on an O_PATH descriptor.
        let mut st: libc::stat = unsafe { std::mem::zeroed() };
        let r = unsafe { libc::fstatat(fd, c"".as_ptr(), &mut st, libc::AT_EMPTY_PATH) };
        c.eq(&format!("O_PATH {what}: its kind"), (r, st.st_mode & libc::S_IFMT), (0, kind));
    }
    // SAFETY: openat relative to an O_PATH directory; readlinkat of an
    // O_PATH link with an empty path.
    let inside = unsafe { libc::openat(pd, c"inside".as_ptr(), libc::O_RDONLY) };
    c.eq("openat through the O_PATH directory", read_some(inside, 64), b"inside".to_vec());
    let mut buf = [0u8; 64];
    let n = unsafe { libc::readlinkat(pl, c"".as_ptr(), buf.as_mut_ptr().cast(), buf.len()) };
    c.eq(
        "readlinkat of the O_PATH link",
        buf.get(..n.max(0) as usize).unwrap_or(&[]).to_vec(),
        b"place/inside".to_vec(),
    );
    c.check(
        "nothing of the restore is left in the directory",
        !p("gone-dir").exists() && !fifo.exists(),
        "a name came back",
    );
    let mut st = 0;
    // SAFETY: waits for our child.
    unsafe { libc::waitpid(child, &mut st, 0) };
    c.check(
        "the child is in its removed working directory",
        libc::WIFEXITED(st) && libc::WEXITSTATUS(st) == 0,
        format!("{st:#x}"),
    );
    c.finish()
}
