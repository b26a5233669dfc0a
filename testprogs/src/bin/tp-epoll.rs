//! epoll instances watching every kind of file a server watches, across
//! checkpoint/restore: a parent and its forked child share a stream
//! socketpair (each end watched by its holder's epoll); the parent's epoll
//! also watches a unix listener with a connection waiting to be accepted,
//! datagram and seqpacket socketpair ends, a TCP listener, a pipe
//! (EPOLLONESHOT, already fired: it must stay disarmed), an eventfd
//! (EPOLLET), a timerfd, a signalfd, an inotify instance and a second epoll.
//! Each entry has its own data word. The child also registers a pipe of its
//! own in the parent's epoll, which it inherited (an instance shared by
//! two processes, with an entry under the child's number 150, which the
//! parent does not have). Two entries outlive their numbers: a
//! socket watched as fd N, moved to another number (dup, then close N),
//! and one whose number now holds another file. After restore, every
//! event must come with its data, and the disarmed one-shot entry only
//! once re-armed.

use cryopod_testprogs::*;
use std::collections::BTreeSet;
use std::time::{Duration, Instant};

const PAIR: u64 = 0x1111;
const LISTENER: u64 = 0x2222;
const EVENTFD: u64 = 0x3333;
const PIPE: u64 = 0x4444;
const NESTED: u64 = 0x5555;
const DGRAM: u64 = 0x6666;
const SEQPACKET: u64 = 0x7777;
const TCP: u64 = 0x8888;
const TIMER: u64 = 0x9999;
const SIGNALFD: u64 = 0xaaaa;
const INOTIFY: u64 = 0xbbbb;
const CHILD_PAIR: u64 = 0xc1c1;
const MOVED: u64 = 0xd1d1;
const CHILD_SHARED: u64 = 0xf1f1;
const REUSED: u64 = 0xe1e1;

fn add(ep: i32, fd: i32, events: u32, data: u64) {
    let mut ev = libc::epoll_event { events, u64: data };
    // SAFETY: a valid epoll_event.
    let r = unsafe { libc::epoll_ctl(ep, libc::EPOLL_CTL_ADD, fd, &mut ev) };
    assert_eq!(r, 0, "epoll_ctl ADD {fd}: {}", std::io::Error::last_os_error());
}

/// Every data word `ep` reports within `ms`, gathered over several waits.
fn events(ep: i32, ms: u64) -> BTreeSet<u64> {
    let mut out = BTreeSet::new();
    let end = Instant::now() + Duration::from_millis(ms);
    while Instant::now() < end {
        let mut evs = [libc::epoll_event { events: 0, u64: 0 }; 32];
        // SAFETY: a buffer of 32 events.
        let n = unsafe { libc::epoll_wait(ep, evs.as_mut_ptr(), 32, 10) };
        for e in evs.iter().take(n.max(0) as usize) {
            let d = e.u64;
            out.insert(d);
        }
    }
    out
}

/// Wait (up to 5 s) until `ep` reports `data`.
fn wait_for(ep: i32, data: u64) -> bool {
    let end = Instant::now() + Duration::from_secs(5);
    while Instant::now() < end {
        if events(ep, 20).contains(&data) {
            return true;
        }
    }
    false
}

/// Wait without a time limit (the child, until the parent has been
/// checkpointed, restored and let go).
fn wait_for_long(ep: i32, data: u64) -> bool {
    loop {
        let mut ev = libc::epoll_event { events: 0, u64: 0 };
        // SAFETY: a buffer of one event.
        let n = unsafe { libc::epoll_wait(ep, &mut ev, 1, -1) };
        if n == 1 {
            let d = ev.u64;
            return d == data;
        }
        if n < 0 && std::io::Error::last_os_error().raw_os_error() != Some(libc::EINTR) {
            return false;
        }
    }
}

fn unix_addr(path: &std::path::Path) -> (libc::sockaddr_un, u32) {
    // SAFETY: sockaddr_un is plain data.
    let mut a: libc::sockaddr_un = unsafe { std::mem::zeroed() };
    a.sun_family = libc::AF_UNIX as u16;
    for (d, s) in a.sun_path.iter_mut().zip(path.as_os_str().as_encoded_bytes()) {
        *d = *s as libc::c_char;
    }
    (a, std::mem::size_of::<libc::sockaddr_un>() as u32)
}

fn pair(kind: i32) -> (i32, i32) {
    let mut sv = [0i32; 2];
    // SAFETY: sv has room for two fds.
    unsafe { libc::socketpair(libc::AF_UNIX, kind, 0, sv.as_mut_ptr()) };
    (sv[0], sv[1])
}

fn send(fd: i32, b: &[u8]) -> isize {
    // SAFETY: a valid buffer.
    unsafe { libc::send(fd, b.as_ptr().cast(), b.len(), libc::MSG_DONTWAIT) }
}

