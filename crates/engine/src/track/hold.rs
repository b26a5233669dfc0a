//! Keeping tracking alive between two commands (`checkpoint --track`):
//! a small process of ours holds the uffds, so that the registrations and
//! protections outlive the command that armed them, until the next
//! checkpoint takes them over (or the tree ends).
//!
//! The holder is cryopod itself, started as `cryopod __hold-tracking
//! SOCKET` with a `SOCK_SEQPACKET` pair on its stdin, over which it gets
//! the tracking parts and then the uffds (one message each, SCM_RIGHTS).
//! It listens on SOCKET (a file in the state directory named after the
//! image the tracking continues from), answers one taker whose
//! credentials are its own user's, with the same messages, and exits; it
//! also exits, closing the uffds (the kernel then drops every
//! registration), once the tree's root is gone. Nothing of it is in the
//! tree: no descriptor, no signal.

use super::{ProcPart, Tracker};
use crate::{EngineError, Result};
use rustix::net::{AddressFamily, SocketAddrUnix, SocketFlags, SocketType};
use std::os::fd::{AsFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::time::Duration;

const MAGIC: [u8; 8] = *b"CPTRACK1";
/// Largest parts message (bounds what a peer can make us allocate).
const MAX_MSG: usize = 1 << 20;
/// How often the holder checks that the tree is still there.
const CHECK_EVERY: Duration = Duration::from_secs(1);

fn err(what: impl std::fmt::Display) -> EngineError {
    EngineError::Other(format!("tracking holder: {what}"))
}

/// The socket of the tracking that continues from the image whose
/// manifest hashes to `manifest` (`ImageDir::manifest_hash`), under the
/// state directory `state`.
pub fn socket_path(state: &Path, manifest: &[u8; 32]) -> PathBuf {
    state.join("track").join(format!("{}.sock", cryopod_image::shared::hex(&manifest[..16])))
}

/// What the holder keeps beside the uffds.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Held {
    root: i32,
    root_start: u64,
    since: Option<[u8; 32]>,
    parts: Vec<ProcPart>,
}

/// A [`Held`] in one message.
fn encode(h: &Held) -> Result<Vec<u8>> {
    let mut b = Vec::new();
    b.extend_from_slice(&MAGIC);
    b.extend_from_slice(&h.root.to_le_bytes());
    b.extend_from_slice(&h.root_start.to_le_bytes());
    b.push(u8::from(h.since.is_some()));
    b.extend_from_slice(&h.since.unwrap_or_default());
    let parts = &h.parts;
    b.extend_from_slice(&(parts.len() as u32).to_le_bytes());
    for p in parts {
        b.extend_from_slice(&p.pid.to_le_bytes());
        b.extend_from_slice(&p.start.to_le_bytes());
        b.push(u8::from(p.fresh));
        b.extend_from_slice(&(p.areas.len() as u32).to_le_bytes());
        for &(s, e) in &p.areas {
            b.extend_from_slice(&s.to_le_bytes());
            b.extend_from_slice(&e.to_le_bytes());
        }
    }
    if b.len() > MAX_MSG {
        return Err(err(format!("{} bytes of tracking state exceed {MAX_MSG}", b.len())));
    }
    Ok(b)
}

/// Reads little-endian fields, never past the end.
struct Reader<'a>(&'a [u8]);

impl Reader<'_> {
    fn take<const N: usize>(&mut self) -> Result<[u8; N]> {
        let (head, rest) = self.0.split_at_checked(N).ok_or_else(|| err("truncated message"))?;
        self.0 = rest;
        head.try_into().map_err(|_| err("truncated message"))
    }
    fn u32(&mut self) -> Result<u32> {
        self.take::<4>().map(u32::from_le_bytes)
    }
    fn u64(&mut self) -> Result<u64> {
        self.take::<8>().map(u64::from_le_bytes)
    }
}

