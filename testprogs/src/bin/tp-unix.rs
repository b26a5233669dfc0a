//! Unix domain sockets across checkpoint/restore, between a server process
//! and its child client: a datagram socket bound to a name relative to
//! the working directory; a stream listener on a path (its socket file's
//! mode and group changed after the bind; backlog 7, shared
//! with the child) with one accepted connection (data queued both ways)
//! and one connection not yet accepted; a seqpacket listener on an abstract
//! name with an accepted connection (message boundaries kept); a stream
//! socketpair split between the two processes; a datagram socketpair with
//! three queued messages (one empty) and O_NONBLOCK; a bound datagram
//! socket with datagrams from the child queued; a pair whose other end shut
//! down writing, and one whose other end was closed (data, then EOF); a
//! datagram pair whose other end sent two messages and was closed, and
//! one whose ends were bound to abstract names; peer
//! credentials naming the right processes. After restore every connection
//! is used again in both directions.

use cryopod_testprogs::*;
use std::time::Duration;

unsafe fn sock(kind: i32) -> i32 {
    libc::socket(libc::AF_UNIX, kind, 0)
}

fn addr(name: &[u8]) -> (libc::sockaddr_un, u32) {
    let mut a: libc::sockaddr_un = unsafe { std::mem::zeroed() };
    a.sun_family = libc::AF_UNIX as u16;
    for (d, s) in a.sun_path.iter_mut().zip(name) {
        *d = *s as libc::c_char;
    }
    (a, (2 + name.len() + usize::from(name[0] != 0)) as u32)
}

unsafe fn bind(fd: i32, name: &[u8]) -> i32 {
    let (a, l) = addr(name);
    libc::bind(fd, (&a as *const libc::sockaddr_un).cast(), l)
}

unsafe fn connect(fd: i32, name: &[u8]) -> i32 {
    let (a, l) = addr(name);
    libc::connect(fd, (&a as *const libc::sockaddr_un).cast(), l)
}

unsafe fn send(fd: i32, b: &[u8]) -> isize {
    libc::send(fd, b.as_ptr().cast(), b.len(), 0)
}

unsafe fn sendto(fd: i32, b: &[u8], name: &[u8]) -> isize {
    let (a, l) = addr(name);
    libc::sendto(fd, b.as_ptr().cast(), b.len(), 0, (&a as *const libc::sockaddr_un).cast(), l)
}

/// One receive, waiting up to 5 s; None on timeout or error.
unsafe fn recv(fd: i32) -> Option<Vec<u8>> {
    let mut p = libc::pollfd { fd, events: libc::POLLIN, revents: 0 };
    if libc::poll(&mut p, 1, 5000) != 1 {
        return None;
    }
    let mut b = vec![0u8; 4096];
    let n = libc::recv(fd, b.as_mut_ptr().cast(), b.len(), libc::MSG_DONTWAIT);
    if n < 0 {
        return None;
    }
    b.truncate(n as usize);
    Some(b)
}

/// One datagram and its sender's address, waiting up to 5 s.
unsafe fn recvfrom(fd: i32) -> (Option<Vec<u8>>, Vec<u8>) {
    let mut p = libc::pollfd { fd, events: libc::POLLIN, revents: 0 };
    if libc::poll(&mut p, 1, 5000) != 1 {
        return (None, Vec::new());
    }
    let mut b = vec![0u8; 4096];
    let mut a: libc::sockaddr_un = std::mem::zeroed();
    let mut l = std::mem::size_of::<libc::sockaddr_un>() as u32;
    let n = libc::recvfrom(fd, b.as_mut_ptr().cast(), b.len(), 0, (&mut a as *mut libc::sockaddr_un).cast(), &mut l);
    if n < 0 {
        return (None, Vec::new());
    }
    b.truncate(n as usize);
    let name = a.sun_path[..(l as usize).saturating_sub(2)].iter().map(|&c| c as u8).collect();
    (Some(b), name)
}

unsafe fn peer_pid(fd: i32) -> i32 {
    let mut c = libc::ucred { pid: 0, uid: 0, gid: 0 };
    let mut l = std::mem::size_of::<libc::ucred>() as u32;
    libc::getsockopt(fd, libc::SOL_SOCKET, libc::SO_PEERCRED, (&mut c as *mut libc::ucred).cast(), &mut l);
    c.pid
}

unsafe fn sockname(fd: i32) -> Vec<u8> {
    let mut a: libc::sockaddr_un = std::mem::zeroed();
    let mut l = std::mem::size_of::<libc::sockaddr_un>() as u32;
    libc::getsockname(fd, (&mut a as *mut libc::sockaddr_un).cast(), &mut l);
    let n = (l as usize).saturating_sub(2);
    let mut v: Vec<u8> = a.sun_path[..n].iter().map(|&c| c as u8).collect();
    if v.first() != Some(&0) {
        while v.last() == Some(&0) {
            v.pop();
        }
    }
    v
}

