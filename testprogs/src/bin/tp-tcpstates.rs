//! Half-closed TCP connections and big queues across checkpoint/restore
//! (issue 11, class 1), both ends in this program, over loopback:
//! - A: the client sent a line and shut its writing side (FIN_WAIT2); the
//!   server has the line unread and the end of the stream after it
//!   (CLOSE_WAIT). After the restore the server reads the line, then the
//!   end; it can still write (half-shut), and the client reads that and
//!   then the end once the server shuts too.
//! - B: the server never read; the client wrote until nothing more fit
//!   (megabytes: the server's receive queue full, its own send queue full
//!   and not yet sent), then shut its writing side: its FIN waits behind
//!   the data (FIN_WAIT1). After the restore the server reads every byte,
//!   in order, then the end; the client is in FIN_WAIT2.
//! - D: as B, with buffer sizes the program set (6 MiB each way, so
//!   more than 8 MiB wait): they come back as set, every byte in order.
//! - C: a client outside the tree (the test) connected to a listener of
//!   ours (its port printed as `PORT n`), sent a line and shut its writing
//!   side (CLOSE_WAIT here). After the restore the line and the end are
//!   read (the FIN came from outside: only the restore can hand it over
//!   again), and the reply reaches the client, then our end.
//! - F: connections that have ended but stay open: one closed both ways
//!   with a line unread, one reset by its peer whose error the program
//!   read. After the restore both are closed, the first gives its line and
//!   then the end, the second the end, and writes fail (EPIPE).
//! - G: a third outside connection, whose test end drops every segment:
//!   this end shut first (its FIN never acknowledged), then the test shut
//!   too: both FINs crossed, CLOSING. After the restore it is CLOSING
//!   again (the test's FIN, never acknowledged, is sent again meanwhile).
//! - E: a second outside connection, which the test shut for writing and
//!   then gave a filter that drops every segment (it acknowledges nothing
//!   any more), before this end shut too: LAST_ACK, its FIN never acknowledged. After the
//!   restore it is in LAST_ACK again.
//!
//! With `errors`, connections that ended with an error not read yet
//! instead (see `errors_unread`).

use cryopod_testprogs::*;
use std::time::{Duration, Instant};

/// Read up to `max` bytes until the end of the stream or 10 s; (bytes,
/// whether the end came).
unsafe fn read_to_end(fd: i32, max: usize) -> (Vec<u8>, bool) {
    let t = Instant::now();
    let mut acc = Vec::new();
    let mut b = vec![0u8; 1 << 16];
    while acc.len() <= max && t.elapsed() < Duration::from_secs(10) {
        let mut p = libc::pollfd { fd, events: libc::POLLIN, revents: 0 };
        if libc::poll(&mut p, 1, 100) != 1 {
            continue;
        }
        let n = libc::read(fd, b.as_mut_ptr().cast(), b.len());
        if n == 0 {
            return (acc, true);
        }
        if n < 0 {
            break;
        }
        acc.extend_from_slice(&b[..n as usize]);
    }
    (acc, false)
}

/// Write B's stream on non-blocking `fd` until nothing more fits; the
/// bytes written.
unsafe fn fill(fd: i32) -> usize {
    libc::fcntl(fd, libc::F_SETFL, libc::O_NONBLOCK);
    let mut sent = 0usize;
    let t = Instant::now();
    let mut idle = 0;
    while idle < 20 && t.elapsed() < Duration::from_secs(10) {
        let buf: Vec<u8> = (sent..sent + (1 << 16)).map(b_byte).collect();
        let n = libc::write(fd, buf.as_ptr().cast(), buf.len());
        if n > 0 {
            sent += n as usize;
            idle = 0;
        } else {
            idle += 1;
            std::thread::sleep(Duration::from_millis(5));
        }
    }
    sent
}

