//! Pseudo-terminal pairs with both ends in the tree (a shell inside
//! `script`, a terminal multiplexer), and the controlling terminal of a
//! session that is one of them.
//!
//! Checkpoint: a master is read from a copy of its descriptor (index,
//! settings, modes); once every process is collected, each terminal end
//! whose master is in the tree becomes that pair's (`PtySlave`), the bytes
//! the terminal end wrote that the master has not read are taken and put
//! straight back (the tree may run on), input the programs have not read
//! is refused (it cannot be put back as it was), and each session leader
//! records its controlling terminal and foreground group.
//!
//! Restore: each pair is made again at its index (in a pod, in the pod's
//! own devpts; the tree's programs know their terminal by name), with its
//! settings and unread bytes; a session leader takes its terminal before it
//! forks (members inherit it), and its foreground group is set once the
//! process groups exist.

use crate::files::FileTable;
use crate::{procfs, EngineError, Result};
use cryopod_image::{Ctty, FileKind, Manifest, OpenFile, Process, PtyState, TermiosRec};
use cryopod_sys::{pidfd, tty, TargetFd};
use std::collections::BTreeMap;
use std::os::fd::{AsFd, OwnedFd};

/// The majors of /dev/pts/N (N = (major - 136) * 256 + minor).
const PTS_MAJORS: std::ops::RangeInclusive<u32> = 136..=143;

/// A pseudo-terminal description seen in the tree: which file, one holder,
/// its devpts instance and index, and which end.
pub struct Seen {
    pub file: u32,
    pub holder: (i32, i32),
    pub devpts: u64,
    pub index: u32,
    pub master: bool,
}

/// The index of /dev/pts/N from its device number, if it is one.
pub fn pts_index(rdev: u64) -> Option<u32> {
    index_of(cryopod_sys::fs::major(rdev), cryopod_sys::fs::minor(rdev))
}

fn index_of(major: u32, minor: u32) -> Option<u32> {
    PTS_MAJORS.contains(&major).then(|| (major - 136) * 256 + minor)
}

fn copy(pid: i32, fd: i32) -> Result<OwnedFd> {
    let pfd = pidfd::pidfd_open(pid)?;
    Ok(pidfd::pidfd_getfd(&pfd, pid, TargetFd(fd))?)
}

fn rec(t: &tty::Termios) -> TermiosRec {
    TermiosRec {
        iflag: t.c_iflag,
        oflag: t.c_oflag,
        cflag: t.c_cflag,
        lflag: t.c_lflag,
        line: t.c_line,
        cc: t.c_cc,
        ispeed: t.c_ispeed,
        ospeed: t.c_ospeed,
    }
}

fn termios(r: &TermiosRec) -> tty::Termios {
    tty::Termios {
        c_iflag: r.iflag,
        c_oflag: r.oflag,
        c_cflag: r.cflag,
        c_lflag: r.lflag,
        c_line: r.line,
        c_cc: r.cc,
        c_ispeed: r.ispeed,
        c_ospeed: r.ospeed,
    }
}

/// The master on fd `fd` of `pid`: its pair's state (the unread bytes come
/// in [`finish`]) and what to find its terminal end by.
pub fn master(pid: i32, fd: i32, file: u32) -> Result<(FileKind, Seen)> {
    let c = copy(pid, fd)?;
    let index = tty::pty_index(&c)?;
    let devpts = cryopod_sys::fs::fstat_dev(&tty::pty_peer(&c, libc::O_PATH | libc::O_CLOEXEC)?)?;
    // Settings asked of a master are its terminal end's.
    let t = tty::get_termios(&c)?;
    let w = tty::get_winsize(&c)?;
    let modes = tty::get_modes(&c)?;
    let state = PtyState {
        termios: rec(&t),
        winsize: [w.ws_row, w.ws_col, w.ws_xpixel, w.ws_ypixel],
        packet: modes.packet,
        locked: modes.locked,
        exclusive: false,
        unread: Vec::new(),
    };
    let seen = Seen { file, holder: (pid, fd), devpts, index, master: true };
    Ok((FileKind::PtyMaster { index, tty: Box::new(state) }, seen))
}