unsafe fn sync_write(fd: i32) {
    libc::write(fd, b"x".as_ptr().cast(), 1);
}

unsafe fn sync_read(fd: i32) {
    let mut b = [0u8; 1];
    libc::read(fd, b.as_mut_ptr().cast(), 1);
}

fn s(v: &Option<Vec<u8>>) -> String {
    v.as_ref().map(|b| String::from_utf8_lossy(b).into_owned()).unwrap_or_else(|| "(nothing)".into())
}

/// `dead-path`: a datagram socket whose peer, bound to a path, sent two
/// messages and was closed. Not carried (binding the dead peer's path
/// again would leave a file): the checkpoint must refuse, and the
/// program still reads both.
unsafe fn dead_path(dir: &std::path::Path, c: &mut Checks) {
    let mut p = [0i32; 2];
    libc::socketpair(libc::AF_UNIX, libc::SOCK_DGRAM, 0, p.as_mut_ptr());
    let from = dir.join("gone.sock").as_os_str().as_encoded_bytes().to_vec();
    if bind(p[1], &from) != 0 {
        println!("FAIL (setup: bind: {})", std::io::Error::last_os_error());
        std::process::exit(1);
    }
    send(p[1], b"one");
    send(p[1], b"two");
    libc::close(p[1]);
    ready_and_wait(dir);
    c.eq("both messages, still there", (s(&recv(p[0])), s(&recv(p[0]))), ("one".into(), "two".into()));
}

