//! Files in flight and credentials in queued messages (issue 11, class 3)
//! across checkpoint/restore. A child sends its parent, over a stream
//! socketpair the parent made and reads with SO_PASSCRED, six messages it
//! has not read yet:
//! - a file the child keeps open (the parent's copy shares its offset);
//! - a pipe's read end with bytes in the pipe, closed in the child (only
//!   the message holds it);
//! - one end of a socketpair with bytes queued in it, closed in the child;
//! - a memfd and /dev/null in one message, both closed in the child;
//! - an accepted TCP connection (loopback) with bytes waiting, closed in
//!   the child, as a server hands a connection to a worker;
//! - no file, with credentials the child chose (uid 4321, gid 4322).
//!
//! After the restore the parent reads every message: each with its files
//! and its sender's credentials (the child's PID, not the parent's), and
//! uses every file with the child at the other end.
//!
//! With a second argument `gone`, the child sends one message and exits:
//! no restore could send it with the child's PID again, so a checkpoint
//! must refuse, and the parent then reads it as it was.

use cryopod_testprogs::*;
use std::time::{Duration, Instant};

const TAG: usize = 8;

/// Send `tag` with `fds` attached and, if given, credentials.
unsafe fn send_with(s: i32, tag: &[u8; TAG], fds: &[i32], creds: Option<libc::ucred>) -> bool {
    let mut control = [0u64; 64];
    let mut iov = libc::iovec { iov_base: tag.as_ptr() as *mut libc::c_void, iov_len: TAG };
    let mut msg: libc::msghdr = std::mem::zeroed();
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    let rights = (4 * fds.len()) as u32;
    let mut need = 0;
    if !fds.is_empty() {
        need += libc::CMSG_SPACE(rights) as usize;
    }
    if creds.is_some() {
        need += libc::CMSG_SPACE(std::mem::size_of::<libc::ucred>() as u32) as usize;
    }
    if need > 0 {
        msg.msg_control = control.as_mut_ptr().cast();
        msg.msg_controllen = need;
        let mut c = libc::CMSG_FIRSTHDR(&msg);
        if !fds.is_empty() {
            (*c).cmsg_level = libc::SOL_SOCKET;
            (*c).cmsg_type = libc::SCM_RIGHTS;
            (*c).cmsg_len = libc::CMSG_LEN(rights) as usize;
            std::ptr::copy_nonoverlapping(fds.as_ptr(), libc::CMSG_DATA(c).cast::<i32>(), fds.len());
            c = libc::CMSG_NXTHDR(&msg, c);
        }
        if let Some(u) = creds {
            (*c).cmsg_level = libc::SOL_SOCKET;
            (*c).cmsg_type = libc::SCM_CREDENTIALS;
            (*c).cmsg_len = libc::CMSG_LEN(std::mem::size_of::<libc::ucred>() as u32) as usize;
            libc::CMSG_DATA(c).cast::<libc::ucred>().write_unaligned(u);
        }
    }
    libc::sendmsg(s, &msg, 0) == TAG as isize
}

/// A message received: its tag, files and credentials.
type Received = (Vec<u8>, Vec<i32>, Option<(i32, u32, u32)>);

/// Receive one tagged message.
unsafe fn recv_with(s: i32) -> Option<Received> {
    let mut p = libc::pollfd { fd: s, events: libc::POLLIN, revents: 0 };
    if libc::poll(&mut p, 1, 5000) != 1 {
        return None;
    }
    let mut buf = [0u8; TAG];
    let mut control = [0u64; 64];
    let mut iov = libc::iovec { iov_base: buf.as_mut_ptr().cast(), iov_len: TAG };
    let mut msg: libc::msghdr = std::mem::zeroed();
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    msg.msg_control = control.as_mut_ptr().cast();
    msg.msg_controllen = std::mem::size_of_val(&control);
    let n = libc::recvmsg(s, &mut msg, libc::MSG_CMSG_CLOEXEC);
    if n < 0 {
        return None;
    }
    let (mut fds, mut creds) = (Vec::new(), None);
    let mut c = libc::CMSG_FIRSTHDR(&msg);
    while !c.is_null() {
        let len = (*c).cmsg_len as usize - libc::CMSG_LEN(0) as usize;
        match (*c).cmsg_type {
            libc::SCM_RIGHTS => {
                for i in 0..len / 4 {
                    fds.push(libc::CMSG_DATA(c).cast::<i32>().add(i).read_unaligned());
                }
            }
            libc::SCM_CREDENTIALS => {
                let u = libc::CMSG_DATA(c).cast::<libc::ucred>().read_unaligned();
                creds = Some((u.pid, u.uid, u.gid));
            }
            _ => {}
        }
        c = libc::CMSG_NXTHDR(&msg, c);
    }
    Some((buf[..n as usize].to_vec(), fds, creds))
}

