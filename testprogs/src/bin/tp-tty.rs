//! Pseudo-terminals across a checkpoint (issue 11, class 7). `tp-tty DIR`:
//! the parent opens two pairs. Pair A is a session's terminal: a child
//! starts a session, opens A's terminal end (which becomes its
//! controlling terminal), sets its own settings (no echo, not canonical,
//! VMIN 3, 9600 baud, output CR-LF), a 37x101 window and exclusive mode,
//! forks a grandchild in a process group of its own and gives it the
//! foreground, then writes a line the parent does not read. Pair B stays
//! locked, in packet mode, its terminal end never opened.
//!
//! After the restore the parent checks that each pair has its index, A its
//! settings and window, B its modes; that the child's and grandchild's
//! controlling terminal is A's and the grandchild's group the foreground
//! one; that the unread line is there once, exactly as it was (CR-LF, not
//! CR-CR-LF); and that a round trip works: the grandchild reads what the
//! parent types and answers with what it sees of its terminal. PASS only
//! if all of that holds.

use cryopod_testprogs::*;
use std::ffi::CStr;
use std::time::{Duration, Instant};

fn setup_failed(what: &str) -> ! {
    println!("FAIL (setup: {what}: {})", std::io::Error::last_os_error());
    std::process::exit(1)
}

fn openpt() -> (i32, String) {
    // SAFETY: plain libc calls on a descriptor we own; ptsname's result is
    // copied at once.
    unsafe {
        let m = libc::posix_openpt(libc::O_RDWR | libc::O_NOCTTY);
        if m < 0 || libc::grantpt(m) != 0 {
            setup_failed("posix_openpt");
        }
        (m, name_of(m))
    }
}

fn name_of(m: i32) -> String {
    let mut buf = [0 as libc::c_char; 64];
    // SAFETY: ptsname_r writes a NUL-terminated name into `buf`.
    if unsafe { libc::ptsname_r(m, buf.as_mut_ptr(), buf.len()) } != 0 {
        return String::new();
    }
    // SAFETY: NUL-terminated by ptsname_r.
    unsafe { CStr::from_ptr(buf.as_ptr()) }.to_string_lossy().into_owned()
}

fn get_int(fd: i32, req: libc::c_ulong) -> i32 {
    let mut v: libc::c_int = -1;
    // SAFETY: the request writes one int.
    unsafe { libc::ioctl(fd, req, &mut v) };
    v
}

fn termios_of(fd: i32) -> Vec<u32> {
    // SAFETY: termios is plain data, filled by tcgetattr.
    let mut t: libc::termios = unsafe { std::mem::zeroed() };
    unsafe { libc::tcgetattr(fd, &mut t) };
    let mut v = vec![t.c_iflag, t.c_oflag, t.c_cflag, t.c_lflag];
    v.extend(t.c_cc.iter().map(|&c| c as u32));
    // SAFETY: reads the speeds of a filled termios.
    v.extend([unsafe { libc::cfgetispeed(&t) }, unsafe { libc::cfgetospeed(&t) }]);
    v
}

fn winsize_of(fd: i32) -> (u16, u16, u16, u16) {
    let mut w = libc::winsize { ws_row: 0, ws_col: 0, ws_xpixel: 0, ws_ypixel: 0 };
    // SAFETY: TIOCGWINSZ fills a winsize.
    unsafe { libc::ioctl(fd, libc::TIOCGWINSZ, &mut w) };
    (w.ws_row, w.ws_col, w.ws_xpixel, w.ws_ypixel)
}

/// (tty_nr, tpgid) of process `pid`.
fn ctty_of(pid: i32) -> (i64, i64) {
    let s = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let rest: Vec<i64> = s
        .rsplit_once(") ")
        .map(|x| x.1)
        .unwrap_or("")
        .split_whitespace()
        .skip(1)
        .filter_map(|x| x.parse().ok())
        .collect();
    // After the state: ppid pgrp session tty_nr tpgid.
    (rest.get(3).copied().unwrap_or(0), rest.get(4).copied().unwrap_or(0))
}