fn get_int(fd: i32, opt: i32) -> i32 {
    let mut v = 0i32;
    let mut len = 4u32;
    // SAFETY: the option writes one int.
    unsafe { libc::getsockopt(fd, libc::SOL_SOCKET, opt, (&mut v as *mut i32).cast(), &mut len) };
    v
}

/// Read exactly `want` bytes or until 10 s pass (no end of stream here).
unsafe fn read_to_end_or(fd: i32, want: usize) -> (Vec<u8>, bool) {
    let t = Instant::now();
    let mut acc = Vec::with_capacity(want);
    let mut b = vec![0u8; 1 << 16];
    while acc.len() < want && t.elapsed() < Duration::from_secs(10) {
        let mut p = libc::pollfd { fd, events: libc::POLLIN, revents: 0 };
        if libc::poll(&mut p, 1, 100) != 1 {
            continue;
        }
        let n = libc::read(fd, b.as_mut_ptr().cast(), b.len().min(want - acc.len()));
        if n <= 0 {
            break;
        }
        acc.extend_from_slice(&b[..n as usize]);
    }
    (acc, false)
}

/// The byte at offset `i` of B's stream.
fn b_byte(i: usize) -> u8 {
    (i.wrapping_mul(31) ^ (i >> 9)) as u8
}

