//! A lazy move after its commit: the pod runs at the destination while
//! the pages its last image left out (`Left`) are still in the source's
//! frozen copy. The source pushes them all, in order, and answers first
//! the `Want`s of faults waiting at the destination; the destination
//! fills what arrives ([`cryopod_engine::lazy::remote`]) and says
//! `Filled` once every page is in. Should the link or either side fail
//! before, the destination's filler kills the pod rather than let it read
//! a page that should have held data.

use crate::frame::{read_frame, send_frame, DataReader, DataWriter, Kind};
use crate::link::Link;
use crate::{MigrateError, Result};
use cryopod_engine::lazy::{Arrival, Bell, LeftRun, RemoteEnd, MAX_FETCH_PAGES};
use cryopod_image::PAGE;
use std::collections::{HashMap, VecDeque};
use std::io::{Read, Write};
use std::net::TcpStream;
use std::os::fd::AsFd;
use std::time::{Duration, Instant};

/// Bytes of one run of pages, in the list of left pages and in a want:
/// pid (i32), pages (u32), address (u64), big-endian.
const RUN_LEN: usize = 16;
/// Runs in a list at most (4 GiB of list would be 256 Ti of memory).
pub const MAX_LEFT: usize = 1 << 24;
/// Bytes of pages in one `Pages` frame at most.
const PUSH_BYTES: u64 = 256 << 10;
/// Bytes of a `Pages` frame's head.
const PAGES_HEAD: usize = 12;
/// Wants waiting at the source at most (a destination asks once per run
/// a fault waits on: far fewer).
const MAX_WANTS: usize = 1 << 16;
/// Bytes of pages sent or received before a failure injected at
/// `migrate-during-postcopy` or `serve-during-postcopy` (the tests).
const FAULT_AFTER: u64 = 4 << 20;

/// Send the list of left pages (`Left`, then the list as a stream).
pub fn send_left(link: &mut Link<TcpStream>, left: &[LeftRun]) -> Result<u64> {
    send_frame(link, Kind::Left, &[])?;
    let mut w = DataWriter::new(link);
    for r in left {
        let b = encode_run(r.pid, r.pages, r.addr);
        w.write_all(&b).map_err(|e| MigrateError::io("sending the list of left pages", e))?;
    }
    w.finish()
}

/// Receive the list of left pages (the `Left` frame read already), each
/// run checked: at most `MAX_FETCH_PAGES` pages, page-aligned, not
/// wrapping, at most `MAX_LEFT` runs.
pub fn receive_left(link: &mut Link<TcpStream>) -> Result<Vec<LeftRun>> {
    let mut r = DataReader::new(link);
    let mut out = Vec::new();
    let mut b = [0u8; RUN_LEN];
    loop {
        match r.read(&mut b[..1]) {
            Ok(0) => break,
            Ok(_) => {}
            Err(e) => return Err(MigrateError::io("receiving the list of left pages", e)),
        }
        r.read_exact(&mut b[1..]).map_err(|e| MigrateError::io("receiving the list of left pages", e))?;
        if out.len() == MAX_LEFT {
            return Err(MigrateError::Protocol(format!("more than {MAX_LEFT} runs of pages left at the source")));
        }
        let (pid, pages, addr) = decode_run(&b, "a run of left pages")?;
        out.push(LeftRun { pid, host: 0, addr, pages });
    }
    Ok(out)
}

fn encode_run(pid: i32, pages: u32, addr: u64) -> [u8; RUN_LEN] {
    let mut b = [0u8; RUN_LEN];
    b[..4].copy_from_slice(&pid.to_be_bytes());
    b[4..8].copy_from_slice(&pages.to_be_bytes());
    b[8..].copy_from_slice(&addr.to_be_bytes());
    b
}

/// A run of pages (pid, pages, address), checked: a pid, 1 to
/// `MAX_FETCH_PAGES` pages, page-aligned, not wrapping (`what` names it in
/// the error).
fn decode_run(b: &[u8], what: &str) -> Result<(i32, u32, u64)> {
    let b: &[u8; RUN_LEN] = b.try_into().map_err(|_| MigrateError::Protocol(format!("{what} of {} bytes", b.len())))?;
    let pid = i32::from_be_bytes([b[0], b[1], b[2], b[3]]);
    let pages = u32::from_be_bytes([b[4], b[5], b[6], b[7]]);
    let addr = u64::from_be_bytes([b[8], b[9], b[10], b[11], b[12], b[13], b[14], b[15]]);
    let fits = addr.checked_add(u64::from(pages) * PAGE).is_some();
    if pid <= 0 || pages == 0 || pages > MAX_FETCH_PAGES || !addr.is_multiple_of(PAGE) || !fits {
        return Err(MigrateError::Protocol(format!("{what} that does not hold: {pid} {addr:#x} {pages}")));
    }
    Ok((pid, pages, addr))
}

