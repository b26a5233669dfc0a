//! Pages fetched from elsewhere: a lazy migration's destination restores
//! the pod before the pages it left out at the source have come
//! ([`crate::CheckpointOptions::leave_private`]). The filler asks for the
//! ones a fault waits on ([`Want`]) and fills whatever arrives
//! ([`Arrival`]); whoever carries them (the migration's link) holds the
//! other end ([`RemoteEnd`]). The two sides meet through channels and a
//! [`Bell`] each, so that the filler can wait on its uffds and on
//! arrivals at once.

use std::collections::HashMap;
use std::io::{Read, Write};
use std::os::fd::{AsFd, BorrowedFd};
use std::os::unix::net::UnixStream;
use std::sync::mpsc::{channel, sync_channel, Receiver, Sender, SyncSender};

/// Arrivals waiting for the filler at most (each at most a frame's
/// pages): the carrier then waits, and with it the link.
const ARRIVALS_IN_FLIGHT: usize = 64;

/// Pages left out of an image, still in the source's memory: a run of a
/// process, as the image names it (`pid`; in a pod, its pod PID), and its
/// host PID at the source (0 where unknown: at the destination).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LeftRun {
    pub pid: i32,
    pub host: i32,
    pub addr: u64,
    pub pages: u32,
}

/// A request for pages a fault waits on (where they were at the source).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Want {
    pub pid: i32,
    pub addr: u64,
    pub pages: u32,
}

/// What the carrier delivers.
#[derive(Debug)]
pub enum Arrival {
    /// Pages of process `pid` as they were at `addr` at the source.
    Pages { pid: i32, addr: u64, data: Vec<u8> },
    /// No more will come (the source or the link failed): why.
    Lost(String),
}

/// A doorbell: one side rings (a byte), the other waits on its fd.
pub struct Bell {
    ring: UnixStream,
    wait: UnixStream,
}

impl Bell {
    pub fn new() -> std::io::Result<Bell> {
        let (ring, wait) = UnixStream::pair()?;
        ring.set_nonblocking(true)?;
        wait.set_nonblocking(true)?;
        Ok(Bell { ring, wait })
    }

    /// Ring (a full bell is rung already).
    pub fn ring(&self) {
        let _ = (&self.ring).write(&[1]);
    }

    /// The fd that turns readable once rung.
    pub fn fd(&self) -> BorrowedFd<'_> {
        self.wait.as_fd()
    }

    /// Silence it (before looking at what it announced).
    pub fn quiet(&self) {
        let mut b = [0u8; 256];
        while matches!((&self.wait).read(&mut b), Ok(n) if n > 0) {}
    }
}

/// The filler's side.
pub struct Remote {
    /// By process (as the image names it): the runs (address, pages) to
    /// fetch.
    pub left: HashMap<i32, Vec<(u64, u32)>>,
    pub(crate) ask: Sender<Want>,
    pub(crate) asked: std::sync::Arc<Bell>,
    pub(crate) arrivals: Receiver<Arrival>,
    pub(crate) bell: std::sync::Arc<Bell>,
}

/// The carrier's side.
pub struct RemoteEnd {
    pub wants: Receiver<Want>,
    /// Rung with each want.
    pub asked: std::sync::Arc<Bell>,
    arrivals: SyncSender<Arrival>,
    bell: std::sync::Arc<Bell>,
}

impl RemoteEnd {
    /// Hand over what arrived (waiting while the filler has
    /// `ARRIVALS_IN_FLIGHT` to go); false once the filler is gone.
    pub fn deliver(&self, a: Arrival) -> bool {
        let ok = self.arrivals.send(a).is_ok();
        self.bell.ring();
        ok
    }
}

/// Both sides, for the runs `left`.
pub fn remote(left: &[LeftRun]) -> std::io::Result<(Remote, RemoteEnd)> {
    let mut by_pid: HashMap<i32, Vec<(u64, u32)>> = HashMap::new();
    for r in left {
        by_pid.entry(r.pid).or_default().push((r.addr, r.pages));
    }
    let (ask, wants) = channel();
    let (tx, arrivals) = sync_channel(ARRIVALS_IN_FLIGHT);
    let asked = std::sync::Arc::new(Bell::new()?);
    let bell = std::sync::Arc::new(Bell::new()?);
    Ok((
        Remote { left: by_pid, ask, asked: asked.clone(), arrivals, bell: bell.clone() },
        RemoteEnd { wants, asked, arrivals: tx, bell },
    ))
}
