//! ICMP "ping" sockets across a checkpoint (issue 11, class 2), in a pod.
//! `tp-ping DIR`: the program lets group 100 alone make ping sockets in
//! its network namespace (`net.ipv4.ping_group_range` "100 100"), joins
//! that group, and makes three: one that pinged 127.0.0.1 (its identifier
//! taken then), one bound to identifier 4242 and connected to 127.0.0.1
//! with a TTL of 33, and an IPv6 one that pinged ::1. After the restore
//! the range is as it set it, each socket has its identifier, the second
//! its peer and TTL, and each gets a reply to a new echo request, with its
//! own identifier. PASS only if all holds.

use cryopod_testprogs::*;

fn setup_failed(what: &str) -> ! {
    println!("FAIL (setup: {what}: {})", std::io::Error::last_os_error());
    std::process::exit(1)
}

fn sockaddr4(addr: [u8; 4], port: u16) -> libc::sockaddr_in {
    libc::sockaddr_in {
        sin_family: libc::AF_INET as u16,
        sin_port: port.to_be(),
        sin_addr: libc::in_addr { s_addr: u32::from_ne_bytes(addr) },
        sin_zero: [0; 8],
    }
}

fn sockaddr6_loopback() -> libc::sockaddr_in6 {
    let mut a = zeroed6();
    a.sin6_family = libc::AF_INET6 as u16;
    a.sin6_addr.s6_addr[15] = 1;
    a
}

fn zeroed6() -> libc::sockaddr_in6 {
    // SAFETY: sockaddr_in6 is plain data; all zeros is a valid value.
    unsafe { std::mem::zeroed() }
}

/// Send an echo request with `payload` (to `to`, or the connected peer)
/// and wait up to 2 s for the reply: (reply type, its identifier, whether
/// the payload came back).
fn echo(fd: i32, v6: bool, to: Option<libc::sockaddr_in>, payload: &[u8]) -> Option<(u8, u16, bool)> {
    let mut pkt = vec![if v6 { 128 } else { 8 }, 0, 0, 0, 0, 0, 0, 7];
    pkt.extend_from_slice(payload);
    // SAFETY: sends from a live buffer; the address, if any, is live.
    let sent = unsafe {
        match (v6, to) {
            (true, _) => {
                let a = sockaddr6_loopback();
                let len = std::mem::size_of::<libc::sockaddr_in6>() as u32;
                libc::sendto(fd, pkt.as_ptr().cast(), pkt.len(), 0, (&a as *const libc::sockaddr_in6).cast(), len)
            }
            (false, Some(a)) => {
                let len = std::mem::size_of::<libc::sockaddr_in>() as u32;
                libc::sendto(fd, pkt.as_ptr().cast(), pkt.len(), 0, (&a as *const libc::sockaddr_in).cast(), len)
            }
            (false, None) => libc::send(fd, pkt.as_ptr().cast(), pkt.len(), 0),
        }
    };
    if sent != pkt.len() as isize {
        return None;
    }
    let mut p = libc::pollfd { fd, events: libc::POLLIN, revents: 0 };
    // SAFETY: polls one live pollfd.
    if unsafe { libc::poll(&mut p, 1, 2000) } != 1 {
        return None;
    }
    let mut b = [0u8; 256];
    // SAFETY: reads into our buffer.
    let n = unsafe { libc::recv(fd, b.as_mut_ptr().cast(), b.len(), 0) };
    if n < 8 {
        return None;
    }
    let n = n as usize;
    Some((b[0], u16::from_be_bytes([b[4], b[5]]), &b[8..n] == payload))
}

/// (identifier, peer address) of a ping socket. getpeername says
/// ENOTCONN for ping sockets: the peer is read from /proc/self/net/icmp.
fn names(fd: i32) -> (u16, Option<[u8; 4]>) {
    let mut a = sockaddr4([0; 4], 0);
    let mut len = std::mem::size_of::<libc::sockaddr_in>() as u32;
    // SAFETY: getsockname/getpeername into a live sockaddr_in.
    unsafe { libc::getsockname(fd, (&mut a as *mut libc::sockaddr_in).cast(), &mut len) };
    let ident = u16::from_be(a.sin_port);
    let link = std::fs::read_link(format!("/proc/self/fd/{fd}")).unwrap_or_default();
    let ino = link.to_string_lossy().trim_start_matches("socket:[").trim_end_matches(']').to_string();
    let table = std::fs::read_to_string("/proc/self/net/icmp").unwrap_or_default();
    let peer = table.lines().skip(1).find_map(|l| {
        let f: Vec<&str> = l.split_whitespace().collect();
        if f.get(9) != Some(&ino.as_str()) || f.get(3) != Some(&"01") {
            return None;
        }
        let hex = f.get(2)?.split(':').next()?;
        Some(u32::from_str_radix(hex, 16).ok()?.to_ne_bytes())
    });
    (ident, peer)
}