fn decode(b: &[u8]) -> Result<Held> {
    let mut r = Reader(b);
    if r.take::<8>()? != MAGIC {
        return Err(err("not a tracking message"));
    }
    let root = r.u32()? as i32;
    let root_start = r.u64()?;
    let has = r.take::<1>()?[0] != 0;
    let hash = r.take::<32>()?;
    let since = has.then_some(hash);
    let n = r.u32()? as usize;
    // Each part takes at least 17 bytes: a count beyond that is a lie.
    if n > b.len() / 17 {
        return Err(err("part count beyond the message"));
    }
    let mut parts = Vec::with_capacity(n);
    for _ in 0..n {
        let pid = r.u32()? as i32;
        let start = r.u64()?;
        let fresh = r.take::<1>()?[0] != 0;
        let k = r.u32()? as usize;
        if k > r.0.len() / 16 {
            return Err(err("area count beyond the message"));
        }
        let mut areas = Vec::with_capacity(k);
        for _ in 0..k {
            areas.push((r.u64()?, r.u64()?));
        }
        parts.push(ProcPart { pid, start, areas, fresh });
    }
    Ok(Held { root, root_start, since, parts })
}

/// Send the parts, then each uffd.
fn send_all(sock: &OwnedFd, msg: &[u8], fds: &[OwnedFd]) -> Result<()> {
    cryopod_sys::fdpass::send(sock.as_fd(), msg, None)?;
    for (i, fd) in fds.iter().enumerate() {
        cryopod_sys::fdpass::send(sock.as_fd(), &(i as u32).to_le_bytes(), Some(fd.as_fd()))?;
    }
    Ok(())
}

/// Receive what [`send_all`] sent, and the uffds.
fn recv_all(sock: &OwnedFd) -> Result<(Held, Vec<OwnedFd>)> {
    let mut buf = vec![0u8; MAX_MSG];
    let (n, _) = cryopod_sys::fdpass::recv(sock.as_fd(), &mut buf)?;
    let held = decode(&buf[..n])?;
    let parts = &held.parts;
    let mut fds = Vec::with_capacity(parts.len());
    for i in 0..parts.len() {
        let mut idx = [0u8; 4];
        match cryopod_sys::fdpass::recv(sock.as_fd(), &mut idx)? {
            (4, Some(fd)) if u32::from_le_bytes(idx) as usize == i => fds.push(fd),
            _ => return Err(err(format!("uffd {i} of {} did not come", parts.len()))),
        }
    }
    Ok((held, fds))
}

/// Start a holder for `tracker` listening on `socket` (`exe` is the
/// cryopod binary); returns its PID once it listens.
pub fn spawn(exe: &Path, tracker: Tracker, socket: &Path) -> Result<i32> {
    let root = tracker.root();
    let root_start = crate::procfs::start_time(root).ok_or_else(|| err(format!("the tree of pid {root} is gone")))?;
    let (_, since, parts, fds) = tracker.into_parts();
    let msg = encode(&Held { root, root_start, since, parts })?;
    if let Some(dir) = socket.parent() {
        std::fs::create_dir_all(dir).map_err(|e| err(format!("{}: {e}", dir.display())))?;
    }
    let (ours, theirs) =
        rustix::net::socketpair(AddressFamily::UNIX, SocketType::SEQPACKET, SocketFlags::CLOEXEC, None)
            .map_err(|e| err(format!("socketpair: {e}")))?;
    let child = std::process::Command::new(exe)
        .arg("__hold-tracking")
        .arg(socket)
        .stdin(std::process::Stdio::from(theirs))
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .map_err(|e| err(format!("cannot start {}: {e}", exe.display())))?;
    send_all(&ours, &msg, &fds)?;
    let mut ok = [0u8; 1];
    match cryopod_sys::fdpass::recv(ours.as_fd(), &mut ok)? {
        (1, _) if ok[0] == b'L' => Ok(child.id() as i32),
        _ => Err(err("it did not start listening")),
    }
}