fn write_all(fd: i32, b: &[u8]) {
    // SAFETY: writes from a live buffer.
    unsafe { libc::write(fd, b.as_ptr().cast(), b.len()) };
}

/// Read from `fd` until `want` bytes came or `until` says done (2 s at most).
fn read_for(fd: i32, until: impl Fn(&[u8]) -> bool) -> Vec<u8> {
    let t = Instant::now();
    let mut acc = Vec::new();
    let mut buf = [0u8; 256];
    while !until(&acc) && t.elapsed() < Duration::from_secs(2) {
        let mut p = libc::pollfd { fd, events: libc::POLLIN, revents: 0 };
        // SAFETY: one live pollfd; then a read into a live buffer.
        if unsafe { libc::poll(&mut p, 1, 50) } == 1 {
            let n = unsafe { libc::read(fd, buf.as_mut_ptr().cast(), buf.len()) };
            if n > 0 {
                acc.extend_from_slice(&buf[..n as usize]);
            }
        }
    }
    acc
}

/// The session leader: takes A's terminal end as its controlling
/// terminal, sets it up, starts the foreground job, leaves a line unread.
fn session(dir: &std::path::Path, name: &str, done: i32) -> ! {
    let cname = std::ffi::CString::new(name).unwrap_or_default();
    // SAFETY: plain libc calls on descriptors this process owns.
    unsafe {
        libc::setsid();
        let s = libc::open(cname.as_ptr(), libc::O_RDWR);
        if s < 0 {
            setup_failed("open the terminal end");
        }
        let mut t: libc::termios = std::mem::zeroed();
        libc::tcgetattr(s, &mut t);
        t.c_lflag &= !(libc::ICANON | libc::ECHO);
        t.c_cc[libc::VMIN] = 3;
        t.c_cc[libc::VTIME] = 0;
        t.c_oflag |= libc::OPOST | libc::ONLCR;
        libc::cfsetspeed(&mut t, libc::B9600);
        if libc::tcsetattr(s, libc::TCSANOW, &t) != 0 {
            setup_failed("tcsetattr");
        }
        let w = libc::winsize { ws_row: 37, ws_col: 101, ws_xpixel: 5, ws_ypixel: 6 };
        if libc::ioctl(s, libc::TIOCSWINSZ, &w) != 0 || libc::ioctl(s, libc::TIOCEXCL) != 0 {
            setup_failed("window size, exclusive mode");
        }
        let job = libc::fork();
        if job == 0 {
            libc::setpgid(0, 0);
            foreground_job(dir, s);
        }
        libc::setpgid(job, job);
        if libc::tcsetpgrp(s, job) != 0 {
            setup_failed("tcsetpgrp");
        }
        write_all(s, b"queued-output\n");
        write_all(done, b"1");
        let mut st = 0;
        libc::waitpid(job, &mut st, 0);
        libc::_exit(if libc::WIFEXITED(st) { libc::WEXITSTATUS(st) } else { 9 });
    }
}

/// The foreground job: after the restore, reads what the parent types and
/// answers with what it sees of its terminal.
fn foreground_job(dir: &std::path::Path, s: i32) -> ! {
    wait_go(dir);
    let got = read_for(s, |b| b.len() >= 4);
    let excl = get_int(s, libc::TIOCGEXCL as libc::c_ulong);
    // SAFETY: open/close of the controlling terminal; getpgrp, tcgetpgrp.
    let tty = unsafe {
        let fd = libc::open(c"/dev/tty".as_ptr(), libc::O_RDWR | libc::O_NOCTTY);
        if fd >= 0 {
            libc::close(fd);
        }
        fd >= 0
    };
    let fg = unsafe { libc::tcgetpgrp(s) == libc::getpgrp() };
    let msg = format!("pong {} excl={excl} tty={tty} fg={fg}\n", String::from_utf8_lossy(&got));
    write_all(s, msg.as_bytes());
    // SAFETY: ends this process.
    unsafe { libc::_exit(0) }
}