fn main() {
    let dir = work_dir();
    let mut c = Checks::new();
    if std::env::args().nth(2).as_deref() == Some("dead-path") {
        // SAFETY: plain libc calls on this program's own descriptors.
        unsafe { dead_path(&dir, &mut c) };
        c.finish()
    }
    let me = std::process::id();
    let path = dir.join("srv.sock").as_os_str().as_encoded_bytes().to_vec();
    let seq_name = [b"\0cryopod-tp-seq-".as_slice(), me.to_string().as_bytes()].concat();
    let dg_name = [b"\0cryopod-tp-dg-".as_slice(), me.to_string().as_bytes()].concat();
    let cl_name = [b"\0cryopod-tp-cl-".as_slice(), me.to_string().as_bytes()].concat();
    unsafe {
        let l1 = sock(libc::SOCK_STREAM);
        assert_eq!(bind(l1, &path), 0, "bind {}", std::io::Error::last_os_error());
        libc::listen(l1, 7);
        // Its socket file: another mode and group than the bind gave it.
        let spath = std::path::PathBuf::from(std::ffi::OsStr::from_encoded_bytes_unchecked(&path));
        std::fs::set_permissions(&spath, std::os::unix::fs::PermissionsExt::from_mode(0o640)).unwrap();
        std::os::unix::fs::lchown(&spath, None, Some(4242)).unwrap();
        let file_of = |p: &std::path::Path| {
            use std::os::unix::fs::MetadataExt;
            std::fs::symlink_metadata(p).map(|m| (m.mode() & 0o7777, m.uid(), m.gid())).unwrap_or_default()
        };
        let file_before = file_of(&spath);
        let l2 = sock(libc::SOCK_SEQPACKET);
        assert_eq!(bind(l2, &seq_name), 0);
        libc::listen(l2, 5);
        let mut sp = [0i32; 2];
        libc::socketpair(libc::AF_UNIX, libc::SOCK_STREAM, 0, sp.as_mut_ptr());
        let mut dp = [0i32; 2];
        libc::socketpair(libc::AF_UNIX, libc::SOCK_DGRAM, 0, dp.as_mut_ptr());
        let mut sh = [0i32; 2];
        libc::socketpair(libc::AF_UNIX, libc::SOCK_STREAM, 0, sh.as_mut_ptr());
        send(sh[1], b"last words");
        libc::shutdown(sh[1], libc::SHUT_WR);
        let mut orph = [0i32; 2];
        libc::socketpair(libc::AF_UNIX, libc::SOCK_STREAM, 0, orph.as_mut_ptr());
        send(orph[1], b"orphan data");
        libc::close(orph[1]);
        // A datagram pair whose other end sent two messages and was
        // closed: they wait, and a send says ECONNREFUSED.
        let mut dorph = [0i32; 2];
        libc::socketpair(libc::AF_UNIX, libc::SOCK_DGRAM, 0, dorph.as_mut_ptr());
        send(dorph[1], b"last-1");
        send(dorph[1], b"last-2");
        libc::close(dorph[1]);
        // The same with both ends bound to abstract names.
        let mut norph = [0i32; 2];
        libc::socketpair(libc::AF_UNIX, libc::SOCK_DGRAM, 0, norph.as_mut_ptr());
        let nd_name = format!("\0tp-unix-nd-{}", std::process::id()).into_bytes();
        let np_name = format!("\0tp-unix-np-{}", std::process::id()).into_bytes();
        if bind(norph[0], &nd_name) != 0 || bind(norph[1], &np_name) != 0 {
            println!("FAIL (setup: abstract names: {})", std::io::Error::last_os_error());
            std::process::exit(1);
        }
        send(norph[1], b"from-np-1");
        send(norph[1], b"from-np-2");
        libc::close(norph[1]);
        let d = sock(libc::SOCK_DGRAM);
        assert_eq!(bind(d, &dg_name), 0);
        let mut to_p = [0i32; 2];
        let mut to_c = [0i32; 2];
        libc::pipe(to_p.as_mut_ptr());
        libc::pipe(to_c.as_mut_ptr());
        let parent = libc::getpid();
        let child = libc::fork();
        if child == 0 {
            libc::close(sp[0]);
            let c1 = sock(libc::SOCK_STREAM);
            connect(c1, &path);
            sync_write(to_p[1]);
            sync_read(to_c[0]);
            send(c1, b"hello from client");
            let c2 = sock(libc::SOCK_STREAM);
            connect(c2, &path);
            let c3 = sock(libc::SOCK_SEQPACKET);
            connect(c3, &seq_name);
            sync_write(to_p[1]);
            sync_read(to_c[0]);
            send(c3, b"m1");
            send(c3, b"m2");
            // A named client: the server sees (and answers) its address.
            let u = sock(libc::SOCK_DGRAM);
            bind(u, &cl_name);
            sendto(u, b"dg1", &dg_name);
            sendto(u, b"dg2", &dg_name);
            sync_write(to_p[1]);
            wait_go(&dir);
            // The parent prints the verdict; the child's checks decide its
            // exit status.
            let mut bad = 0;
            let mut k = |name: &str, got: String, want: String| {
                if got != want {
                    bad += 1;
                    println!("FAIL child: {name}: got {got:?}, want {want:?}");
                }
            };
            k("c1 queued", s(&recv(c1)), "hello from server".into());
            k("c1 peer is the listening process", peer_pid(c1).to_string(), parent.to_string());
            k("seqpacket queued", s(&recv(c3)), "r1".into());
            k("socketpair queued", s(&recv(sp[1])), "pair-data".into());
            k("pending connection accepted after restore", s(&recv(c2)), "welcome".into());
            k("answer to the datagram client's address", s(&recv(u)), "reply".into());
            send(c2, b"thanks");
            send(c1, b"after restore");
            send(c3, b"m3");
            libc::_exit(i32::from(bad > 0));
        }
        sync_read(to_p[0]);
        let a1 = libc::accept(l1, std::ptr::null_mut(), std::ptr::null_mut());
        send(a1, b"hello from server");
        sync_write(to_c[1]);
        sync_read(to_p[0]);
        let a3 = libc::accept(l2, std::ptr::null_mut(), std::ptr::null_mut());
        send(a3, b"r1");
        sync_write(to_c[1]);
        send(sp[0], b"pair-data");
        send(dp[0], b"d1");
        send(dp[0], b"d2");
        send(dp[0], b"");
        libc::fcntl(dp[1], libc::F_SETFL, libc::O_NONBLOCK);
        // Then a locked filter that passes only datagrams of more than 3
        // bytes (those queued already passed nothing).
        let insns = [
            libc::sock_filter { code: 0x80, jt: 0, jf: 0, k: 0 },
            libc::sock_filter { code: 0x25, jt: 0, jf: 1, k: 3 },
            libc::sock_filter { code: 0x06, jt: 0, jf: 0, k: 0xffff },
            libc::sock_filter { code: 0x06, jt: 0, jf: 0, k: 0 },
        ];
        let prog = libc::sock_fprog { len: 4, filter: insns.as_ptr() as *mut libc::sock_filter };
        let plen = std::mem::size_of::<libc::sock_fprog>() as u32;
        let one = 1i32;
        if libc::setsockopt(
            dp[1],
            libc::SOL_SOCKET,
            libc::SO_ATTACH_FILTER,
            (&prog as *const libc::sock_fprog).cast(),
            plen,
        ) != 0
            || libc::setsockopt(dp[1], libc::SOL_SOCKET, libc::SO_LOCK_FILTER, (&one as *const i32).cast(), 4) != 0
        {
            println!("FAIL (setup: filter)");
            std::process::exit(1);
        }
        let filter_before = net::socket_filter(dp[1]);
        sync_read(to_p[0]);
        // A datagram socket bound to a name relative to the working
        // directory.
        std::env::set_current_dir(&dir).unwrap();
        let rel = sock(libc::SOCK_DGRAM);
        assert_eq!(bind(rel, b"rel.sock"), 0, "bind rel.sock {}", std::io::Error::last_os_error());
        // Let the datagrams land.
        std::thread::sleep(Duration::from_millis(50));
        ready_and_wait(&dir);

        c.eq("the relative name", sockname(rel), b"rel.sock".to_vec());
        c.check("its file where it was bound", dir.join("rel.sock").exists(), "no rel.sock in the work dir");
        let to_rel = sock(libc::SOCK_DGRAM);
        sendto(to_rel, b"by relative name", b"rel.sock");
        c.eq("a datagram to it by that name", recv(rel), Some(b"by relative name".to_vec()));

        c.eq("a1 peer is the child", peer_pid(a1), child);
        c.eq("a1 queued", s(&recv(a1)), "hello from client".into());
        c.eq("listener path", sockname(l1), path.clone());
        c.eq("its socket file's mode and owner", file_of(&spath), file_before);
        c.eq("seqpacket listener abstract name", sockname(l2), seq_name.clone());
        c.eq("accepted socket has the listener's name", sockname(a1), path.clone());
        c.eq("seqpacket message 1", s(&recv(a3)), "m1".into());
        c.eq("seqpacket message 2", s(&recv(a3)), "m2".into());
        c.eq("dgram pair message 1", s(&recv(dp[1])), "d1".into());
        c.eq("dgram pair message 2", s(&recv(dp[1])), "d2".into());
        c.eq("dgram pair empty message", s(&recv(dp[1])), "".into());
        c.check("dgram pair O_NONBLOCK", libc::fcntl(dp[1], libc::F_GETFL) & libc::O_NONBLOCK != 0, "flag lost");
        let mut b = [0u8; 8];
        let r = libc::recv(dp[1], b.as_mut_ptr().cast(), 8, 0);
        c.check("dgram pair then empty", r < 0, format!("read {r}"));
        c.eq("dgram pair's filter", net::socket_filter(dp[1]), filter_before);
        send(dp[0], b"ab");
        send(dp[0], b"long-one");
        c.eq("dgram pair's filter drops the short one", s(&recv(dp[1])), "long-one".into());
        for (i, want) in ["dg1", "dg2"].iter().enumerate() {
            let (got, from) = recvfrom(d);
            c.eq(&format!("bound dgram {}", i + 1), s(&got), want.to_string());
            c.eq(&format!("bound dgram {} sender", i + 1), from, cl_name.clone());
        }
        sendto(d, b"reply", &cl_name);
        c.eq("bound dgram name", sockname(d), dg_name.clone());
        c.eq("shut down pair data", s(&recv(sh[0])), "last words".into());
        c.eq("shut down pair then EOF", s(&recv(sh[0])), "".into());
        c.eq("orphan data", s(&recv(orph[0])), "orphan data".into());
        c.eq("orphan then EOF", s(&recv(orph[0])), "".into());
        c.eq(
            "datagram orphan's messages",
            (s(&recv(dorph[0])), s(&recv(dorph[0]))),
            ("last-1".into(), "last-2".into()),
        );
        let r = libc::send(dorph[0], b"x".as_ptr().cast(), 1, libc::MSG_DONTWAIT);
        let e = std::io::Error::last_os_error().raw_os_error();
        c.eq("datagram orphan: its peer is gone", (r, e), (-1, Some(libc::ECONNREFUSED)));
        c.eq("named datagram orphan's name", sockname(norph[0]), nd_name.clone());
        for want in ["from-np-1", "from-np-2"] {
            let (got, from) = recvfrom(norph[0]);
            c.eq(
                &format!("named datagram orphan's {want} and its sender"),
                (s(&got), from),
                (want.to_string(), np_name.clone()),
            );
        }
        let r = libc::send(norph[0], b"x".as_ptr().cast(), 1, libc::MSG_DONTWAIT);
        let e = std::io::Error::last_os_error().raw_os_error();
        c.eq("named datagram orphan: its peer is gone", (r, e), (-1, Some(libc::ECONNREFUSED)));
        // The pending connection is accepted now.
        let a2 = libc::accept(l1, std::ptr::null_mut(), std::ptr::null_mut());
        c.check("pending connection accepted", a2 >= 0, std::io::Error::last_os_error());
        c.eq("a2 peer is the child", peer_pid(a2), child);
        send(a2, b"welcome");
        c.eq("a2 answer", s(&recv(a2)), "thanks".into());
        c.eq("a1 after restore", s(&recv(a1)), "after restore".into());
        c.eq("seqpacket after restore", s(&recv(a3)), "m3".into());
        let mut st = 0;
        libc::waitpid(child, &mut st, 0);
        c.check("child passed", libc::WIFEXITED(st) && libc::WEXITSTATUS(st) == 0, format!("status {st:#x}"));
    }
    c.finish()
}
