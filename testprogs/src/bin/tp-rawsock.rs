//! Raw and packet sockets across checkpoint/restore (issue 11, class 2),
//! all on loopback:
//! - a raw ICMP socket bound to 127.0.0.1 with an ICMP filter that lets
//!   only echo replies through: after the restore it sends an echo request
//!   to 127.0.0.1 and gets the kernel's reply, not its own request;
//! - a raw socket of protocol 253 with IP_HDRINCL, connected to
//!   127.0.0.1: it sends a whole IP packet of its protocol and reads it
//!   back;
//! - a packet socket (SOCK_DGRAM, IPv4) bound to `lo` with PACKET_AUXDATA:
//!   bound to `lo` again, the option on, and it sees loopback's packets;
//!   it joined multicast address 01:00:5e:7f:12:34 on `lo` twice: after
//!   the restore the address is on `lo` (/proc/net/dev_mcast), still
//!   after one drop, gone after the second;
//! - two packet sockets in fanout group 0x77 (hash, with rollover): after
//!   the restore each says so, and the group is there (joining it as
//!   another type is refused).
//!
//! With `ring`: a packet socket with a receive ring (PACKET_RX_RING), not
//! carried: the checkpoint must refuse it, and the program goes on.

use cryopod_testprogs::*;
use std::time::{Duration, Instant};

const ICMP_FILTER: i32 = 1;
const SOL_RAW: i32 = 255;
const SOL_PACKET: i32 = 263;
const PACKET_AUXDATA: i32 = 8;
const PACKET_ADD_MEMBERSHIP: i32 = 1;
const PACKET_DROP_MEMBERSHIP: i32 = 2;
const PACKET_MR_MULTICAST: u16 = 0;
const PACKET_FANOUT: i32 = 18;
/// Group 0x77, hash, with the rollover flag.
const FANOUT: u32 = 0x77 | (0x1000 << 16);
const GROUP: [u8; 6] = [0x01, 0x00, 0x5e, 0x7f, 0x12, 0x34];

/// Is the multicast address GROUP on `lo`?
fn lo_has_group() -> bool {
    std::fs::read_to_string("/proc/net/dev_mcast")
        .unwrap_or_default()
        .lines()
        .any(|l| l.split_whitespace().nth(1) == Some("lo") && l.ends_with("01005e7f1234"))
}

/// Add (or drop) GROUP on `lo` for packet socket `fd`.
fn membership(fd: i32, index: i32, add: bool) -> bool {
    // SAFETY: packet_mreq is plain data; setsockopt reads it whole.
    unsafe {
        let mut m: libc::packet_mreq = std::mem::zeroed();
        m.mr_ifindex = index;
        m.mr_type = PACKET_MR_MULTICAST;
        m.mr_alen = 6;
        m.mr_address[..6].copy_from_slice(&GROUP);
        let opt = if add { PACKET_ADD_MEMBERSHIP } else { PACKET_DROP_MEMBERSHIP };
        let len = std::mem::size_of::<libc::packet_mreq>() as u32;
        libc::setsockopt(fd, SOL_PACKET, opt, (&m as *const libc::packet_mreq).cast(), len) == 0
    }
}

/// A packet socket for every IPv4 frame, joining fanout `value`.
fn fanout_socket(value: u32) -> (i32, bool) {
    // SAFETY: socket and setsockopt with a live int.
    unsafe {
        let fd = libc::socket(libc::AF_PACKET, libc::SOCK_RAW, i32::from((libc::ETH_P_IP as u16).to_be()));
        let ok = fd >= 0 && libc::setsockopt(fd, SOL_PACKET, PACKET_FANOUT, (&value as *const u32).cast(), 4) == 0;
        (fd, ok)
    }
}

fn get_int(fd: i32, level: i32, opt: i32) -> i32 {
    let mut v = -1i32;
    let mut len = 4u32;
    // SAFETY: the option writes one int.
    unsafe { libc::getsockopt(fd, level, opt, (&mut v as *mut i32).cast(), &mut len) };
    v
}

fn lo() -> libc::sockaddr_in {
    // SAFETY: sockaddr_in is plain data.
    let mut a: libc::sockaddr_in = unsafe { std::mem::zeroed() };
    a.sin_family = libc::AF_INET as u16;
    a.sin_addr.s_addr = u32::from_ne_bytes([127, 0, 0, 1]);
    a
}