fn recv(fd: i32) -> Vec<u8> {
    let mut b = vec![0u8; 256];
    // SAFETY: a valid buffer.
    let n = unsafe { libc::recv(fd, b.as_mut_ptr().cast(), b.len(), libc::MSG_DONTWAIT) };
    b.truncate(n.max(0) as usize);
    b
}

fn main() {
    let dir = work_dir();
    let mut c = Checks::new();
    let path = dir.join("listener.sock");
    // SAFETY (whole block): plain system calls on fds this program owns,
    // with valid buffers.
    unsafe {
        let (p0, p1) = pair(libc::SOCK_STREAM);
        let (d0, d1) = pair(libc::SOCK_DGRAM);
        let (q0, q1) = pair(libc::SOCK_SEQPACKET);
        let l = libc::socket(libc::AF_UNIX, libc::SOCK_STREAM, 0);
        let (a, alen) = unix_addr(&path);
        libc::bind(l, (&a as *const libc::sockaddr_un).cast(), alen);
        libc::listen(l, 8);
        let waiting = libc::socket(libc::AF_UNIX, libc::SOCK_STREAM, 0);
        libc::connect(waiting, (&a as *const libc::sockaddr_un).cast(), alen);
        // A TCP listener on a free port of 127.0.0.1.
        let t = libc::socket(libc::AF_INET, libc::SOCK_STREAM, 0);
        let mut sin: libc::sockaddr_in = std::mem::zeroed();
        sin.sin_family = libc::AF_INET as u16;
        sin.sin_addr.s_addr = u32::from_ne_bytes([127, 0, 0, 1]);
        libc::bind(t, (&sin as *const libc::sockaddr_in).cast(), 16);
        libc::listen(t, 8);
        let mut slen = 16u32;
        libc::getsockname(t, (&mut sin as *mut libc::sockaddr_in).cast(), &mut slen);
        let mut pfd = [0i32; 2];
        libc::pipe(pfd.as_mut_ptr());
        let efd = libc::eventfd(0, libc::EFD_NONBLOCK);
        let tfd = libc::timerfd_create(libc::CLOCK_MONOTONIC, libc::TFD_NONBLOCK);
        let mut blocked: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut blocked);
        libc::sigaddset(&mut blocked, libc::SIGUSR2);
        libc::pthread_sigmask(libc::SIG_BLOCK, &blocked, std::ptr::null_mut());
        let sfd = libc::signalfd(-1, &blocked, libc::SFD_NONBLOCK);
        let ino = libc::inotify_init1(libc::IN_NONBLOCK);
        // A directory of its own: the harness creates files in `dir`.
        let watched = dir.join("watched");
        let _ = std::fs::create_dir_all(&watched);
        let dpath = std::ffi::CString::new(watched.as_os_str().as_encoded_bytes()).unwrap_or_default();
        libc::inotify_add_watch(ino, dpath.as_ptr(), libc::IN_CREATE);
        let nested = libc::epoll_create1(0);
        add(nested, efd, libc::EPOLLIN as u32, 1);

        let ep = libc::epoll_create1(libc::EPOLL_CLOEXEC);
        add(ep, p0, libc::EPOLLIN as u32, PAIR);
        add(ep, l, libc::EPOLLIN as u32, LISTENER);
        add(ep, efd, (libc::EPOLLIN | libc::EPOLLET) as u32, EVENTFD);
        add(ep, pfd[0], (libc::EPOLLIN | libc::EPOLLONESHOT) as u32, PIPE);
        add(ep, nested, libc::EPOLLIN as u32, NESTED);
        add(ep, d0, libc::EPOLLIN as u32, DGRAM);
        add(ep, q0, libc::EPOLLIN as u32, SEQPACKET);
        add(ep, t, libc::EPOLLIN as u32, TCP);
        add(ep, tfd, libc::EPOLLIN as u32, TIMER);
        add(ep, sfd, libc::EPOLLIN as u32, SIGNALFD);
        add(ep, ino, libc::EPOLLIN as u32, INOTIFY);
        // Watched under numbers the program no longer holds them at.
        let (m0, m1) = pair(libc::SOCK_STREAM);
        let (r0, r1) = pair(libc::SOCK_STREAM);
        add(ep, m0, libc::EPOLLIN as u32, MOVED);
        add(ep, r0, libc::EPOLLIN as u32, REUSED);
        let moved = libc::fcntl(m0, libc::F_DUPFD, 200);
        libc::close(m0);
        let reused = libc::fcntl(r0, libc::F_DUPFD, 210);
        libc::dup2(pfd[1], r0);
        let fdinfo = || std::fs::read_to_string(format!("/proc/self/fdinfo/{ep}")).unwrap_or_default();
        let under = |n: i32| fdinfo().lines().filter(|l| l.starts_with(&format!("tfd: {n:>8} "))).count();
        if moved < 0 || reused < 0 || under(m0) != 1 || under(r0) != 1 {
            println!("FAIL (setup: entries outliving their numbers: {})", fdinfo());
            std::process::exit(1);
        }
        // The one-shot entry fires and is disarmed (data stays in the pipe).
        libc::write(pfd[1], b"xy".as_ptr().cast(), 2);
        let first = events(ep, 50);
        c.check(
            "before: listener and one-shot pipe reported",
            first.contains(&LISTENER) && first.contains(&PIPE),
            format!("{first:x?}"),
        );

        let child = libc::fork();
        if child == 0 {
            // The child: its end of the stream pair, watched by its own epoll.
            let cep = libc::epoll_create1(0);
            add(cep, p1, libc::EPOLLIN as u32, CHILD_PAIR);
            let mut cp = [0i32; 2];
            libc::pipe(cp.as_mut_ptr());
            libc::dup2(cp[0], 150);
            libc::close(cp[0]);
            add(ep, 150, libc::EPOLLIN as u32, CHILD_SHARED);
            let started = wait_for_long(cep, CHILD_PAIR) && recv(p1) == b"start";
            libc::write(cp[1], b"s".as_ptr().cast(), 1);
            send(p1, b"ping");
            let ok = started && wait_for(cep, CHILD_PAIR) && recv(p1) == b"pong";
            libc::_exit(if ok { 0 } else { 3 });
        }
        libc::close(p1);
        std::thread::sleep(Duration::from_millis(20));
        ready_and_wait(&dir);

        let now = events(ep, 100);
        c.check("listener with a waiting connection reported", now.contains(&LISTENER), format!("{now:x?}"));
        c.check("disarmed one-shot entry stays silent", !now.contains(&PIPE), format!("{now:x?}"));
        c.check("nothing else reported yet", now.iter().all(|d| *d == LISTENER), format!("{now:x?}"));
        let acc = libc::accept4(l, std::ptr::null_mut(), std::ptr::null_mut(), libc::SOCK_NONBLOCK);
        c.check("waiting connection accepted", acc >= 0 && send(waiting, b"w") == 1, "accept failed");
        send(p0, b"start");
        c.check("child's ping on the shared pair", wait_for(ep, PAIR) && recv(p0) == b"ping", "no PAIR event");
        c.check("the child's entry in our epoll", wait_for(ep, CHILD_SHARED), "no event");
        send(p0, b"pong");
        let mut st = 0;
        libc::waitpid(child, &mut st, 0);
        c.check(
            "child got its pair event and the answer",
            libc::WIFEXITED(st) && libc::WEXITSTATUS(st) == 0,
            format!("status {st:#x}"),
        );
        let one: u64 = 1;
        libc::write(efd, (&one as *const u64).cast(), 8);
        c.check("eventfd (edge-triggered)", wait_for(ep, EVENTFD), "no event");
        c.check("nested epoll", wait_for(ep, NESTED), "no event");
        send(d1, b"d");
        c.check("datagram pair", wait_for(ep, DGRAM) && recv(d0) == b"d", "no event");
        send(q1, b"q");
        c.check("seqpacket pair", wait_for(ep, SEQPACKET) && recv(q0) == b"q", "no event");
        let tc = libc::socket(libc::AF_INET, libc::SOCK_STREAM, 0);
        libc::connect(tc, (&sin as *const libc::sockaddr_in).cast(), 16);
        c.check("TCP listener", wait_for(ep, TCP), "no event");
        let spec = libc::itimerspec {
            it_interval: libc::timespec { tv_sec: 0, tv_nsec: 0 },
            it_value: libc::timespec { tv_sec: 0, tv_nsec: 10_000_000 },
        };
        libc::timerfd_settime(tfd, 0, &spec, std::ptr::null_mut());
        c.check("timerfd", wait_for(ep, TIMER), "no event");
        libc::kill(libc::getpid(), libc::SIGUSR2);
        c.check("signalfd", wait_for(ep, SIGNALFD), "no event");
        let _ = std::fs::write(watched.join("created"), b"");
        c.check("inotify", wait_for(ep, INOTIFY), "no event");
        let second = libc::socket(libc::AF_UNIX, libc::SOCK_STREAM, 0);
        libc::connect(second, (&a as *const libc::sockaddr_un).cast(), alen);
        c.check("new connection to the listener", wait_for(ep, LISTENER), "no event");
        let mut ev = libc::epoll_event { events: (libc::EPOLLIN | libc::EPOLLONESHOT) as u32, u64: PIPE };
        libc::epoll_ctl(ep, libc::EPOLL_CTL_MOD, pfd[0], &mut ev);
        c.check("one-shot entry re-armed", wait_for(ep, PIPE), "no event");
        c.eq("entries under their old numbers", (under(m0), under(r0)), (1, 1));
        send(m1, b"m");
        c.check("a socket watched under a number it left", wait_for(ep, MOVED) && recv(moved) == b"m", "no event");
        send(r1, b"r");
        c.check(
            "a socket watched under a number another file took",
            wait_for(ep, REUSED) && recv(reused) == b"r",
            "no event",
        );
    }
    c.finish();
}