fn ident6(fd: i32) -> u16 {
    let mut a = zeroed6();
    let mut len = std::mem::size_of::<libc::sockaddr_in6>() as u32;
    // SAFETY: getsockname into a live sockaddr_in6.
    unsafe { libc::getsockname(fd, (&mut a as *mut libc::sockaddr_in6).cast(), &mut len) };
    u16::from_be(a.sin6_port)
}

fn ttl(fd: i32) -> i32 {
    let mut v = 0i32;
    let mut len = 4u32;
    // SAFETY: one int.
    unsafe { libc::getsockopt(fd, libc::IPPROTO_IP, libc::IP_TTL, (&mut v as *mut i32).cast(), &mut len) };
    v
}

fn main() {
    let dir = work_dir();
    let mut c = Checks::new();
    let range_file = "/proc/sys/net/ipv4/ping_group_range";
    let range =
        || std::fs::read_to_string(range_file).unwrap_or_default().split_whitespace().collect::<Vec<_>>().join(" ");
    if std::fs::write(range_file, "100 100").is_err() || range() != "100 100" {
        setup_failed("ping_group_range");
    }
    let groups = [100u32];
    // SAFETY: setgroups with a live one-entry list.
    if unsafe { libc::setgroups(1, groups.as_ptr()) } != 0 {
        setup_failed("setgroups");
    }
    let lo = sockaddr4([127, 0, 0, 1], 0);
    // SAFETY: socket calls with live arguments.
    let (a, b, v6) = unsafe {
        (
            libc::socket(libc::AF_INET, libc::SOCK_DGRAM, libc::IPPROTO_ICMP),
            libc::socket(libc::AF_INET, libc::SOCK_DGRAM, libc::IPPROTO_ICMP),
            libc::socket(libc::AF_INET6, libc::SOCK_DGRAM, libc::IPPROTO_ICMPV6),
        )
    };
    if a < 0 || b < 0 || v6 < 0 {
        setup_failed("socket(ICMP)");
    }
    let bound = sockaddr4([127, 0, 0, 1], 4242);
    let len = std::mem::size_of::<libc::sockaddr_in>() as u32;
    let t = 33i32;
    // SAFETY: bind, connect and setsockopt with live arguments.
    let ok = unsafe {
        libc::bind(b, (&bound as *const libc::sockaddr_in).cast(), len) == 0
            && libc::connect(b, (&lo as *const libc::sockaddr_in).cast(), len) == 0
            && libc::setsockopt(b, libc::IPPROTO_IP, libc::IP_TTL, (&t as *const i32).cast(), 4) == 0
    };
    let first = (echo(a, false, Some(lo), b"first-a"), echo(v6, true, None, b"first-6"));
    let (ia, i6) = (names(a).0, ident6(v6));
    if !ok || first != (Some((0, ia, true)), Some((129, i6, true))) || ia == 0 || i6 == 0 {
        println!("FAIL (setup: {ok} {first:?} identifiers {ia} {i6})");
        std::process::exit(1);
    }
    let before = (names(a), names(b), ident6(v6), ttl(b));
    if before.1 != (4242, Some([127, 0, 0, 1])) {
        println!("FAIL (setup: the bound one is {:?})", before.1);
        std::process::exit(1);
    }
    ready_and_wait(&dir);

    c.eq("the range of groups that may ping", range(), "100 100".to_string());
    c.eq("identifiers, peer and TTL", (names(a), names(b), ident6(v6), ttl(b)), before);
    c.eq("a ping from the first", echo(a, false, Some(lo), b"after-a"), Some((0, ia, true)));
    c.eq("a ping from the bound one, to its peer", echo(b, false, None, b"after-b"), Some((0, 4242, true)));
    c.eq("an IPv6 ping", echo(v6, true, None, b"after-6"), Some((129, i6, true)));
    c.finish()
}