/// `errors`: connections that ended with an error the program has not
/// read yet, each a kind the kernel reports differently:
/// - reset by the peer with a line unread: reads give the line, then
///   ECONNRESET, then the end;
/// - reset by the peer after its FIN, with a line unread (a reset in
///   CLOSE_WAIT): reads give the line, then the end; SO_ERROR says EPIPE;
/// - a non-blocking connect refused: SO_ERROR says ECONNREFUSED;
/// - timed out (TCP_USER_TIMEOUT, the peer dropping every segment) with a
///   line unread: the line, then ETIMEDOUT, then the end.
///
/// Each is closed and shows an error to poll before the checkpoint and
/// after the restore, and each gives its error after the restore, once.
unsafe fn errors_unread(dir: &std::path::Path, c: &mut Checks) {
    let pair = || {
        net::loopback_pair().unwrap_or_else(|| {
            println!("FAIL (setup: loopback connection)");
            std::process::exit(1)
        })
    };
    let send = |fd: i32, line: &[u8]| libc::send(fd, line.as_ptr().cast(), line.len(), 0) == line.len() as isize;
    let linger0 = |fd: i32| {
        let linger = libc::linger { l_onoff: 1, l_linger: 0 };
        libc::setsockopt(fd, libc::SOL_SOCKET, libc::SO_LINGER, (&linger as *const libc::linger).cast(), 8);
        libc::close(fd);
    };
    // Reset, a line unread.
    let (peer, reset) = pair();
    let mut ok = send(peer, b"line-r\n");
    std::thread::sleep(Duration::from_millis(20));
    linger0(peer);
    // Reset in CLOSE_WAIT.
    let (peer, pipe) = pair();
    ok &= send(peer, b"line-p\n") && libc::shutdown(peer, libc::SHUT_WR) == 0;
    std::thread::sleep(Duration::from_millis(20));
    linger0(peer);
    // Refused: a port of ours that nothing listens on.
    let Some((holder, addr)) = net::loopback_listener(1) else {
        println!("FAIL (setup: loopback port)");
        std::process::exit(1)
    };
    let refused = libc::socket(libc::AF_INET, libc::SOCK_STREAM | libc::SOCK_NONBLOCK, 0);
    libc::close(holder);
    let held = libc::socket(libc::AF_INET, libc::SOCK_STREAM, 0);
    let len = std::mem::size_of::<libc::sockaddr_in>() as u32;
    ok &= libc::bind(held, (&addr as *const libc::sockaddr_in).cast(), len) == 0;
    libc::connect(refused, (&addr as *const libc::sockaddr_in).cast(), len);
    // Timed out.
    let (timed, peer) = pair();
    ok &= send(peer, b"line-t\n");
    std::thread::sleep(Duration::from_millis(20));
    ok &= net::drop_everything(peer);
    let one = 1i32;
    ok &= libc::setsockopt(timed, libc::IPPROTO_TCP, libc::TCP_USER_TIMEOUT, (&one as *const i32).cast(), 4) == 0;
    ok &= send(timed, b"x");
    let fds = [reset, pipe, refused, timed];
    let ended = || {
        fds.iter()
            .map(|&fd| {
                let mut p = libc::pollfd { fd, events: libc::POLLIN, revents: 0 };
                libc::poll(&mut p, 1, 0);
                (net::tcp_state(fd), p.revents & libc::POLLERR != 0)
            })
            .collect::<Vec<_>>()
    };
    let t = Instant::now();
    while ended() != vec![(7, true); 4] && t.elapsed() < Duration::from_secs(5) {
        std::thread::sleep(Duration::from_millis(10));
    }
    if !ok || ended() != vec![(7, true); 4] {
        println!("FAIL (setup: {ok}, (state, error pending) {:?})", ended());
        std::process::exit(1);
    }
    libc::close(held);
    libc::close(peer);
    ready_and_wait(dir);
    c.eq("closed, each with an error to poll", ended(), vec![(7, true); 4]);
    let read = |fd: i32| {
        let mut b = [0u8; 64];
        let n = libc::read(fd, b.as_mut_ptr().cast(), b.len());
        match n {
            n if n < 0 => Err(std::io::Error::last_os_error().raw_os_error().unwrap_or(0)),
            n => Ok(b[..n as usize].to_vec()),
        }
    };
    let so_error = |fd: i32| {
        let mut v = 0i32;
        let mut l = 4u32;
        libc::getsockopt(fd, libc::SOL_SOCKET, libc::SO_ERROR, (&mut v as *mut i32).cast(), &mut l);
        v
    };
    c.eq(
        "reset: the line, ECONNRESET, the end",
        (read(reset), read(reset), read(reset)),
        (Ok(b"line-r\n".to_vec()), Err(libc::ECONNRESET), Ok(Vec::new())),
    );
    c.eq(
        "reset after the peer's FIN: the line, the end, EPIPE pending",
        (read(pipe), read(pipe), so_error(pipe), so_error(pipe)),
        (Ok(b"line-p\n".to_vec()), Ok(Vec::new()), libc::EPIPE, 0),
    );
    c.eq("refused connect: ECONNREFUSED pending", (so_error(refused), so_error(refused)), (libc::ECONNREFUSED, 0));
    c.eq(
        "timed out: the line, ETIMEDOUT, the end",
        (read(timed), read(timed), read(timed)),
        (Ok(b"line-t\n".to_vec()), Err(libc::ETIMEDOUT), Ok(Vec::new())),
    );
    let w = libc::send(reset, b"w".as_ptr().cast(), 1, libc::MSG_NOSIGNAL);
    let e = std::io::Error::last_os_error().raw_os_error();
    c.eq("writes fail", (w, e), (-1, Some(libc::EPIPE)));
}

