//! Open files across checkpoint/restore: a regular file's offset and flags,
//! O_APPEND, a file deleted while open (contents kept, still deleted), a
//! directory fd, /dev/null and /dev/urandom, a pipe and a FIFO with unread
//! data (nothing lost or duplicated), an open file description shared with a
//! child (shared offset), close-on-exec and O_NONBLOCK.

use cryopod_testprogs::*;
use std::ffi::CString;

fn cstr(p: &std::path::Path) -> CString {
    CString::new(p.as_os_str().as_encoded_bytes()).unwrap()
}

fn pos(fd: i32) -> i64 {
    unsafe { libc::lseek(fd, 0, libc::SEEK_CUR) }
}

fn link(fd: i32) -> String {
    std::fs::read_link(format!("/proc/self/fd/{fd}")).map(|p| p.display().to_string()).unwrap_or_default()
}

fn read_n(fd: i32, n: usize) -> Vec<u8> {
    let mut b = vec![0u8; n];
    let r = unsafe { libc::read(fd, b.as_mut_ptr().cast(), n) };
    b.truncate(r.max(0) as usize);
    b
}

fn main() {
    let dir = work_dir();
    let mut c = Checks::new();
    unsafe {
        // Regular file, read-write, offset 123.
        let reg = dir.join("regular.dat");
        std::fs::write(&reg, pattern(7, 4096)).unwrap();
        let fd_reg = libc::open(cstr(&reg).as_ptr(), libc::O_RDWR);
        libc::lseek(fd_reg, 123, libc::SEEK_SET);
        // O_APPEND file.
        let app = dir.join("append.log");
        std::fs::write(&app, b"one\n").unwrap();
        let fd_app = libc::open(cstr(&app).as_ptr(), libc::O_WRONLY | libc::O_APPEND);
        // Deleted while open.
        let del = dir.join("deleted.dat");
        let fd_del = libc::open(cstr(&del).as_ptr(), libc::O_RDWR | libc::O_CREAT, 0o640);
        let del_data = pattern(8, 10_000);
        libc::write(fd_del, del_data.as_ptr().cast(), del_data.len());
        libc::lseek(fd_del, 500, libc::SEEK_SET);
        libc::unlink(cstr(&del).as_ptr());
        // Directory.
        std::fs::create_dir_all(dir.join("d")).unwrap();
        std::fs::write(dir.join("d/inside"), b"in").unwrap();
        let fd_dir = libc::open(cstr(&dir.join("d")).as_ptr(), libc::O_RDONLY | libc::O_DIRECTORY);
        // Character devices; /dev/null close-on-exec.
        let fd_null = libc::open(c"/dev/null".as_ptr(), libc::O_RDWR | libc::O_CLOEXEC);
        let fd_rand = libc::open(c"/dev/urandom".as_ptr(), libc::O_RDONLY);
        // Pipe with unread data; read end non-blocking.
        let mut p = [0i32; 2];
        libc::pipe(p.as_mut_ptr());
        libc::write(p[1], b"pipe-data-1".as_ptr().cast(), 11);
        libc::fcntl(p[0], libc::F_SETFL, libc::O_NONBLOCK);
        // FIFO with unread data.
        let fifo = dir.join("fifo");
        libc::mkfifo(cstr(&fifo).as_ptr(), 0o600);
        let fd_fifo_r = libc::open(cstr(&fifo).as_ptr(), libc::O_RDONLY | libc::O_NONBLOCK);
        let fd_fifo_w = libc::open(cstr(&fifo).as_ptr(), libc::O_WRONLY);
        libc::write(fd_fifo_w, b"fifo-data".as_ptr().cast(), 9);
        // Shared description with a child: the child reads 100 bytes after
        // restore; the parent then sees the offset moved.
        let shared = dir.join("shared.dat");
        std::fs::write(&shared, pattern(9, 1000)).unwrap();
        let fd_sh = libc::open(cstr(&shared).as_ptr(), libc::O_RDONLY);
        libc::lseek(fd_sh, 10, libc::SEEK_SET);
        let child = libc::fork();
        if child == 0 {
            wait_go(&dir);
            let got = read_n(fd_sh, 100);
            libc::_exit(if got == pattern(9, 1000)[10..110] { 0 } else { 1 });
        }
        let links: Vec<(i32, String)> =
            [fd_reg, fd_app, fd_dir, fd_null, fd_rand, fd_fifo_r].iter().map(|&f| (f, link(f))).collect();

        ready_and_wait(&dir);

        c.eq("regular file offset", pos(fd_reg), 123);
        c.eq("regular file data at offset", read_n(fd_reg, 10), pattern(7, 4096)[123..133].to_vec());
        c.eq("regular file is read-write", libc::fcntl(fd_reg, libc::F_GETFL) & libc::O_ACCMODE, libc::O_RDWR);
        libc::write(fd_app, b"two\n".as_ptr().cast(), 4);
        c.eq("O_APPEND appends", std::fs::read(&app).unwrap(), b"one\ntwo\n".to_vec());
        c.check("O_APPEND flag", libc::fcntl(fd_app, libc::F_GETFL) & libc::O_APPEND != 0, "lost");
        c.eq("deleted file offset", pos(fd_del), 500);
        let mut st: libc::stat = std::mem::zeroed();
        libc::fstat(fd_del, &mut st);
        c.eq("deleted file is still deleted", st.st_nlink, 0);
        c.eq("deleted file mode", st.st_mode & 0o777, 0o640);
        c.eq("deleted file size (not rounded to pages)", st.st_size, 10_000);
        c.check("deleted file link", link(fd_del).ends_with("deleted.dat (deleted)"), link(fd_del));
        libc::lseek(fd_del, 0, libc::SEEK_SET);
        c.check("deleted file contents", read_n(fd_del, 10_000) == del_data, "differ");
        c.check("deleted file not visible", !del.exists(), "reappeared");
        let inner = libc::openat(fd_dir, c"inside".as_ptr(), libc::O_RDONLY);
        c.eq("directory fd works", read_n(inner, 2), b"in".to_vec());
        for (f, l) in &links {
            c.eq(&format!("fd {f} target"), link(*f), l.clone());
        }
        c.eq("close-on-exec kept", libc::fcntl(fd_null, libc::F_GETFD) & libc::FD_CLOEXEC, libc::FD_CLOEXEC);
        c.eq("no close-on-exec elsewhere", libc::fcntl(fd_reg, libc::F_GETFD) & libc::FD_CLOEXEC, 0);
        c.eq("/dev/null reads EOF", read_n(fd_null, 10).len(), 0);
        c.eq("/dev/urandom reads", read_n(fd_rand, 16).len(), 16);
        c.check("pipe read end non-blocking", libc::fcntl(p[0], libc::F_GETFL) & libc::O_NONBLOCK != 0, "flag lost");
        c.eq("pipe data, once", read_n(p[0], 100), b"pipe-data-1".to_vec());
        libc::write(p[1], b"more".as_ptr().cast(), 4);
        c.eq("pipe still connected", read_n(p[0], 100), b"more".to_vec());
        c.eq("fifo data, once", read_n(fd_fifo_r, 100), b"fifo-data".to_vec());
        c.check("fifo link", link(fd_fifo_r) == fifo.display().to_string(), link(fd_fifo_r));
        let mut wst = 0;
        libc::waitpid(child, &mut wst, 0);
        c.check(
            "child read through the shared description",
            libc::WIFEXITED(wst) && libc::WEXITSTATUS(wst) == 0,
            format!("{wst:#x}"),
        );
        c.eq("shared offset moved by the child", pos(fd_sh), 110);
    }
    c.finish();
}