/// After every process is collected: link terminal ends to their masters,
/// take each pair's unread output (and put it back), refuse unread input,
/// and record each session leader's controlling terminal.
pub fn finish(files: &mut FileTable, procs: &mut [Process]) -> Result<()> {
    let masters: BTreeMap<(u64, u32), u32> =
        files.ptys.iter().filter(|s| s.master).map(|s| ((s.devpts, s.index), s.file)).collect();
    if masters.is_empty() {
        return Ok(());
    }
    // The terminal ends of those pairs, and one holder of each end.
    let mut slave_holder: BTreeMap<u32, (i32, i32)> = BTreeMap::new();
    for s in files.ptys.iter().filter(|s| !s.master) {
        if let Some(&m) = masters.get(&(s.devpts, s.index)) {
            files.files[s.file as usize].kind = FileKind::PtySlave { index: s.index };
            slave_holder.entry(m).or_insert(s.holder);
        }
    }
    let mut indexes = std::collections::HashSet::new();
    for s in files.ptys.iter().filter(|s| s.master) {
        if !indexes.insert(s.index) {
            return Err(EngineError::Unsupported {
                pid: s.holder.0,
                what: format!("pseudo-terminal {} of a second devpts instance (the tree uses two)", s.index),
            });
        }
        let slave = slave_holder.get(&s.file).map(|&(p, fd)| copy(p, fd)).transpose()?;
        let FileKind::PtyMaster { tty: state, .. } = &mut files.files[s.file as usize].kind else { continue };
        take_unread(s, state, slave.as_ref())?;
    }
    let pids: std::collections::HashSet<i32> = procs.iter().map(|p| p.pid).collect();
    for p in procs.iter_mut().filter(|p| p.zombie_status.is_none()) {
        let st = procfs::stat(p.pid)?;
        let Some(index) = tty_index(st.field(7)).filter(|i| indexes.contains(i)) else { continue };
        if p.sid != p.pid {
            if !pids.contains(&p.sid) {
                return Err(EngineError::Unsupported {
                    pid: p.pid,
                    what: format!("its controlling terminal /dev/pts/{index} is of a session led outside the tree"),
                });
            }
            continue;
        }
        p.ctty = Some(Ctty { index, foreground: st.field(8) as i32 });
    }
    Ok(())
}

/// /dev/pts/N from /proc/PID/stat's tty_nr (major in bits 8-19, minor in
/// bits 0-7 and 20-31), if the controlling terminal is one.
fn tty_index(tty_nr: u64) -> Option<u32> {
    let major = ((tty_nr >> 8) & 0xfff) as u32;
    let minor = ((tty_nr & 0xff) | ((tty_nr >> 12) & 0xfff00)) as u32;
    index_of(major, minor)
}

/// Take the bytes the master has to read, and write them back through the
/// terminal end with output processing off, so that the master reads the
/// same bytes again; refuse input the terminal end has not read.
fn take_unread(s: &Seen, state: &mut PtyState, slave: Option<&OwnedFd>) -> Result<()> {
    let refuse = |what: String| EngineError::Unsupported { pid: s.holder.0, what };
    if let Some(sl) = slave {
        state.exclusive = tty::get_exclusive(sl)?;
        let n = tty::readable(sl)?;
        if n > 0 {
            return Err(refuse(format!(
                "pseudo-terminal {} holds {n} bytes of input its programs have not read (they cannot be put back as they were)",
                s.index
            )));
        }
    }
    let m = copy(s.holder.0, s.holder.1)?;
    let mut n = tty::readable(&m)?;
    if n == 0 {
        return Ok(());
    }
    let Some(sl) = slave else {
        return Err(refuse(format!(
            "pseudo-terminal {} holds {n} bytes its master has not read, and no process holds its terminal end to put them back",
            s.index
        )));
    };
    if state.packet {
        return Err(refuse(format!(
            "pseudo-terminal {} is in packet mode with {n} bytes its master has not read",
            s.index
        )));
    }
    // What was readable, then again until nothing is: the first look may
    // not count bytes still on their way through the flip buffer.
    let mut buf = Vec::new();
    while n > 0 {
        let Some(room) = cryopod_image::PTY_UNREAD_MAX.checked_sub(buf.len()).filter(|r| *r > 0) else {
            return Err(refuse(format!(
                "pseudo-terminal {} holds more than {} bytes its master has not read",
                s.index,
                cryopod_image::PTY_UNREAD_MAX
            )));
        };
        let start = buf.len();
        buf.resize(start + n.min(room), 0);
        let mut got = start;
        while got < buf.len() {
            match cryopod_sys::io::read_some(&m, &mut buf[got..])? {
                0 => break,
                k => got += k,
            }
        }
        buf.truncate(got);
        n = tty::readable(&m)?;
    }
    write_raw(sl, &state.termios, &buf)?;
    state.unread = buf;
    Ok(())
}