/// What the source sent after the commit.
#[derive(Debug, Default, Clone)]
pub struct Served {
    /// Bytes pushed in order, and sent again or first for a want.
    pub pushed: u64,
    pub wanted: u64,
    pub wants: u64,
    /// The destination's own words once it had every page.
    pub report: String,
}

/// The source: push every left page of the held pod (read from its
/// frozen processes), wants first, until the destination says `Filled`.
pub fn serve(link: &mut Link<TcpStream>, left: &[LeftRun], timeout: Duration) -> Result<Served> {
    let hosts: HashMap<i32, i32> = left.iter().map(|r| (r.pid, r.host)).collect();
    // Each run sent once: a want for a run pushed already is on its way;
    // a run sent for a want is not pushed again.
    let index: HashMap<(i32, u64), usize> = left.iter().enumerate().map(|(i, r)| ((r.pid, r.addr), i)).collect();
    let mut sent = vec![false; left.len()];
    let mut wants: VecDeque<(i32, u64, u32)> = VecDeque::new();
    let mut served = Served::default();
    let mut next = 0usize;
    let mut buf = vec![0u8; PAGES_HEAD + PUSH_BYTES as usize];
    // (A want waits behind what the socket holds: keep that little.)
    let _ = rustix::net::sockopt::set_socket_send_buffer_size(link.get_ref(), 512 << 10);
    loop {
        while link.pending() {
            if take(link, &mut wants, &mut served, "while pages were sent")? {
                return Ok(served);
            }
        }
        if let Some((pid, addr, pages)) = wants.pop_front() {
            // (A want may name part of a run, or a run moved: sent as asked.)
            let whole = index.get(&(pid, addr)).copied().filter(|&i| left[i].pages <= pages);
            if let Some(i) = whole {
                if std::mem::replace(&mut sent[i], true) {
                    continue;
                }
            }
            served.wanted += send_pages(link, &hosts, (pid, addr, pages), &mut buf)?;
            continue;
        }
        while next < left.len() && sent[next] {
            next += 1;
        }
        if next < left.len() {
            // Runs that follow each other, into one frame.
            let first = left[next];
            let mut pages = first.pages;
            sent[next] = true;
            next += 1;
            while let Some(r) = left.get(next).filter(|_| !sent[next]) {
                let end = first.addr + u64::from(pages) * PAGE;
                if r.pid != first.pid || r.addr != end || u64::from(pages + r.pages) * PAGE > PUSH_BYTES {
                    break;
                }
                pages += r.pages;
                sent[next] = true;
                next += 1;
            }
            let before = served.pushed;
            served.pushed += send_pages(link, &hosts, (first.pid, first.addr, pages), &mut buf)?;
            if before < FAULT_AFTER && served.pushed >= FAULT_AFTER {
                crate::fault("migrate-during-postcopy")?;
            }
            continue;
        }
        // All pushed: wants (pages moved there) or the end.
        let _ = link.get_ref().set_read_timeout(Some(timeout));
        if take(link, &mut wants, &mut served, "after every page was sent")? {
            return Ok(served);
        }
    }
}

/// Read one frame at the source: true once it is `Filled`.
fn take(
    link: &mut Link<TcpStream>,
    wants: &mut VecDeque<(i32, u64, u32)>,
    served: &mut Served,
    when: &str,
) -> Result<bool> {
    let f = read_frame(link, when)?;
    match f.kind {
        Kind::Want => {
            if f.body.len() % RUN_LEN != 0 {
                return Err(MigrateError::Protocol(format!("a Want frame of {} bytes", f.body.len())));
            }
            for w in f.body.chunks_exact(RUN_LEN) {
                let (pid, pages, addr) = decode_run(w, "a want")?;
                if wants.len() == MAX_WANTS {
                    return Err(MigrateError::Protocol(format!("more than {MAX_WANTS} wants waiting")));
                }
                served.wants += 1;
                wants.push_back((pid, addr, pages));
            }
            Ok(false)
        }
        Kind::Filled => {
            served.report = f.text();
            Ok(true)
        }
        Kind::Abort => Err(MigrateError::Aborted(link.peer().to_string(), f.text())),
        k => Err(MigrateError::Protocol(format!("a {k:?} frame while pages were sent"))),
    }
}

