//! Netlink sockets across checkpoint/restore (issue 11, class 2): a
//! NETLINK_ROUTE socket bound by the kernel to a port id of its choosing,
//! in groups joined at bind (link and IPv4 address events) and one joined
//! later (group 33, beyond the bind's 32), with NO_ENOBUFS and EXT_ACK on;
//! one bound to a port id of the program's choosing; a NETLINK_GENERIC
//! socket never used (no port id). After the restore each has its port
//! id, groups and flags, and the route sockets get their answers to a
//! link dump addressed to their port ids.
//!
//! With a second argument `unread`, an answer waits unread: a checkpoint
//! must refuse (only the kernel could send it again), and the program
//! then reads it as it was.

use cryopod_testprogs::*;
use std::time::{Duration, Instant};

const SOL_NETLINK: i32 = 270;

unsafe fn nl_socket(protocol: i32, kind: i32, pid: u32, groups: u32) -> i32 {
    let s = libc::socket(libc::AF_NETLINK, kind, protocol);
    if pid != 0 || groups != 0 {
        let mut a: libc::sockaddr_nl = std::mem::zeroed();
        a.nl_family = libc::AF_NETLINK as u16;
        a.nl_pid = pid;
        a.nl_groups = groups;
        if libc::bind(s, (&a as *const libc::sockaddr_nl).cast(), std::mem::size_of::<libc::sockaddr_nl>() as u32) != 0
        {
            return -1;
        }
    }
    s
}

fn portid(s: i32) -> u32 {
    // SAFETY: sockaddr_nl is plain data, filled by getsockname.
    let mut a: libc::sockaddr_nl = unsafe { std::mem::zeroed() };
    let mut len = std::mem::size_of::<libc::sockaddr_nl>() as u32;
    unsafe { libc::getsockname(s, (&mut a as *mut libc::sockaddr_nl).cast(), &mut len) };
    a.nl_pid
}

fn memberships(s: i32) -> Vec<u32> {
    let mut w = [0u32; 8];
    let mut len = std::mem::size_of_val(&w) as u32;
    // SAFETY: the option writes at most `len` bytes into `w`.
    unsafe { libc::getsockopt(s, SOL_NETLINK, 9, w.as_mut_ptr().cast(), &mut len) };
    w[..(len as usize / 4).min(8)].to_vec()
}

fn flags(s: i32) -> Vec<i32> {
    [3, 4, 5, 8, 10, 11, 12]
        .into_iter()
        .map(|f| {
            let mut v = 0i32;
            let mut len = 4u32;
            // SAFETY: the option writes one int.
            unsafe { libc::getsockopt(s, SOL_NETLINK, f, (&mut v as *mut i32).cast(), &mut len) };
            v
        })
        .collect()
}

fn view(s: i32) -> (u32, Vec<u32>, Vec<i32>) {
    (portid(s), memberships(s), flags(s))
}

/// Ask for a dump of the links; the first answer's (type, seq, port id).
unsafe fn link_dump(s: i32, seq: u32) -> Option<(u16, u32, u32)> {
    let mut req = [0u8; 32];
    req[0..4].copy_from_slice(&32u32.to_ne_bytes());
    req[4..6].copy_from_slice(&libc::RTM_GETLINK.to_ne_bytes());
    req[6..8].copy_from_slice(&((libc::NLM_F_REQUEST | libc::NLM_F_DUMP) as u16).to_ne_bytes());
    req[8..12].copy_from_slice(&seq.to_ne_bytes());
    req[16] = libc::AF_UNSPEC as u8;
    let mut k: libc::sockaddr_nl = std::mem::zeroed();
    k.nl_family = libc::AF_NETLINK as u16;
    let kp = (&k as *const libc::sockaddr_nl).cast();
    if libc::sendto(s, req.as_ptr().cast(), req.len(), 0, kp, std::mem::size_of::<libc::sockaddr_nl>() as u32) != 32 {
        return None;
    }
    let t = Instant::now();
    let mut buf = vec![0u8; 1 << 16];
    while t.elapsed() < Duration::from_secs(5) {
        let mut p = libc::pollfd { fd: s, events: libc::POLLIN, revents: 0 };
        if libc::poll(&mut p, 1, 100) != 1 {
            continue;
        }
        let n = libc::recv(s, buf.as_mut_ptr().cast(), buf.len(), 0);
        if n < 16 {
            return None;
        }
        let ty = u16::from_ne_bytes([buf[4], buf[5]]);
        let got_seq = u32::from_ne_bytes([buf[8], buf[9], buf[10], buf[11]]);
        let pid = u32::from_ne_bytes([buf[12], buf[13], buf[14], buf[15]]);
        // Drain the rest of the dump.
        while libc::recv(s, buf.as_mut_ptr().cast(), buf.len(), libc::MSG_DONTWAIT) > 0 {}
        return Some((ty, got_seq, pid));
    }
    None
}