/// Write `bytes` through a terminal end with output processing off for
/// the while, then its settings `t` again.
fn write_raw(slave: impl AsFd, t: &TermiosRec, bytes: &[u8]) -> Result<()> {
    if bytes.is_empty() {
        return Ok(());
    }
    let mut raw = termios(t);
    raw.c_oflag &= !libc::OPOST;
    tty::set_termios(&slave, &raw)?;
    let r = cryopod_sys::io::write_all(&slave, bytes);
    tty::set_termios(&slave, &termios(t))?;
    Ok(r?)
}

/// A pair made again: its master, and an open terminal end (to write its
/// unread bytes through, and for a session leader to take as its
/// controlling terminal).
pub struct Pair {
    pub master: OwnedFd,
    pub slave: OwnedFd,
}

/// Open /dev/ptmx: in the pod's mount namespace (its own devpts) for a
/// pod, else here.
fn open_ptmx(ns_of: Option<i32>) -> Result<OwnedFd> {
    let open = || -> Result<OwnedFd> {
        use std::os::unix::fs::OpenOptionsExt;
        let f = std::fs::OpenOptions::new().read(true).write(true).custom_flags(libc::O_NOCTTY).open("/dev/ptmx");
        Ok(f.map_err(|e| EngineError::Other(format!("cannot open /dev/ptmx: {e}")))?.into())
    };
    match ns_of {
        Some(pid) => crate::nsjoin::run_in(pid, libc::CLONE_NEWNS, open),
        None => open(),
    }
}

/// Make every pair of the image again, each at its index, with its
/// settings and unread bytes (lock and exclusive mode come after every
/// terminal end is open: [`seal_pairs`]).
pub fn make_pairs(m: &Manifest, ns_of: Option<i32>) -> Result<BTreeMap<u32, Pair>> {
    let wanted: BTreeMap<u32, &PtyState> = m
        .files
        .iter()
        .filter_map(|f| match &f.kind {
            FileKind::PtyMaster { index, tty } => Some((*index, &**tty)),
            _ => None,
        })
        .collect();
    let mut pairs = BTreeMap::new();
    // Indexes are given lowest free first: the ones below a wanted index
    // are held until it comes.
    let mut spare = Vec::new();
    for (&index, state) in &wanted {
        let master = loop {
            let fd = open_ptmx(ns_of)?;
            let got = tty::pty_index(&fd)?;
            if got == index {
                break fd;
            }
            if got > index || spare.len() > 4096 {
                return Err(EngineError::Other(format!(
                    "pseudo-terminal {index} (/dev/pts/{index}) is in use here: the tree knows its terminal by that name"
                )));
            }
            spare.push(fd);
        };
        tty::set_locked(&master, false)?;
        let slave = tty::pty_peer(&master, libc::O_RDWR | libc::O_NOCTTY | libc::O_CLOEXEC)?;
        write_raw(&slave, &state.termios, &state.unread)?;
        tty::set_termios(&slave, &termios(&state.termios))?;
        let [ws_row, ws_col, ws_xpixel, ws_ypixel] = state.winsize;
        tty::set_winsize(&slave, &tty::WinSize { ws_row, ws_col, ws_xpixel, ws_ypixel })?;
        tty::set_packet(&master, state.packet)?;
        pairs.insert(index, Pair { master, slave });
    }
    Ok(pairs)
}

