//! The guardian: a small process forked at the start of a checkpoint or a
//! restore that puts things right should cryopod die before the end
//! (SIGKILL, the OOM killer, a crash). Tasks we inject into return to their
//! own context by themselves (`injection`), and stubs die with us
//! (PTRACE_O_EXITKILL, their lifeline); what remains is what only a
//! survivor can undo: a frozen cgroup, sockets in repair mode or with a
//! peek offset of ours, a half-killed tree, a restored tree not yet handed
//! over. We tell the guardian each of these as we do it (with the fd it
//! needs: the freezer file, a socket, a pidfd, a netlink socket with the
//! request that unlocks a pod's network), and which way the operation
//! ends if cut short: the tree resumes, or the tree dies. When we finish,
//! we tell it so and it exits without doing anything; if its socket reaches
//! its end first, it acts.
//!
//! The guardian leaves our session and blocks every signal it can, so that
//! a signal meant for cryopod (a terminal's ^C, a supervisor's SIGTERM to
//! the process group) does not take it along.

use crate::{EngineError, Result};
use cryopod_sys::{fd, fdpass, process, signal, sock, Pid, TargetFd};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::sync::Arc;

/// How an operation cut short ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// The tree goes on as it was (a checkpoint before its end).
    Resume,
    /// The tree dies (a checkpoint's last step; a restore not handed over).
    Kill,
}

impl Outcome {
    fn bit(self) -> u8 {
        match self {
            Outcome::Resume => 1,
            Outcome::Kill => 2,
        }
    }
}

const KILL: u8 = b'K';
const THAW: u8 = b'T';
const SOCKOPT: u8 = b'S';
const OUTCOME: u8 = b'O';
const DONE: u8 = b'D';
const SEND: u8 = b'N';
const MSG_LEN: usize = 14;
/// Longest message: a header and the bytes of a SEND.
const MSG_MAX: usize = 1024;

/// Our end of a guardian. Clones share it; when the last one goes, the
/// guardian is told we finished (and collected once it has ended).
#[derive(Clone)]
pub struct Guard(Arc<Inner>);

struct Inner {
    sock: OwnedFd,
    pid: Pid,
}

impl Drop for Inner {
    fn drop(&mut self) {
        // A panic is a crash like any other: the guardian acts.
        if std::thread::panicking() {
            return;
        }
        self.done();
        // It ends at once, but need not be waited for now: collected when it
        // has, here or by the next guardian's start or end.
        ENDING.lock().unwrap_or_else(|p| p.into_inner()).push(self.pid);
        reap_ended();
    }
}

impl Inner {
    /// Tell the guardian we finished: it exits without acting.
    fn done(&self) {
        let _ = fdpass::send(self.sock.as_fd(), &msg(DONE, 0, 0, 0, 0), None);
    }
}

/// Guardians told we finished that may not have ended yet.
static ENDING: std::sync::Mutex<Vec<Pid>> = std::sync::Mutex::new(Vec::new());

/// Collect the guardians that ended.
fn reap_ended() {
    let mut g = ENDING.lock().unwrap_or_else(|p| p.into_inner());
    g.retain(|&pid| matches!(process::waitpid(pid, libc::WNOHANG), Ok((0, _))));
}

fn msg(tag: u8, when: u8, level: i32, name: i32, value: i32) -> [u8; MSG_LEN] {
    let mut m = [0u8; MSG_LEN];
    m[0] = tag;
    m[1] = when;
    m[2..6].copy_from_slice(&level.to_ne_bytes());
    m[6..10].copy_from_slice(&name.to_ne_bytes());
    m[10..14].copy_from_slice(&value.to_ne_bytes());
    m
}

impl Guard {
    /// Fork a guardian; an operation cut short ends with `outcome` until
    /// told otherwise. The caller must be single-threaded (a fork).
    pub fn start(outcome: Outcome) -> Result<Guard> {
        reap_ended();
        let (ours, theirs) = sock::socketpair(libc::SOCK_SEQPACKET)?;
        let parent = rustix::process::getpid();
        match cryopod_sys::clone::fork_with_pid(0)? {
            cryopod_sys::clone::Forked::Child => {
                drop(ours);
                guardian(theirs, parent, outcome)
            }
            cryopod_sys::clone::Forked::Parent(pid) => Ok(Guard(Arc::new(Inner { sock: ours, pid }))),
        }
    }

    /// The guardian's PID (tests, logs).
    pub fn pid(&self) -> Pid {
        self.0.pid
    }

    fn send(&self, m: [u8; MSG_LEN], fd: Option<BorrowedFd>) -> Result<()> {
        fdpass::send(self.0.sock.as_fd(), &m, fd)
            .map_err(|e| EngineError::Other(format!("the guardian process {} is gone ({e})", self.0.pid)))
    }

    /// Cut short with outcome Kill, SIGKILL the process of `pidfd`.
    pub fn kill_on_abort(&self, pidfd: BorrowedFd) -> Result<()> {
        self.send(msg(KILL, Outcome::Kill.bit(), 0, 0, 0), Some(pidfd))
    }

    /// Cut short, write THAWED to this cgroup v1 `freezer.state` file.
    pub fn thaw_on_abort(&self, freezer_state: BorrowedFd) -> Result<()> {
        self.send(msg(THAW, 3, 0, 0, 0), Some(freezer_state))
    }

    /// Cut short with outcome `when`, set socket option (`level`, `name`)
    /// of `sock` to `value`.
    pub fn sockopt_on_abort(&self, when: Outcome, sock: BorrowedFd, level: i32, name: i32, value: i32) -> Result<()> {
        self.send(msg(SOCKOPT, when.bit(), level, name, value), Some(sock))
    }