/// `unread`: a dump's answer left waiting.
unsafe fn unread(dir: &std::path::Path, c: &mut Checks) {
    let s = nl_socket(libc::NETLINK_ROUTE, libc::SOCK_RAW, 0, 0);
    let mut req = [0u8; 32];
    req[0..4].copy_from_slice(&32u32.to_ne_bytes());
    req[4..6].copy_from_slice(&libc::RTM_GETLINK.to_ne_bytes());
    req[6..8].copy_from_slice(&((libc::NLM_F_REQUEST | libc::NLM_F_DUMP) as u16).to_ne_bytes());
    req[8..12].copy_from_slice(&9u32.to_ne_bytes());
    if s < 0 || libc::send(s, req.as_ptr().cast(), 32, 0) != 32 {
        println!("FAIL (setup: the request)");
        std::process::exit(1);
    }
    ready_and_wait(dir);
    let mut buf = vec![0u8; 1 << 16];
    let n = libc::recv(s, buf.as_mut_ptr().cast(), buf.len(), libc::MSG_DONTWAIT);
    let seq = (n >= 16).then(|| u32::from_ne_bytes([buf[8], buf[9], buf[10], buf[11]]));
    c.eq("the answer left waiting, as it was", seq, Some(9));
}

fn main() {
    let dir = work_dir();
    let mut c = Checks::new();
    if std::env::args().nth(2).as_deref() == Some("unread") {
        // SAFETY: plain libc calls on this program's own descriptors.
        unsafe { unread(&dir, &mut c) };
        c.finish()
    }
    // SAFETY: plain libc calls on this program's own descriptors.
    unsafe {
        let route = nl_socket(libc::NETLINK_ROUTE, libc::SOCK_RAW, 0, 0x1 | 0x10);
        let mine = nl_socket(libc::NETLINK_ROUTE, libc::SOCK_DGRAM, 0x7ff0_1234, 0);
        let generic = nl_socket(libc::NETLINK_GENERIC, libc::SOCK_RAW, 0, 0);
        let g33 = 33i32;
        let on = 1i32;
        let ok = route >= 0
            && mine >= 0
            && generic >= 0
            && libc::setsockopt(route, SOL_NETLINK, 1, (&g33 as *const i32).cast(), 4) == 0
            && libc::setsockopt(route, SOL_NETLINK, 5, (&on as *const i32).cast(), 4) == 0
            && libc::setsockopt(route, SOL_NETLINK, 11, (&on as *const i32).cast(), 4) == 0;
        if !ok {
            println!("FAIL (setup: netlink sockets: {})", std::io::Error::last_os_error());
            std::process::exit(1);
        }
        // A locked filter that drops everything, on the generic socket.
        let drop_all = [libc::sock_filter { code: 0x06, jt: 0, jf: 0, k: 0 }];
        let prog = libc::sock_fprog { len: 1, filter: drop_all.as_ptr() as *mut libc::sock_filter };
        let plen = std::mem::size_of::<libc::sock_fprog>() as u32;
        if libc::setsockopt(
            generic,
            libc::SOL_SOCKET,
            libc::SO_ATTACH_FILTER,
            (&prog as *const libc::sock_fprog).cast(),
            plen,
        ) != 0
            || libc::setsockopt(generic, libc::SOL_SOCKET, libc::SO_LOCK_FILTER, (&on as *const i32).cast(), 4) != 0
        {
            println!("FAIL (setup: filter)");
            std::process::exit(1);
        }
        let generic_filter = net::socket_filter(generic);
        let before = [view(route), view(mine), view(generic)];
        if before[0].1.get(1) != Some(&1) || before[2].0 != 0 {
            println!("FAIL (setup: {before:?})");
            std::process::exit(1);
        }
        ready_and_wait(&dir);

        c.eq("the route socket: port id, groups, flags", view(route), before[0].clone());
        c.eq("the socket bound by the program", view(mine), before[1].clone());
        c.eq("the generic socket, never used", view(generic), before[2].clone());
        c.eq("the generic socket's locked filter", net::socket_filter(generic), generic_filter);
        c.eq("the route socket's answer", link_dump(route, 7), Some((libc::RTM_NEWLINK, 7, before[0].0)));
        c.eq("the bound socket's answer", link_dump(mine, 8), Some((libc::RTM_NEWLINK, 8, 0x7ff0_1234)));
    }
    c.finish()
}