/// A description of a pair's end for the tree: its master (there is only
/// one master description), or a new open of its terminal end.
pub fn open_end(f: &OpenFile, pairs: &BTreeMap<u32, Pair>) -> Result<OwnedFd> {
    let (FileKind::PtyMaster { index, .. } | FileKind::PtySlave { index }) = f.kind else {
        return Err(EngineError::Other("not a pseudo-terminal".into()));
    };
    let pair = pairs.get(&index).ok_or_else(|| EngineError::Other(format!("pseudo-terminal {index} was not made")))?;
    let fd = match f.kind {
        FileKind::PtyMaster { .. } => cryopod_sys::fd::dup_at_least(&pair.master, 3)?,
        _ => {
            let access = (f.flags & libc::O_ACCMODE as u32) as i32;
            tty::pty_peer(&pair.master, access | libc::O_NOCTTY | libc::O_CLOEXEC)?
        }
    };
    cryopod_sys::fd::set_status_flags(&fd, (f.flags & !(libc::O_ACCMODE as u32)) as i32)?;
    Ok(fd)
}

/// Once every terminal end is open: lock the pairs that were locked, and
/// put the exclusive ones in exclusive mode.
pub fn seal_pairs(m: &Manifest, pairs: &BTreeMap<u32, Pair>) -> Result<()> {
    for f in &m.files {
        let FileKind::PtyMaster { index, tty: state } = &f.kind else { continue };
        let Some(pair) = pairs.get(index) else { continue };
        if state.exclusive {
            tty::set_exclusive(&pair.slave, true)?;
        }
        if state.locked {
            tty::set_locked(&pair.master, true)?;
        }
    }
    Ok(())
}

/// Process `p`'s pair to take as its controlling terminal (a session
/// leader's, before it forks).
pub fn ctty_source<'a>(p: &Process, pairs: &'a BTreeMap<u32, Pair>) -> Option<std::os::fd::BorrowedFd<'a>> {
    p.ctty.and_then(|c| pairs.get(&c.index)).map(|pair| pair.slave.as_fd())
}

/// A session leader's foreground process group, set by the leader itself
/// (it is in the terminal's foreground group, its own, since it took the
/// terminal: no SIGTTOU), through one of its fds on the pair or, holding
/// none, /dev/tty. Once every process group exists.
pub fn set_foreground(r: &mut crate::remote::Remote, p: &Process, m: &Manifest) -> Result<()> {
    use crate::remote::nr;
    let Some(c) = p.ctty else { return Ok(()) };
    let in_tree = m.processes.iter().any(|q| q.pgid == c.foreground && q.sid == p.sid && q.zombie_status.is_none());
    if c.foreground == p.pid || !in_tree {
        return Ok(());
    }
    let on_pair = p.fds.iter().find(|fd| {
        matches!(m.files.get(fd.file as usize).map(|f| &f.kind),
            Some(FileKind::PtyMaster { index, .. } | FileKind::PtySlave { index }) if *index == c.index)
    });
    let (fd, opened) = match on_pair {
        Some(fd) => (fd.fd as u64, false),
        None => {
            let path = r.put_str(0, "/dev/tty")?;
            let flags = (libc::O_RDWR | libc::O_NOCTTY | libc::O_CLOEXEC) as u64;
            (r.call("open(/dev/tty)", nr::OPENAT, &[libc::AT_FDCWD as u64, path, flags, 0])?, true)
        }
    };
    let pgrp = r.put(256, &c.foreground.to_ne_bytes())?;
    let res = r.call("ioctl(TIOCSPGRP)", nr::IOCTL, &[fd, libc::TIOCSPGRP, pgrp]);
    if opened {
        r.raw(nr::CLOSE, &[fd])?;
    }
    res.map(|_| ())
}
