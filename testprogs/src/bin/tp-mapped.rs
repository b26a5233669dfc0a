//! IPv4-mapped IPv6 and IPv6 options across a checkpoint (issue 11,
//! classes 1 and 2). `tp-mapped DIR`: an IPv6 listener on [::] that takes
//! IPv4 too (IPV6_V6ONLY off), an IPv4 client connected to it (so the
//! server's end is an IPv6 socket with mapped addresses), and an IPv6 UDP
//! socket with a traffic class and hop limit of its own. After the
//! restore the server's end still names its peer as ::ffff:127.0.0.1,
//! data goes both ways, a new IPv4 client is accepted, and the UDP
//! socket's options read back the same. PASS only if all of that holds.

use cryopod_testprogs::*;
use std::io::{Read, Write};
use std::net::{Ipv6Addr, SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::os::fd::AsRawFd;

fn setup_failed(what: &str) -> ! {
    println!("FAIL (setup: {what}: {})", std::io::Error::last_os_error());
    std::process::exit(1)
}

fn opt(fd: i32, level: i32, name: i32) -> i32 {
    let mut v: i32 = -1;
    let mut len = 4u32;
    // SAFETY: getsockopt into a live int.
    unsafe { libc::getsockopt(fd, level, name, (&mut v as *mut i32).cast(), &mut len) };
    v
}

fn set(fd: i32, level: i32, name: i32, v: i32) {
    // SAFETY: setsockopt from a live int.
    if unsafe { libc::setsockopt(fd, level, name, (&v as *const i32).cast(), 4) } != 0 {
        setup_failed("setsockopt");
    }
}

fn main() {
    let dir = work_dir();
    let mut c = Checks::new();
    // std's [::] listener leaves IPV6_V6ONLY as the system says (off here).
    let l = TcpListener::bind("[::]:0").unwrap_or_else(|_| setup_failed("bind [::]"));
    if opt(l.as_raw_fd(), libc::IPPROTO_IPV6, libc::IPV6_V6ONLY) != 0 {
        setup_failed("a dual-stack listener");
    }
    let port = l.local_addr().map(|a| a.port()).unwrap_or(0);
    let mut client = TcpStream::connect(("127.0.0.1", port)).unwrap_or_else(|_| setup_failed("connect"));
    let (mut server, peer) = l.accept().unwrap_or_else(|_| setup_failed("accept"));
    let mapped = Ipv6Addr::new(0, 0, 0, 0, 0, 0xffff, 0x7f00, 1);
    if !matches!(peer, SocketAddr::V6(a) if *a.ip() == mapped) {
        println!("FAIL (setup: peer {peer})");
        std::process::exit(1);
    }
    let u = UdpSocket::bind("[::1]:0").unwrap_or_else(|_| setup_failed("bind [::1] (udp)"));
    set(u.as_raw_fd(), libc::IPPROTO_IPV6, libc::IPV6_TCLASS, 0x20);
    set(u.as_raw_fd(), libc::IPPROTO_IPV6, libc::IPV6_UNICAST_HOPS, 17);
    let uopts = |u: &UdpSocket| {
        [
            opt(u.as_raw_fd(), libc::IPPROTO_IPV6, libc::IPV6_TCLASS),
            opt(u.as_raw_fd(), libc::IPPROTO_IPV6, libc::IPV6_UNICAST_HOPS),
        ]
    };
    ready_and_wait(&dir);

    c.eq("the server's end names its peer as mapped", server.peer_addr().ok().map(|a| a.ip()), Some(mapped.into()));
    let _ = client.write_all(b"ping");
    let mut b = [0u8; 4];
    let _ = server.read_exact(&mut b);
    c.eq("client to server", &b, b"ping");
    let _ = server.write_all(b"pong");
    let _ = client.read_exact(&mut b);
    c.eq("server to client", &b, b"pong");
    let again = TcpStream::connect(("127.0.0.1", port)).is_ok() && l.accept().is_ok();
    c.check("a new IPv4 client is accepted", again, "no");
    c.eq("the UDP socket's traffic class and hop limit", uopts(&u), [0x20, 17]);
    c.finish()
}