/// Read until `want` bytes came or 5 s passed.
unsafe fn read_n(fd: i32, want: usize) -> Vec<u8> {
    let t = Instant::now();
    let mut acc = Vec::new();
    let mut b = [0u8; 256];
    while acc.len() < want && t.elapsed() < Duration::from_secs(5) {
        let mut p = libc::pollfd { fd, events: libc::POLLIN, revents: 0 };
        if libc::poll(&mut p, 1, 100) == 1 {
            let n = libc::read(fd, b.as_mut_ptr().cast(), (want - acc.len()).min(b.len()));
            if n <= 0 {
                break;
            }
            acc.extend_from_slice(&b[..n as usize]);
        }
    }
    acc
}

unsafe fn write_all(fd: i32, b: &[u8]) -> bool {
    libc::write(fd, b.as_ptr().cast(), b.len()) == b.len() as isize
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// The child: sends the six messages, says so on `done`, and after the
/// restore plays the other end of the pipe, the socketpair and the TCP
/// connection.
unsafe fn child(dir: &std::path::Path, s: i32, done: i32) -> ! {
    let fail = |what: &str| -> ! {
        println!("FAIL (setup: child: {what}: {})", std::io::Error::last_os_error());
        libc::_exit(1)
    };
    let path = std::ffi::CString::new(dir.join("data").as_os_str().as_encoded_bytes()).unwrap_or_default();
    let file = libc::open(path.as_ptr(), libc::O_RDWR | libc::O_CREAT | libc::O_TRUNC, 0o600);
    if file < 0 || !write_all(file, b"0123456789abcdef") || libc::lseek(file, 5, libc::SEEK_SET) != 5 {
        fail("the file");
    }
    let mut p = [0i32; 2];
    if libc::pipe(p.as_mut_ptr()) != 0 || !write_all(p[1], b"early") {
        fail("the pipe");
    }
    let mut x = [0i32; 2];
    if libc::socketpair(libc::AF_UNIX, libc::SOCK_STREAM, 0, x.as_mut_ptr()) != 0 || !write_all(x[1], b"queued-in-x") {
        fail("the socketpair");
    }
    let mfd = libc::memfd_create(c"in-flight".as_ptr(), 0);
    let null = libc::open(c"/dev/null".as_ptr(), libc::O_RDWR);
    if mfd < 0 || null < 0 || !write_all(mfd, b"memfd-content") {
        fail("the memfd, /dev/null");
    }
    let Some((client, accepted)) = net::loopback_pair() else { fail("the TCP connection") };
    if !write_all(client, b"tcp-early") {
        fail("the TCP connection's early bytes");
    }
    let mine = libc::ucred { pid: libc::getpid(), uid: 4321, gid: 4322 };
    let file_tag = format!("file{file:04}");
    let tag: &[u8; TAG] = file_tag.as_bytes().try_into().unwrap_or(b"file????");
    let sent = send_with(s, tag, &[file], None)
        && send_with(s, b"pipe....", &[p[0]], None)
        && send_with(s, b"sock....", &[x[0]], None)
        && send_with(s, b"twofds..", &[mfd, null], None)
        && send_with(s, b"tcpconn.", &[accepted], None)
        && send_with(s, b"forged..", &[], Some(mine));
    if !sent {
        fail("sendmsg");
    }
    for fd in [p[0], x[0], mfd, null, accepted] {
        libc::close(fd);
    }
    write_all(done, b"1");
    wait_go(dir);
    // After the restore: the other ends.
    let mut ok = write_all(p[1], b"late");
    ok &= read_n(x[1], 4) == b"ping" && write_all(x[1], b"pong:ping");
    ok &= read_n(client, 8) == b"tcp-ping" && write_all(client, b"tcp-pong");
    libc::_exit(if ok { 0 } else { 3 })
}

/// `gone`: a message from a child that has exited since.
unsafe fn sender_gone(dir: &std::path::Path, c: &mut Checks) {
    let mut sp = [0i32; 2];
    let on = 1i32;
    if libc::socketpair(libc::AF_UNIX, libc::SOCK_DGRAM, 0, sp.as_mut_ptr()) != 0
        || libc::setsockopt(sp[0], libc::SOL_SOCKET, libc::SO_PASSCRED, (&on as *const i32).cast(), 4) != 0
    {
        println!("FAIL (setup: socketpair)");
        std::process::exit(1);
    }
    let kid = libc::fork();
    if kid == 0 {
        libc::_exit(if send_with(sp[1], b"bye.....", &[], None) { 0 } else { 1 });
    }
    let mut st = 0;
    libc::waitpid(kid, &mut st, 0);
    if st != 0 {
        println!("FAIL (setup: the child could not send)");
        std::process::exit(1);
    }
    ready_and_wait(dir);
    let got = recv_with(sp[0]).unwrap_or_default();
    c.eq("the message of the child that is gone", (text(&got.0), got.2), ("bye.....".into(), Some((kid, 0, 0))));
}

fn main() {
    let dir = work_dir();
    let mut c = Checks::new();
    if std::env::args().nth(2).as_deref() == Some("gone") {
        // SAFETY: plain libc calls on this program's own descriptors.
        unsafe { sender_gone(&dir, &mut c) };
        c.finish()
    }
    // SAFETY: plain libc calls on this program's own descriptors; the
    // child runs `child`, which never returns.
    unsafe {
        let mut sp = [0i32; 2];
        let mut d = [0i32; 2];
        if libc::socketpair(libc::AF_UNIX, libc::SOCK_STREAM, 0, sp.as_mut_ptr()) != 0
            || libc::pipe(d.as_mut_ptr()) != 0
        {
            println!("FAIL (setup: socketpair, pipe)");
            std::process::exit(1);
        }
        let on = 1i32;
        libc::setsockopt(sp[0], libc::SOL_SOCKET, libc::SO_PASSCRED, (&on as *const i32).cast(), 4);
        let kid = libc::fork();
        if kid == 0 {
            libc::close(sp[0]);
            child(&dir, sp[1], d[1]);
        }
        libc::close(sp[1]);
        if read_n(d[0], 1) != b"1" {
            println!("FAIL (setup: the child did not send its messages)");
            std::process::exit(1);
        }
        ready_and_wait(&dir);

        let from_kid = Some((kid, 0u32, 0u32));
        let mut got = Vec::new();
        for _ in 0..6 {
            got.push(recv_with(sp[0]).unwrap_or_default());
        }
        let tags: Vec<String> = got.iter().map(|m| text(&m.0)).collect();
        let nfds: Vec<usize> = got.iter().map(|m| m.1.len()).collect();
        c.eq(
            "the messages, in order",
            tags[1..].to_vec(),
            ["pipe....", "sock....", "twofds..", "tcpconn.", "forged.."].map(String::from).to_vec(),
        );
        c.eq("files per message", nfds, vec![1, 1, 1, 2, 1, 0]);
        let creds: Vec<_> = got.iter().map(|m| m.2).collect();
        c.eq("each message's sender (the child, not the parent)", creds[..5].to_vec(), vec![from_kid; 5]);
        c.eq("the credentials the child chose", creds[5], Some((kid, 4321, 4322)));
        let fd = |i: usize, j: usize| got.get(i).and_then(|m| m.1.get(j)).copied().unwrap_or(-1);

        // The file: shared with the child's fd, offset and all.
        let kid_fd: i32 = tags[0].trim_start_matches("file").parse().unwrap_or(-1);
        c.eq("the file, from the child's offset", text(&read_n(fd(0, 0), 3)), "567".into());
        let pos = std::fs::read_to_string(format!("/proc/{kid}/fdinfo/{kid_fd}")).unwrap_or_default();
        c.eq(
            "the child's offset moved with it (one description)",
            pos.lines().next().map(str::to_string),
            Some("pos:\t8".into()),
        );

        c.eq("the pipe: its bytes, then the child's", text(&read_n(fd(1, 0), 9)), "earlylate".into());

        let x = fd(2, 0);
        c.eq("the socket's queued bytes", text(&read_n(x, 11)), "queued-in-x".into());
        write_all(x, b"ping");
        c.eq("the socket's peer answers", text(&read_n(x, 9)), "pong:ping".into());

        let mut content = [0u8; 13];
        let n = libc::pread(fd(3, 0), content.as_mut_ptr().cast(), 13, 0);
        c.eq("the memfd's contents", text(&content[..n.max(0) as usize]), "memfd-content".into());
        let null = std::fs::read_link(format!("/proc/self/fd/{}", fd(3, 1))).ok();
        c.eq("/dev/null beside it", null, Some("/dev/null".into()));

        let t = fd(4, 0);
        c.eq("the TCP connection's waiting bytes", text(&read_n(t, 9)), "tcp-early".into());
        write_all(t, b"tcp-ping");
        c.eq("the TCP connection's client answers", text(&read_n(t, 8)), "tcp-pong".into());

        let mut st = 0;
        libc::waitpid(kid, &mut st, 0);
        c.check(
            "the child saw its ends work",
            libc::WIFEXITED(st) && libc::WEXITSTATUS(st) == 0,
            format!("status {st:#x}"),
        );
    }
    c.finish()
}