/// The holder's side: take the tracking from `stdin` (a socket), listen
/// on `socket`, hand the tracking to the first taker of our user, or drop
/// it once the tree is gone. Never returns an error for the taker's sake:
/// a bad taker is ignored.
pub fn serve(stdin: OwnedFd, socket: &Path) -> Result<()> {
    let (held, fds) = recv_all(&stdin)?;
    let msg = encode(&held)?;
    let (root, root_start) = (held.root, held.root_start);
    let _ = std::fs::remove_file(socket);
    let listener = rustix::net::socket_with(AddressFamily::UNIX, SocketType::SEQPACKET, SocketFlags::CLOEXEC, None)
        .map_err(|e| err(format!("socket: {e}")))?;
    let addr = SocketAddrUnix::new(socket).map_err(|e| err(format!("{}: {e}", socket.display())))?;
    // Only root (or our user) may connect: the directory is ours, the
    // socket's mode 0600, and every taker's credentials are checked.
    let old = rustix::process::umask(rustix::fs::Mode::from_raw_mode(0o177));
    let bound = rustix::net::bind(&listener, &addr);
    rustix::process::umask(old);
    bound.map_err(|e| err(format!("bind {}: {e}", socket.display())))?;
    rustix::net::listen(&listener, 4).map_err(|e| err(format!("listen: {e}")))?;
    cryopod_sys::fdpass::send(stdin.as_fd(), b"L", None)?;
    drop(stdin);
    // Out of the caller's session: a terminal's hangup is not ours.
    let _ = rustix::process::setsid();
    let me = rustix::process::geteuid();
    loop {
        if crate::procfs::start_time(root) != Some(root_start) {
            let _ = std::fs::remove_file(socket);
            return Ok(());
        }
        let mut pfd = [rustix::event::PollFd::new(&listener, rustix::event::PollFlags::IN)];
        let timeout = rustix::time::Timespec { tv_sec: CHECK_EVERY.as_secs() as i64, tv_nsec: 0 };
        match rustix::event::poll(&mut pfd, Some(&timeout)) {
            Ok(0) | Err(rustix::io::Errno::INTR) => continue,
            Ok(_) => {}
            Err(e) => return Err(err(format!("poll: {e}"))),
        }
        let Ok(conn) = rustix::net::accept_with(&listener, SocketFlags::CLOEXEC) else { continue };
        let trusted = rustix::net::sockopt::socket_peercred(&conn).is_ok_and(|c| c.uid == me || c.uid.is_root());
        let mut req = [0u8; 1];
        let asked = matches!(cryopod_sys::fdpass::recv(conn.as_fd(), &mut req), Ok((1, _)) if req[0] == b'T');
        if trusted && asked && send_all(&conn, &msg, &fds).is_ok() {
            // Wait for the taker to say it has them (or to be gone).
            let _ = cryopod_sys::fdpass::recv(conn.as_fd(), &mut req);
            let _ = std::fs::remove_file(socket);
            return Ok(());
        }
    }
}

/// Take over the tracking held on `socket`, if a holder is there (None:
/// no holder, or a stale socket, removed).
pub fn take(socket: &Path) -> Result<Option<Tracker>> {
    let sock = rustix::net::socket_with(AddressFamily::UNIX, SocketType::SEQPACKET, SocketFlags::CLOEXEC, None)
        .map_err(|e| err(format!("socket: {e}")))?;
    let addr = SocketAddrUnix::new(socket).map_err(|e| err(format!("{}: {e}", socket.display())))?;
    match rustix::net::connect(&sock, &addr) {
        Ok(()) => {}
        Err(rustix::io::Errno::NOENT) => return Ok(None),
        Err(rustix::io::Errno::CONNREFUSED) => {
            let _ = std::fs::remove_file(socket);
            return Ok(None);
        }
        Err(e) => return Err(err(format!("connect {}: {e}", socket.display()))),
    }
    let peer = rustix::net::sockopt::socket_peercred(&sock).map_err(|e| err(format!("SO_PEERCRED: {e}")))?;
    if !(peer.uid.is_root() || peer.uid == rustix::process::geteuid()) {
        return Err(err(format!("{} is held by uid {}, not by us", socket.display(), peer.uid.as_raw())));
    }
    cryopod_sys::fdpass::send(sock.as_fd(), b"T", None)?;
    let (h, fds) = recv_all(&sock)?;
    let _ = cryopod_sys::fdpass::send(sock.as_fd(), b"K", None);
    if crate::procfs::start_time(h.root) != Some(h.root_start) {
        return Ok(None);
    }
    Ok(Some(Tracker::from_parts(h.root, h.since, h.parts, fds)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parts_round_trip_and_lies_are_refused() {
        let parts = vec![
            ProcPart { pid: 7, start: 99, areas: vec![(0x1000, 0x5000), (0x9000, 0xa000)], fresh: false },
            ProcPart { pid: 8, start: 100, areas: vec![], fresh: true },
        ];
        let h = Held { root: 7, root_start: 99, since: Some([3; 32]), parts };
        let b = encode(&h).unwrap();
        assert_eq!(decode(&b).unwrap(), h);
        for n in 0..b.len() {
            assert!(decode(&b[..n]).is_err(), "a truncation to {n} bytes was accepted");
        }
        let mut lie = b.clone();
        lie[53..57].copy_from_slice(&u32::MAX.to_le_bytes());
        assert!(decode(&lie).is_err());
    }
}