    /// Cut short with outcome `when`, send `bytes` on `sock` (a netlink
    /// request, for instance).
    pub fn send_on_abort(&self, when: Outcome, sock: BorrowedFd, bytes: &[u8]) -> Result<()> {
        if bytes.len() > MSG_MAX - MSG_LEN {
            return Err(EngineError::Other(format!("a guardian's message of {} bytes is too long", bytes.len())));
        }
        let mut m = msg(SEND, when.bit(), 0, 0, 0).to_vec();
        m.extend_from_slice(bytes);
        fdpass::send(self.0.sock.as_fd(), &m, Some(sock))
            .map_err(|e| EngineError::Other(format!("the guardian process {} is gone ({e})", self.0.pid)))
    }

    /// From now on, an operation cut short ends with `o`.
    pub fn set_outcome(&self, o: Outcome) -> Result<()> {
        self.send(msg(OUTCOME, o.bit(), 0, 0, 0), None)
    }

    /// Everything told is undone already: the guardian may go (before the
    /// tree runs again, so that it never acts on a running tree's sockets).
    pub fn disarm(&self) {
        self.0.done();
    }
}

/// One thing to do if we die.
struct Action {
    tag: u8,
    when: u8,
    fd: OwnedFd,
    opt: (i32, i32, i32),
    /// A SEND's bytes.
    data: Vec<u8>,
}

/// The guardian's life: collect actions until told we are done (exit), or
/// until we are gone — our process ends (its pidfd), or our end of the
/// socket closes — then act and exit. (Processes we forked may hold a copy
/// of our end of the socket: the pidfd is what tells.)
fn guardian(sock: OwnedFd, parent: rustix::process::Pid, outcome: Outcome) -> ! {
    let _ = rustix::thread::set_name(c"cryopod-guard");
    let _ = process::new_session();
    signal::set_signal_mask(!0);
    fd::close_all_but(&[TargetFd::of(&sock)]);
    // One fd per action: as many as root may have.
    process::raise_nofile();
    let parent_fd = rustix::process::pidfd_open(parent, rustix::process::PidfdFlags::empty()).ok();
    let orphaned = rustix::process::getppid() != Some(parent);
    let mut outcome = outcome.bit();
    let mut actions: Vec<Action> = Vec::new();
    let mut buf = [0u8; MSG_MAX];
    // Already gone (we may start late on a busy machine): what it told us
    // is still queued on the socket; read it all, then act.
    let gone = orphaned || parent_fd.is_none();
    loop {
        if !readable_first(&sock, parent_fd.as_ref().filter(|_| !gone), gone) {
            break;
        }
        // An error reads as the end: act.
        let (n, fd) = fdpass::recv(sock.as_fd(), &mut buf).unwrap_or_default();
        if n == 0 {
            break;
        }
        let word = |at: usize| i32::from_ne_bytes([buf[at], buf[at + 1], buf[at + 2], buf[at + 3]]);
        match (buf[0], fd) {
            (DONE, _) => process::exit_now(0),
            (OUTCOME, _) => outcome = buf[1],
            (SEND, Some(fd)) if n >= MSG_LEN => {
                actions.push(Action { tag: SEND, when: buf[1], fd, opt: (0, 0, 0), data: buf[MSG_LEN..n].to_vec() })
            }
            (tag, Some(fd)) if n == MSG_LEN => {
                actions.push(Action { tag, when: buf[1], fd, opt: (word(2), word(6), word(10)), data: Vec::new() })
            }
            _ => {}
        }
    }
    // Cut short: sockets first (their owners may already run again: the
    // sooner the better), then the processes to kill, then the cgroup to
    // thaw.
    for a in actions.iter().filter(|a| a.tag == SOCKOPT && a.when & outcome != 0) {
        let (level, name, value) = a.opt;
        let _ = sock::set_int(&a.fd, level, name, value, "setsockopt");
    }
    for a in actions.iter().filter(|a| a.tag == SEND && a.when & outcome != 0) {
        let _ = rustix::net::send(&a.fd, &a.data, rustix::net::SendFlags::empty());
    }
    for a in actions.iter().filter(|a| a.tag == KILL && a.when & outcome != 0) {
        let _ = cryopod_sys::pidfd::send_signal(a.fd.as_fd(), libc::SIGKILL);
    }
    for a in actions.iter().filter(|a| a.tag == THAW) {
        let _ = cryopod_sys::io::write_all(&a.fd, b"THAWED");
    }
    process::exit_now(0)
}

/// Wait until the socket has something to read (true; messages sent
/// before our end went are read before anything else), or until our
/// process ended with nothing left to read (false). `gone`: it has ended
/// already; only what is queued now is read.
fn readable_first(sock: &OwnedFd, parent: Option<&OwnedFd>, gone: bool) -> bool {
    use rustix::event::{poll, PollFd, PollFlags, Timespec};
    let now = Timespec { tv_sec: 0, tv_nsec: 0 };
    loop {
        let mut fds = vec![PollFd::new(sock, PollFlags::IN)];
        if let Some(p) = parent {
            fds.push(PollFd::new(p, PollFlags::IN));
        }
        match poll(&mut fds, gone.then_some(&now)) {
            Ok(_) => {}
            Err(rustix::io::Errno::INTR) => continue,
            Err(_) => return false,
        }
        if !fds[0].revents().is_empty() {
            return true;
        }
        if gone || fds.get(1).is_some_and(|p| !p.revents().is_empty()) {
            return false;
        }
    }
}