fn main() {
    let dir = work_dir();
    let mut c = Checks::new();
    if std::env::args().nth(2).as_deref() == Some("errors") {
        // SAFETY: plain libc calls on this program's own descriptors.
        unsafe { errors_unread(&dir, &mut c) };
        c.finish()
    }
    // SAFETY: plain libc calls on this program's own descriptors.
    unsafe {
        let (Some((ac, asrv)), Some((bc, bsrv))) = (net::loopback_pair(), net::loopback_pair()) else {
            println!("FAIL (setup: loopback connections)");
            std::process::exit(1);
        };
        libc::write(ac, b"a-line\n".as_ptr().cast(), 7);
        libc::shutdown(ac, libc::SHUT_WR);
        // B: fill everything without blocking, then shut.
        libc::fcntl(bc, libc::F_SETFL, libc::O_NONBLOCK);
        let sent = fill(bc);
        libc::shutdown(bc, libc::SHUT_WR);
        // D: the same, with the buffer sizes set by the program.
        let Some((dc, dsrv)) = net::loopback_pair() else {
            println!("FAIL (setup: loopback connection D)");
            std::process::exit(1);
        };
        let big = 6i32 << 20;
        libc::setsockopt(dc, libc::SOL_SOCKET, libc::SO_SNDBUFFORCE, (&big as *const i32).cast(), 4);
        libc::setsockopt(dsrv, libc::SOL_SOCKET, libc::SO_RCVBUFFORCE, (&big as *const i32).cast(), 4);
        let d_bufs = (get_int(dc, libc::SO_SNDBUF), get_int(dsrv, libc::SO_RCVBUF));
        let d_sent = fill(dc);
        std::thread::sleep(Duration::from_millis(50));
        let before = [net::tcp_state(ac), net::tcp_state(asrv), net::tcp_state(bc), net::tcp_state(bsrv)];
        // FIN_WAIT2, CLOSE_WAIT, FIN_WAIT1, ESTABLISHED.
        if before != [5, 8, 4, 1] || sent < 1 << 20 || d_sent < 8 << 20 {
            println!("FAIL (setup: states {before:?}, {sent} and {d_sent} bytes sent)");
            std::process::exit(1);
        }
        println!("B holds {sent} bytes, D {d_sent}");
        // F: ended connections.
        let (Some((fc, fs)), Some((gc, gs))) = (net::loopback_pair(), net::loopback_pair()) else {
            println!("FAIL (setup: loopback connections F)");
            std::process::exit(1);
        };
        libc::write(fc, b"f-line\n".as_ptr().cast(), 7);
        libc::close(fc);
        std::thread::sleep(Duration::from_millis(20));
        libc::shutdown(fs, libc::SHUT_WR);
        let linger = libc::linger { l_onoff: 1, l_linger: 0 };
        libc::setsockopt(gc, libc::SOL_SOCKET, libc::SO_LINGER, (&linger as *const libc::linger).cast(), 8);
        libc::close(gc);
        std::thread::sleep(Duration::from_millis(20));
        let mut b1 = [0u8; 1];
        let r = libc::read(gs, b1.as_mut_ptr().cast(), 1);
        let e = std::io::Error::last_os_error().raw_os_error();
        if (net::tcp_state(fs), net::tcp_state(gs), r, e) != (7, 7, -1, Some(libc::ECONNRESET)) {
            let got = (net::tcp_state(fs), net::tcp_state(gs), r, e);
            println!("FAIL (setup: ended connections {got:?})");
            std::process::exit(1);
        }
        // C: the outside client.
        let Some((l, port)) = net::loopback_listener(1).map(|(l, a)| (l, u16::from_be(a.sin_port))) else {
            println!("FAIL (setup: listener)");
            std::process::exit(1);
        };
        println!("PORT {port}");
        use std::io::Write;
        let _ = std::io::stdout().flush();
        let csrv = libc::accept(l, std::ptr::null_mut(), std::ptr::null_mut());
        let esrv = libc::accept(l, std::ptr::null_mut(), std::ptr::null_mut());
        let gsrv = libc::accept(l, std::ptr::null_mut(), std::ptr::null_mut());
        libc::close(l);
        let t = Instant::now();
        let closing = || net::tcp_state(csrv) == 8 && net::tcp_state(esrv) == 8;
        while !(closing() && dir.join("repaired").exists()) && t.elapsed() < Duration::from_secs(10) {
            std::thread::sleep(Duration::from_millis(5));
        }
        libc::shutdown(esrv, libc::SHUT_WR);
        std::thread::sleep(Duration::from_millis(50));
        // G: shut here first, once the test's end drops everything.
        while !dir.join("g-filtered").exists() && t.elapsed() < Duration::from_secs(10) {
            std::thread::sleep(Duration::from_millis(5));
        }
        libc::shutdown(gsrv, libc::SHUT_WR);
        std::fs::write(dir.join("g-shut"), b"").unwrap_or_default();
        while net::tcp_state(gsrv) != 11 && t.elapsed() < Duration::from_secs(10) {
            std::thread::sleep(Duration::from_millis(5));
        }
        if (net::tcp_state(csrv), net::tcp_state(esrv), net::tcp_state(gsrv)) != (8, 9, 11) {
            let states = (net::tcp_state(csrv), net::tcp_state(esrv), net::tcp_state(gsrv));
            println!("FAIL (setup: the outside connections are in states {states:?}, not (8, 9, 11))");
            std::process::exit(1);
        }
        ready_and_wait(&dir);

        c.eq(
            "the states, as they were",
            [net::tcp_state(ac), net::tcp_state(asrv), net::tcp_state(bc), net::tcp_state(bsrv)],
            before,
        );
        let (line, end) = read_to_end(asrv, 64);
        c.eq(
            "A: the server reads the line, then the end",
            (String::from_utf8_lossy(&line).into_owned(), end),
            ("a-line\n".into(), true),
        );
        libc::write(asrv, b"a-reply\n".as_ptr().cast(), 8);
        libc::shutdown(asrv, libc::SHUT_WR);
        let (reply, end) = read_to_end(ac, 64);
        c.eq(
            "A: the half-shut client reads the reply, then the end",
            (String::from_utf8_lossy(&reply).into_owned(), end),
            ("a-reply\n".into(), true),
        );

        let (got, end) = read_to_end(bsrv, sent);
        let first_bad = got.iter().enumerate().position(|(i, &v)| v != b_byte(i));
        c.eq("B: every byte, in order, then the end", (got.len(), first_bad, end), (sent, None, true));
        let t = Instant::now();
        while net::tcp_state(bc) != 5 && t.elapsed() < Duration::from_secs(5) {
            std::thread::sleep(Duration::from_millis(10));
        }
        c.eq("B: the client's FIN acknowledged (FIN_WAIT2)", net::tcp_state(bc), 5);

        c.eq("D: the buffer sizes set", (get_int(dc, libc::SO_SNDBUF), get_int(dsrv, libc::SO_RCVBUF)), d_bufs);
        let (got, _) = read_to_end_or(dsrv, d_sent);
        let first_bad = got.iter().enumerate().position(|(i, &v)| v != b_byte(i));
        c.eq("D: every byte, in order", (got.len(), first_bad), (d_sent, None));

        c.eq("E: in LAST_ACK, its FIN not acknowledged", net::tcp_state(esrv), 9);
        c.eq("G: in CLOSING, both FINs crossed", net::tcp_state(gsrv), 11);
        c.eq("F: both ended connections closed", (net::tcp_state(fs), net::tcp_state(gs)), (7, 7));
        let (line, end) = read_to_end(fs, 64);
        c.eq(
            "F: the line left unread, then the end",
            (String::from_utf8_lossy(&line).into_owned(), end),
            ("f-line\n".into(), true),
        );
        let (rest, end) = read_to_end(gs, 64);
        c.eq("F: the reset one reads the end (its error was read before)", (rest.len(), end), (0, true));
        let w = libc::send(fs, b"x".as_ptr().cast(), 1, libc::MSG_NOSIGNAL);
        let e = std::io::Error::last_os_error().raw_os_error();
        c.eq("F: writes fail", (w, e), (-1, Some(libc::EPIPE)));
        c.eq("C: in CLOSE_WAIT", net::tcp_state(csrv), 8);
        let (line, end) = read_to_end(csrv, 64);
        c.eq(
            "C: the outside client's line, then the end",
            (String::from_utf8_lossy(&line).into_owned(), end),
            ("outside-line\n".into(), true),
        );
        let sent = libc::write(csrv, b"outside-reply\n".as_ptr().cast(), 14);
        c.eq("C: the reply goes out", sent, 14);
        libc::shutdown(csrv, libc::SHUT_WR);
    }
    c.finish()
}
