//! A TCP connect in progress across checkpoint/restore (issue 11, class
//! 1). `tp-connecting DIR PORT`: a non-blocking connect to 127.0.0.1:PORT,
//! whose listener (the test's) has its accept queue full, so that its SYN
//! goes unanswered (SYN_SENT). After the restore, once the test made room,
//! the connection completes from the same local port: the socket becomes
//! writable with no error, and a line sent reaches the listener.

use cryopod_testprogs::*;
use std::time::{Duration, Instant};

fn local_port(fd: i32) -> u16 {
    // SAFETY: sockaddr_in is plain data, filled by getsockname.
    let mut a: libc::sockaddr_in = unsafe { std::mem::zeroed() };
    let mut len = 16u32;
    unsafe { libc::getsockname(fd, (&mut a as *mut libc::sockaddr_in).cast(), &mut len) };
    u16::from_be(a.sin_port)
}

fn main() {
    let dir = work_dir();
    let port: u16 = std::env::args().nth(2).and_then(|p| p.parse().ok()).unwrap_or(0);
    let mut c = Checks::new();
    // SAFETY: plain libc calls on this program's own descriptor.
    unsafe {
        let s = libc::socket(libc::AF_INET, libc::SOCK_STREAM | libc::SOCK_NONBLOCK, 0);
        let mut a: libc::sockaddr_in = std::mem::zeroed();
        a.sin_family = libc::AF_INET as u16;
        a.sin_addr.s_addr = u32::from_ne_bytes([127, 0, 0, 1]);
        a.sin_port = port.to_be();
        let r = libc::connect(s, (&a as *const libc::sockaddr_in).cast(), 16);
        let e = std::io::Error::last_os_error().raw_os_error();
        std::thread::sleep(Duration::from_millis(200));
        if r == 0 || e != Some(libc::EINPROGRESS) || net::tcp_state(s) != 2 {
            println!("FAIL (setup: connect {r} {e:?}, state {})", net::tcp_state(s));
            std::process::exit(1);
        }
        let port_before = local_port(s);
        ready_and_wait(&dir);

        c.eq("still connecting, from the same port", (net::tcp_state(s), local_port(s)), (2, port_before));
        let t = Instant::now();
        let mut p = libc::pollfd { fd: s, events: libc::POLLOUT, revents: 0 };
        while libc::poll(&mut p, 1, 100) != 1 && t.elapsed() < Duration::from_secs(20) {}
        let mut err = -1i32;
        let mut len = 4u32;
        libc::getsockopt(s, libc::SOL_SOCKET, libc::SO_ERROR, (&mut err as *mut i32).cast(), &mut len);
        c.eq(
            "the connection completes without error",
            (p.revents & libc::POLLOUT != 0, err, net::tcp_state(s)),
            (true, 0, 1),
        );
        let sent = libc::send(s, b"connected\n".as_ptr().cast(), 10, 0);
        c.eq("a line goes out", sent, 10);
    }
    c.finish()
}