fn main() {
    let dir = work_dir();
    let mut c = Checks::new();
    let (ma, name_a) = openpt();
    let (mb, name_b) = openpt();
    // SAFETY: plain libc calls on our descriptors.
    unsafe {
        if libc::unlockpt(ma) != 0 || libc::ioctl(mb, libc::TIOCPKT, &1i32) != 0 {
            setup_failed("unlockpt, packet mode");
        }
    }
    let mut p = [0i32; 2];
    // SAFETY: pipe fills two ints.
    if unsafe { libc::pipe(p.as_mut_ptr()) } != 0 {
        setup_failed("pipe");
    }
    // SAFETY: the child runs `session`, which never returns.
    let leader = unsafe { libc::fork() };
    if leader == 0 {
        unsafe { libc::close(ma) };
        session(&dir, &name_a, p[1]);
    }
    let mut b = [0u8; 1];
    // SAFETY: one byte into a live buffer.
    if unsafe { libc::read(p[0], b.as_mut_ptr().cast(), 1) } != 1 {
        setup_failed("the session's setup");
    }
    let job = ctty_of(leader).1 as i32;
    let before = (termios_of(ma), winsize_of(ma), ctty_of(leader), ctty_of(job));
    // The leader's line reaches the master through the kernel's flip
    // buffer, pushed by a worker after its write returned: wait for it.
    let t = Instant::now();
    let mut unread_before = get_int(ma, libc::FIONREAD);
    while unread_before < 15 && t.elapsed() < Duration::from_secs(5) {
        let mut p = libc::pollfd { fd: ma, events: libc::POLLIN, revents: 0 };
        // SAFETY: one live pollfd.
        unsafe { libc::poll(&mut p, 1, 10) };
        unread_before = get_int(ma, libc::FIONREAD);
    }
    if before.1 != (37, 101, 5, 6) || job <= leader || before.2 .0 == 0 || unread_before != 15 {
        println!("FAIL (setup: window {:?}, job {job}, ctty {:?}, unread {unread_before})", before.1, before.2);
        std::process::exit(1);
    }
    ready_and_wait(&dir);

    c.eq("pair A's index", name_of(ma), name_a);
    c.eq("pair B's index", name_of(mb), name_b);
    c.eq("pair A's settings", termios_of(ma), before.0);
    c.eq("pair A's window", winsize_of(ma), before.1);
    c.eq("pair B in packet mode", get_int(mb, libc::TIOCGPKT as libc::c_ulong), 1);
    c.eq("pair B locked", get_int(mb, libc::TIOCGPTLCK as libc::c_ulong), 1);
    c.eq("pair A unlocked", get_int(ma, libc::TIOCGPTLCK as libc::c_ulong), 0);
    c.eq("the leader's terminal and foreground group", ctty_of(leader), before.2);
    c.eq("the job's terminal and foreground group", ctty_of(job), before.3);
    c.eq("the foreground group is the job's", before.2 .1, job as i64);
    let unread = read_for(ma, |b| b.ends_with(b"\n"));
    c.eq("the unread line, once, as it was", String::from_utf8_lossy(&unread).into_owned(), "queued-output\r\n".into());
    write_all(ma, b"ping");
    let answer = read_for(ma, |b| b.ends_with(b"\n"));
    c.eq(
        "the job's answer",
        String::from_utf8_lossy(&answer).into_owned(),
        "pong ping excl=1 tty=true fg=true\r\n".into(),
    );
    let mut st = 0;
    // SAFETY: waits for our child.
    unsafe { libc::waitpid(leader, &mut st, 0) };
    c.check("the session ended well", libc::WIFEXITED(st) && libc::WEXITSTATUS(st) == 0, format!("status {st:#x}"));
    c.finish()
}
