//! Socket options across a checkpoint (issue 11, class 2). `tp-sockopts
//! DIR`: a TCP listener, a connection to it over loopback (both ends), and
//! a UDP socket, each with options set away from their defaults: address
//! and port reuse, broadcast, keepalive with its idle time, interval and
//! count, no delay, cork, linger, priority, mark, type of service, time
//! to live, user timeout, deferred accept, congestion control, receive
//! low-water mark, timeouts, and buffer sizes the program chose. After the
//! restore every option reads back as it did, a buffer size the program
//! did not choose is still the kernel's to tune, and the connection
//! carries data both ways. Beside them (issue 11, class 1): two TCP
//! sockets never connected, one bound to a port and one not, with
//! options: after the restore the bound one is at its port with its
//! options and can listen and accept, the other can connect. And a bound
//! UDP socket with a classic BPF filter (only datagrams of more than 20
//! bytes), locked: after the restore the same program is attached, still
//! locked, and a short datagram is dropped while a long one arrives. And
//! two shut UDP sockets: one shut for reading polls hung up, one
//! connected and shut for writing cannot send. PASS only if all of that
//! holds.

use cryopod_testprogs::*;

type Opt = (i32, i32, &'static str);

const COMMON: [Opt; 8] = [
    (libc::SOL_SOCKET, libc::SO_REUSEADDR, "SO_REUSEADDR"),
    (libc::SOL_SOCKET, libc::SO_REUSEPORT, "SO_REUSEPORT"),
    (libc::SOL_SOCKET, libc::SO_KEEPALIVE, "SO_KEEPALIVE"),
    (libc::SOL_SOCKET, libc::SO_PRIORITY, "SO_PRIORITY"),
    (libc::SOL_SOCKET, libc::SO_MARK, "SO_MARK"),
    (libc::SOL_SOCKET, libc::SO_RCVLOWAT, "SO_RCVLOWAT"),
    (libc::IPPROTO_IP, libc::IP_TOS, "IP_TOS"),
    (libc::IPPROTO_IP, libc::IP_TTL, "IP_TTL"),
];

const TCP: [Opt; 7] = [
    (libc::IPPROTO_TCP, libc::TCP_NODELAY, "TCP_NODELAY"),
    (libc::IPPROTO_TCP, libc::TCP_CORK, "TCP_CORK"),
    (libc::IPPROTO_TCP, libc::TCP_KEEPIDLE, "TCP_KEEPIDLE"),
    (libc::IPPROTO_TCP, libc::TCP_KEEPINTVL, "TCP_KEEPINTVL"),
    (libc::IPPROTO_TCP, libc::TCP_KEEPCNT, "TCP_KEEPCNT"),
    (libc::IPPROTO_TCP, libc::TCP_USER_TIMEOUT, "TCP_USER_TIMEOUT"),
    (libc::IPPROTO_TCP, libc::TCP_DEFER_ACCEPT, "TCP_DEFER_ACCEPT"),
];

fn setup_failed(what: &str) -> ! {
    println!("FAIL (setup: {what}: {})", std::io::Error::last_os_error());
    std::process::exit(1)
}

fn set(fd: i32, level: i32, name: i32, v: &[u8], what: &str) {
    // SAFETY: setsockopt from a live buffer of its length.
    if unsafe { libc::setsockopt(fd, level, name, v.as_ptr().cast(), v.len() as u32) } != 0 {
        setup_failed(what);
    }
}

fn set_int(fd: i32, level: i32, name: i32, v: i32, what: &str) {
    set(fd, level, name, &v.to_ne_bytes(), what)
}

fn get(fd: i32, level: i32, name: i32) -> Vec<u8> {
    let mut b = vec![0u8; 32];
    let mut len = b.len() as u32;
    // SAFETY: getsockopt into a live buffer; `len` in/out.
    if unsafe { libc::getsockopt(fd, level, name, b.as_mut_ptr().cast(), &mut len) } != 0 {
        return vec![];
    }
    b.truncate(len as usize);
    b
}

/// Every option of `opts` plus linger, timeouts and congestion control.
fn snapshot(fd: i32, opts: &[Opt]) -> Vec<(&'static str, Vec<u8>)> {
    let mut out: Vec<(&'static str, Vec<u8>)> = opts.iter().map(|&(l, n, name)| (name, get(fd, l, n))).collect();
    out.push(("SO_LINGER", get(fd, libc::SOL_SOCKET, libc::SO_LINGER)));
    out.push(("SO_RCVTIMEO", get(fd, libc::SOL_SOCKET, libc::SO_RCVTIMEO)));
    out.push(("SO_SNDTIMEO", get(fd, libc::SOL_SOCKET, libc::SO_SNDTIMEO)));
    out
}

fn tune(fd: i32, what: &str) {
    set_int(fd, libc::SOL_SOCKET, libc::SO_KEEPALIVE, 1, what);
    set_int(fd, libc::SOL_SOCKET, libc::SO_PRIORITY, 5, what);
    set_int(fd, libc::SOL_SOCKET, libc::SO_MARK, 42, what);
    set_int(fd, libc::SOL_SOCKET, libc::SO_RCVLOWAT, 3, what);
    set_int(fd, libc::IPPROTO_IP, libc::IP_TOS, 0x10, what);
    set_int(fd, libc::IPPROTO_IP, libc::IP_TTL, 33, what);
    let linger = libc::linger { l_onoff: 1, l_linger: 7 };
    // SAFETY: reads the bytes of a plain struct.
    let lb = unsafe { std::slice::from_raw_parts((&linger as *const libc::linger).cast::<u8>(), 8) };
    set(fd, libc::SOL_SOCKET, libc::SO_LINGER, lb, what);
    let tv = libc::timeval { tv_sec: 3, tv_usec: 250_000 };
    // SAFETY: as above.
    let tb = unsafe { std::slice::from_raw_parts((&tv as *const libc::timeval).cast::<u8>(), 16) };
    set(fd, libc::SOL_SOCKET, libc::SO_RCVTIMEO, tb, what);
}

fn tune_tcp(fd: i32, what: &str) {
    set_int(fd, libc::IPPROTO_TCP, libc::TCP_NODELAY, 1, what);
    set_int(fd, libc::IPPROTO_TCP, libc::TCP_KEEPIDLE, 77, what);
    set_int(fd, libc::IPPROTO_TCP, libc::TCP_KEEPINTVL, 11, what);
    set_int(fd, libc::IPPROTO_TCP, libc::TCP_KEEPCNT, 5, what);
    set_int(fd, libc::IPPROTO_TCP, libc::TCP_USER_TIMEOUT, 12345, what);
    set(fd, libc::IPPROTO_TCP, libc::TCP_CONGESTION, b"reno", what);
}

fn congestion(fd: i32) -> String {
    let b = get(fd, libc::IPPROTO_TCP, libc::TCP_CONGESTION);
    String::from_utf8_lossy(&b).trim_end_matches('\0').to_string()
}

/// A UDP socket bound on loopback with a locked classic BPF filter that
/// passes only packets longer than 20 bytes; and its address.
unsafe fn filtered_udp() -> (i32, libc::sockaddr_in) {
    let f = libc::socket(libc::AF_INET, libc::SOCK_DGRAM, 0);
    let mut a: libc::sockaddr_in = std::mem::zeroed();
    a.sin_family = libc::AF_INET as u16;
    a.sin_addr.s_addr = u32::from_ne_bytes([127, 0, 0, 1]);
    let mut len = 16u32;
    let insns = [
        libc::sock_filter { code: 0x80, jt: 0, jf: 0, k: 0 },  // ld len
        libc::sock_filter { code: 0x25, jt: 0, jf: 1, k: 20 }, // jgt 20
        libc::sock_filter { code: 0x06, jt: 0, jf: 0, k: 0xffff },
        libc::sock_filter { code: 0x06, jt: 0, jf: 0, k: 0 },
    ];
    let prog = libc::sock_fprog { len: 4, filter: insns.as_ptr() as *mut libc::sock_filter };
    let plen = std::mem::size_of::<libc::sock_fprog>() as u32;
    let ok = libc::bind(f, (&a as *const libc::sockaddr_in).cast(), 16) == 0
        && libc::getsockname(f, (&mut a as *mut libc::sockaddr_in).cast(), &mut len) == 0
        && libc::setsockopt(
            f,
            libc::SOL_SOCKET,
            libc::SO_ATTACH_FILTER,
            (&prog as *const libc::sock_fprog).cast(),
            plen,
        ) == 0;
    set_int(f, libc::SOL_SOCKET, libc::SO_LOCK_FILTER, 1, "filtered");
    if !ok {
        setup_failed("the filtered UDP socket");
    }
    (f, a)
}

fn main() {
    let dir = work_dir();
    let mut c = Checks::new();
    // SAFETY (whole block): socket calls on descriptors this program owns,
    // with live buffers.
    unsafe {
        let l = libc::socket(libc::AF_INET, libc::SOCK_STREAM, 0);
        set_int(l, libc::SOL_SOCKET, libc::SO_REUSEADDR, 1, "listener");
        set_int(l, libc::SOL_SOCKET, libc::SO_REUSEPORT, 1, "listener");
        set_int(l, libc::IPPROTO_TCP, libc::TCP_DEFER_ACCEPT, 3, "listener");
        set_int(l, libc::SOL_SOCKET, libc::SO_RCVBUF, 100_000, "listener");
        tune(l, "listener");
        tune_tcp(l, "listener");
        let mut sin: libc::sockaddr_in = std::mem::zeroed();
        sin.sin_family = libc::AF_INET as u16;
        sin.sin_addr.s_addr = u32::from_ne_bytes([127, 0, 0, 1]);
        libc::bind(l, (&sin as *const libc::sockaddr_in).cast(), 16);
        libc::listen(l, 8);
        let mut slen = 16u32;
        libc::getsockname(l, (&mut sin as *mut libc::sockaddr_in).cast(), &mut slen);
        let client = libc::socket(libc::AF_INET, libc::SOCK_STREAM, 0);
        set_int(client, libc::SOL_SOCKET, libc::SO_SNDBUF, 50_000, "client");
        tune(client, "client");
        tune_tcp(client, "client");
        set_int(client, libc::IPPROTO_TCP, libc::TCP_CORK, 1, "client");
        if libc::connect(client, (&sin as *const libc::sockaddr_in).cast(), 16) != 0 {
            setup_failed("connect");
        }
        libc::send(client, b"x".as_ptr().cast(), 1, 0);
        let server = libc::accept(l, std::ptr::null_mut(), std::ptr::null_mut());
        if server < 0 {
            setup_failed("accept");
        }
        set_int(client, libc::IPPROTO_TCP, libc::TCP_CORK, 0, "client");
        let mut one = [0u8; 1];
        libc::recv(server, one.as_mut_ptr().cast(), 1, 0);
        set_int(client, libc::IPPROTO_TCP, libc::TCP_CORK, 1, "client");
        let u = libc::socket(libc::AF_INET, libc::SOCK_DGRAM, 0);
        set_int(u, libc::SOL_SOCKET, libc::SO_BROADCAST, 1, "udp");
        tune(u, "udp");
        let (filtered, faddr) = filtered_udp();
        let shut_rd = libc::socket(libc::AF_INET, libc::SOCK_DGRAM, 0);
        let shut_wr = libc::socket(libc::AF_INET, libc::SOCK_DGRAM, 0);
        libc::connect(shut_wr, (&faddr as *const libc::sockaddr_in).cast(), 16);
        libc::shutdown(shut_rd, libc::SHUT_RD);
        libc::shutdown(shut_wr, libc::SHUT_WR);
        let filter_before = net::socket_filter(filtered).0;
        if filter_before.len() != 32 {
            setup_failed("SO_GET_FILTER");
        }
        // Never connected: one bound (to a port of its own), one not.
        let bound = libc::socket(libc::AF_INET, libc::SOCK_STREAM, 0);
        set_int(bound, libc::SOL_SOCKET, libc::SO_REUSEADDR, 1, "bound");
        tune_tcp(bound, "bound");
        let mut bin: libc::sockaddr_in = std::mem::zeroed();
        bin.sin_family = libc::AF_INET as u16;
        bin.sin_addr.s_addr = u32::from_ne_bytes([127, 0, 0, 1]);
        if libc::bind(bound, (&bin as *const libc::sockaddr_in).cast(), 16) != 0 {
            setup_failed("bind");
        }
        let mut blen = 16u32;
        libc::getsockname(bound, (&mut bin as *mut libc::sockaddr_in).cast(), &mut blen);
        let unbound = libc::socket(libc::AF_INET, libc::SOCK_STREAM, 0);
        set_int(unbound, libc::SOL_SOCKET, libc::SO_KEEPALIVE, 1, "unbound");
        let tcp_opts: Vec<Opt> = COMMON.iter().chain(TCP.iter()).copied().collect();
        let fresh_before = [snapshot(bound, &tcp_opts), snapshot(unbound, &tcp_opts)];
        let before =
            [snapshot(l, &tcp_opts), snapshot(client, &tcp_opts), snapshot(server, &tcp_opts), snapshot(u, &COMMON)];
        let udp_broadcast = get(u, libc::SOL_SOCKET, libc::SO_BROADCAST);
        let locks = |fd: i32| get(fd, libc::SOL_SOCKET, 72).first().copied().unwrap_or(9);
        let locks_before = [locks(l), locks(client), locks(server)];
        let set_sizes = || [get(l, libc::SOL_SOCKET, libc::SO_RCVBUF), get(client, libc::SOL_SOCKET, libc::SO_SNDBUF)];
        let sizes_before = set_sizes();
        if locks_before[..2] != [2, 1] {
            println!("FAIL (setup: buffer locks {locks_before:?})");
            std::process::exit(1);
        }
        let cong = [congestion(l), congestion(client)];
        if cong != ["reno", "reno"] || udp_broadcast.first() != Some(&1) {
            println!("FAIL (setup: congestion {cong:?}, broadcast {udp_broadcast:?})");
            std::process::exit(1);
        }
        ready_and_wait(&dir);

        let after =
            [snapshot(l, &tcp_opts), snapshot(client, &tcp_opts), snapshot(server, &tcp_opts), snapshot(u, &COMMON)];
        for (which, (b, a)) in ["listener", "client", "server", "udp"].iter().zip(before.iter().zip(after.iter())) {
            let diff: Vec<String> = b
                .iter()
                .zip(a.iter())
                .filter(|(x, y)| x.1 != y.1)
                .map(|(x, y)| format!("{} {:?} -> {:?}", x.0, x.1, y.1))
                .collect();
            c.check(&format!("{which}: every option as it was"), diff.is_empty(), diff.join(", "));
        }
        c.eq("congestion control", [congestion(l), congestion(client)], cong);
        c.check(
            "sockets never connected: their options",
            [snapshot(bound, &tcp_opts), snapshot(unbound, &tcp_opts)] == fresh_before,
            "changed",
        );
        let mut now: libc::sockaddr_in = std::mem::zeroed();
        let mut nlen = 16u32;
        libc::getsockname(bound, (&mut now as *mut libc::sockaddr_in).cast(), &mut nlen);
        c.eq("the bound one's port", now.sin_port, bin.sin_port);
        let listened = libc::listen(bound, 4) == 0;
        let connected = libc::connect(unbound, (&bin as *const libc::sockaddr_in).cast(), 16) == 0;
        let accepted = libc::accept(bound, std::ptr::null_mut(), std::ptr::null_mut()) >= 0;
        c.eq(
            "the bound one listens and accepts what the other connects",
            (listened, connected, accepted),
            (true, true, true),
        );
        c.eq("UDP broadcast", get(u, libc::SOL_SOCKET, libc::SO_BROADCAST), udp_broadcast);
        let mut p = libc::pollfd { fd: shut_rd, events: libc::POLLIN | libc::POLLRDHUP, revents: 0 };
        libc::poll(&mut p, 1, 0);
        c.eq("a UDP socket shut for reading polls hung up", p.revents & libc::POLLRDHUP, libc::POLLRDHUP);
        let w = libc::send(shut_wr, b"x".as_ptr().cast(), 1, libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL);
        let e = std::io::Error::last_os_error().raw_os_error();
        c.eq("a UDP socket shut for writing cannot send", (w, e), (-1, Some(libc::EPIPE)));
        c.eq("the filter's program", net::socket_filter(filtered).0, filter_before);
        c.eq(
            "the filter still locked",
            get(filtered, libc::SOL_SOCKET, libc::SO_LOCK_FILTER),
            1i32.to_ne_bytes().to_vec(),
        );
        let s = libc::socket(libc::AF_INET, libc::SOCK_DGRAM, 0);
        for d in [&b"short"[..], &b"a-long-enough-datagram"[..]] {
            libc::sendto(s, d.as_ptr().cast(), d.len(), 0, (&faddr as *const libc::sockaddr_in).cast(), 16);
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
        let mut got = Vec::new();
        let mut b = [0u8; 64];
        loop {
            let n = libc::recv(filtered, b.as_mut_ptr().cast(), 64, libc::MSG_DONTWAIT);
            if n < 0 {
                break;
            }
            got.push(String::from_utf8_lossy(&b[..n as usize]).into_owned());
        }
        c.eq(
            "the filter drops the short datagram, passes the long one",
            got,
            vec!["a-long-enough-datagram".to_string()],
        );
        // Buffer sizes: those the program set (SO_BUF_LOCK's bits) are the
        // same; the others the kernel goes on tuning.
        c.eq("which buffer sizes the program set", [locks(l), locks(client), locks(server)], locks_before);
        c.eq("the sizes it set", set_sizes(), sizes_before);
        // Data both ways (the client is corked: uncork to send).
        set_int(client, libc::IPPROTO_TCP, libc::TCP_CORK, 0, "client");
        libc::send(client, b"ping".as_ptr().cast(), 4, 0);
        let mut b = [0u8; 16];
        let n = libc::recv(server, b.as_mut_ptr().cast(), 16, 0);
        c.eq("client to server", b.get(..n.max(0) as usize).unwrap_or(&[]).to_vec(), b"ping".to_vec());
        libc::send(server, b"pong".as_ptr().cast(), 4, 0);
        let n = libc::recv(client, b.as_mut_ptr().cast(), 16, 0);
        c.eq("server to client", b.get(..n.max(0) as usize).unwrap_or(&[]).to_vec(), b"pong".to_vec());
    }
    c.finish()
}