/// The Internet checksum of `b`.
fn checksum(b: &[u8]) -> u16 {
    let mut sum: u32 = b.chunks(2).map(|c| u32::from(u16::from_be_bytes([c[0], *c.get(1).unwrap_or(&0)]))).sum();
    while sum >> 16 != 0 {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

/// Receive packets on `fd` for up to 2 s; each as read.
unsafe fn receive(fd: i32, until: impl Fn(&[u8]) -> bool) -> Option<Vec<u8>> {
    let t = Instant::now();
    let mut b = vec![0u8; 4096];
    while t.elapsed() < Duration::from_secs(2) {
        let mut p = libc::pollfd { fd, events: libc::POLLIN, revents: 0 };
        if libc::poll(&mut p, 1, 100) != 1 {
            continue;
        }
        let n = libc::recv(fd, b.as_mut_ptr().cast(), b.len(), 0);
        if n > 0 && until(&b[..n as usize]) {
            return Some(b[..n as usize].to_vec());
        }
    }
    None
}

/// `ring`: a packet socket with a receive ring of 4 frames; the ring is
/// still set up after the (refused) checkpoint.
fn ring(dir: &std::path::Path, c: &mut Checks) {
    const PACKET_RX_RING: i32 = 5;
    // SAFETY: socket and setsockopt with a live tpacket_req.
    let ok = unsafe {
        let fd = libc::socket(libc::AF_PACKET, libc::SOCK_RAW, i32::from((libc::ETH_P_IP as u16).to_be()));
        let req = libc::tpacket_req { tp_block_size: 4096, tp_block_nr: 4, tp_frame_size: 2048, tp_frame_nr: 8 };
        let len = std::mem::size_of::<libc::tpacket_req>() as u32;
        fd >= 0 && libc::setsockopt(fd, SOL_PACKET, PACKET_RX_RING, (&req as *const libc::tpacket_req).cast(), len) == 0
    };
    if !ok {
        println!("FAIL (setup: ring: {})", std::io::Error::last_os_error());
        std::process::exit(1);
    }
    ready_and_wait(dir);
    c.check("still running", true, "");
}

fn main() {
    let dir = work_dir();
    let mut c = Checks::new();
    if std::env::args().nth(2).as_deref() == Some("ring") {
        ring(&dir, &mut c);
        c.finish()
    }
    // SAFETY: plain libc calls on this program's own descriptors.
    unsafe {
        let a = lo();
        let alen = std::mem::size_of::<libc::sockaddr_in>() as u32;
        let ap = (&a as *const libc::sockaddr_in).cast();
        let icmp = libc::socket(libc::AF_INET, libc::SOCK_RAW, libc::IPPROTO_ICMP);
        let only_replies: u32 = !1; // bit 0: echo reply passes
        let raw = libc::socket(libc::AF_INET, libc::SOCK_RAW, 253);
        let on = 1i32;
        let pkt = libc::socket(libc::AF_PACKET, libc::SOCK_DGRAM, i32::from((libc::ETH_P_IP as u16).to_be()));
        let lo_index = libc::if_nametoindex(c"lo".as_ptr()) as i32;
        let mut ll: libc::sockaddr_ll = std::mem::zeroed();
        ll.sll_family = libc::AF_PACKET as u16;
        ll.sll_protocol = (libc::ETH_P_IP as u16).to_be();
        ll.sll_ifindex = lo_index;
        let ok = icmp >= 0
            && raw >= 0
            && pkt >= 0
            && libc::bind(icmp, ap, alen) == 0
            && libc::setsockopt(icmp, SOL_RAW, ICMP_FILTER, (&only_replies as *const u32).cast(), 4) == 0
            && libc::setsockopt(raw, libc::IPPROTO_IP, libc::IP_HDRINCL, (&on as *const i32).cast(), 4) == 0
            && libc::connect(raw, ap, alen) == 0
            && libc::bind(
                pkt,
                (&ll as *const libc::sockaddr_ll).cast(),
                std::mem::size_of::<libc::sockaddr_ll>() as u32,
            ) == 0
            && libc::setsockopt(pkt, SOL_PACKET, PACKET_AUXDATA, (&on as *const i32).cast(), 4) == 0;
        let fresh = !lo_has_group();
        let joined = membership(pkt, lo_index, true) && membership(pkt, lo_index, true) && lo_has_group();
        let (fan_a, fan_a_ok) = fanout_socket(FANOUT);
        let (fan_b, fan_b_ok) = fanout_socket(FANOUT);
        let fanouts =
            || (get_int(fan_a, SOL_PACKET, PACKET_FANOUT) as u32, get_int(fan_b, SOL_PACKET, PACKET_FANOUT) as u32);
        // Joining group 0x77 as another type (load balance) is refused
        // while the group is there.
        let group_there = || {
            let (fd, ok) = fanout_socket(0x77 | (1 << 16));
            libc::close(fd);
            !ok
        };
        if !ok || !fresh || !joined || !fan_a_ok || !fan_b_ok || !group_there() || fanouts() != (FANOUT, FANOUT) {
            println!(
                "FAIL (setup: {} {fresh} {joined} {fan_a_ok} {fan_b_ok} {:x?}: {})",
                ok,
                fanouts(),
                std::io::Error::last_os_error()
            );
            std::process::exit(1);
        }
        let filter_of = |fd: i32| get_int(fd, SOL_RAW, ICMP_FILTER) as u32;
        let before = (
            filter_of(icmp),
            get_int(raw, libc::IPPROTO_IP, libc::IP_HDRINCL),
            get_int(pkt, SOL_PACKET, PACKET_AUXDATA),
        );
        ready_and_wait(&dir);

        let after = (
            filter_of(icmp),
            get_int(raw, libc::IPPROTO_IP, libc::IP_HDRINCL),
            get_int(pkt, SOL_PACKET, PACKET_AUXDATA),
        );
        c.eq("ICMP filter, IP_HDRINCL, PACKET_AUXDATA", after, before);
        let mut sa: libc::sockaddr_in = std::mem::zeroed();
        let mut sl = alen;
        libc::getsockname(icmp, (&mut sa as *mut libc::sockaddr_in).cast(), &mut sl);
        c.eq("the ICMP socket's address", sa.sin_addr.s_addr, a.sin_addr.s_addr);
        let mut bound: libc::sockaddr_ll = std::mem::zeroed();
        let mut bl = std::mem::size_of::<libc::sockaddr_ll>() as u32;
        libc::getsockname(pkt, (&mut bound as *mut libc::sockaddr_ll).cast(), &mut bl);
        c.eq(
            "the packet socket's interface and protocol",
            (bound.sll_ifindex, bound.sll_protocol),
            (lo_index, ll.sll_protocol),
        );

        // An echo request: only the reply may pass the filter.
        let mut echo = [8u8, 0, 0, 0, 0x12, 0x34, 0, 1, b'p', b'i', b'n', b'g'];
        let sum = checksum(&echo);
        echo[2..4].copy_from_slice(&sum.to_be_bytes());
        libc::sendto(icmp, echo.as_ptr().cast(), echo.len(), 0, ap, alen);
        let got = receive(icmp, |p| p.len() >= 28).map(|p| (p[20], p[24..26].to_vec()));
        c.eq("the ICMP socket gets the reply, not its request", got, Some((0, vec![0x12, 0x34])));
        c.check(
            "the packet socket sees loopback's packets",
            receive(pkt, |p| p.len() >= 20 && p[0] >> 4 == 4).is_some(),
            "nothing",
        );
        c.eq("the fanout group of both", fanouts(), (FANOUT, FANOUT));
        c.check("the fanout group is there", group_there(), "joined as another type");
        let there = lo_has_group();
        let after_one = membership(pkt, lo_index, false) && lo_has_group();
        let after_two = membership(pkt, lo_index, false) && !lo_has_group();
        c.eq("the multicast membership, joined twice", (there, after_one, after_two), (true, true, true));

        // A whole packet of protocol 253, header ours.
        let mut ip = [0u8; 27];
        ip[0] = 0x45;
        ip[2..4].copy_from_slice(&27u16.to_be_bytes());
        ip[8] = 64;
        ip[9] = 253;
        ip[12..16].copy_from_slice(&[127, 0, 0, 1]);
        ip[16..20].copy_from_slice(&[127, 0, 0, 1]);
        ip[20..].copy_from_slice(b"raw-253");
        let sent = libc::send(raw, ip.as_ptr().cast(), ip.len(), 0);
        let back = receive(raw, |p| p.len() >= 27 && &p[20..27] == b"raw-253");
        c.check(
            "the protocol 253 socket sends and reads its packet",
            sent == 27 && back.is_some(),
            format!("sent {sent}"),
        );
    }
    c.finish()
}