/// Send `pages` of process `pid` at `addr` (a process of the pod: its
/// host PID known) in one `Pages` frame; the bytes sent.
fn send_pages(
    link: &mut Link<TcpStream>,
    hosts: &HashMap<i32, i32>,
    (pid, addr, pages): (i32, u64, u32),
    buf: &mut [u8],
) -> Result<u64> {
    let host = *hosts
        .get(&pid)
        .ok_or_else(|| MigrateError::Protocol(format!("pages of pid {pid}, which has none left here, were asked")))?;
    let len = (u64::from(pages) * PAGE).min(PUSH_BYTES) as usize;
    buf[..4].copy_from_slice(&pid.to_be_bytes());
    buf[4..PAGES_HEAD].copy_from_slice(&addr.to_be_bytes());
    let data = &mut buf[PAGES_HEAD..PAGES_HEAD + len];
    cryopod_sys::mem::read(host, addr, data).map_err(|e| {
        MigrateError::Protocol(format!("reading pid {pid}'s pages at {addr:#x} (host pid {host}) at the source: {e}"))
    })?;
    send_frame(link, Kind::Pages, &buf[..PAGES_HEAD + len])?;
    Ok(len as u64)
}

/// The filler's outcome, once it has one: its report, or why it failed.
pub type Outcome<'a> = &'a dyn Fn() -> Option<std::result::Result<String, String>>;

/// The destination: carry the filler's wants to the source and what
/// arrives to the filler, until `finished` is rung and `done` has an
/// outcome: `Filled` with its report (the source may end its copy), or
/// the filler's failure.
pub fn fetch(
    link: &mut Link<TcpStream>,
    end: &RemoteEnd,
    (finished, done): (&Bell, Outcome),
    timeout: Duration,
) -> Result<()> {
    let mut heard = Instant::now();
    let mut received = 0u64;
    loop {
        match done() {
            Some(Ok(report)) => return send_frame(link, Kind::Filled, report.as_bytes()),
            // (The caller tells the source, once it has removed the pod.)
            Some(Err(why)) => return Err(MigrateError::Protocol(why)),
            None => {}
        }
        let mut body = Vec::new();
        while let Ok(w) = end.wants.try_recv() {
            body.extend_from_slice(&encode_run(w.pid, w.pages, w.addr));
            if body.len() + RUN_LEN > crate::frame::MAX_CONTROL as usize {
                send_frame(link, Kind::Want, &body)?;
                body.clear();
            }
        }
        if !body.is_empty() {
            send_frame(link, Kind::Want, &body)?;
        }
        if !link.pending() {
            end.asked.quiet();
            finished.quiet();
            let fds = [link.get_ref().as_fd(), end.asked.fd(), finished.fd()];
            let ready = cryopod_sys::uffd::poll_readable(&fds, 100).map_err(|e| MigrateError::Engine(e.into()))?;
            if ready.is_empty() && heard.elapsed() > timeout {
                return Err(MigrateError::Closed(format!(
                    "by saying nothing for {} s while pages were due",
                    timeout.as_secs()
                )));
            }
            if !ready.contains(&0) {
                continue;
            }
        }
        let f = read_frame(link, "while pages came")?;
        heard = Instant::now();
        match f.kind {
            Kind::Pages => {
                let (head, data) = f
                    .body
                    .split_at_checked(PAGES_HEAD)
                    .ok_or_else(|| MigrateError::Protocol("a Pages frame without its head".into()))?;
                let pid = i32::from_be_bytes([head[0], head[1], head[2], head[3]]);
                let addr =
                    u64::from_be_bytes([head[4], head[5], head[6], head[7], head[8], head[9], head[10], head[11]]);
                // (Gone: the filler failed; `done` says so next.)
                end.deliver(Arrival::Pages { pid, addr, data: data.to_vec() });
                received += data.len() as u64;
                if received >= FAULT_AFTER && received - (data.len() as u64) < FAULT_AFTER {
                    crate::fault("serve-during-postcopy")?;
                }
            }
            Kind::Abort => return Err(MigrateError::Aborted(link.peer().to_string(), f.text())),
            k => return Err(MigrateError::Protocol(format!("a {k:?} frame while pages came"))),
        }
    }
}
