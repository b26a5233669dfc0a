//! File locks (issue 11, class 6): POSIX record locks, flocks, open file
//! description (OFD) locks and leases. The kernel lists, in each
//! descriptor's `fdinfo`, the locks of the open file description behind
//! it (flock, OFD, lease) and the POSIX locks its process holds on that
//! file; a checkpoint records each once (see
//! [`cryopod_image::FileLock`]), and a restore takes each again, from
//! inside the process that held it, before the tree runs (a process that
//! was waiting for one of them blocks again when its call restarts).
//! Another holder found at restore fails it, naming the lock; a lease
//! being broken and NFS delegations are refused at checkpoint.

use crate::remote::Remote;
use crate::{EngineError, Result};
use cryopod_image::{FileLock, LockKind};

/// One `lock:` line of the fdinfo of descriptor `fd` of process `pid`, as
/// a lock to take through that descriptor; None for what this module does
/// not take (an access lock of the kernel's own). `what` names the
/// descriptor in errors.
pub fn parse(line: &str, (pid, fd): (i32, i32), what: &str) -> Result<Option<FileLock>> {
    let bad = || EngineError::Unsupported { pid, what: format!("{what}: a file lock the kernel shows as {line:?}") };
    // "1: POSIX  ADVISORY  WRITE 1234 08:02:1311 0 EOF"
    let f: Vec<&str> = line.split_whitespace().collect();
    let kind = match f.get(1).copied() {
        Some("POSIX") => LockKind::Posix,
        Some("OFDLCK") => LockKind::Ofd,
        Some("FLOCK") => LockKind::Flock,
        Some("LEASE") if f.get(2) == Some(&"ACTIVE") => LockKind::Lease,
        Some("LEASE") => {
            return Err(EngineError::Unsupported { pid, what: format!("{what}: a lease being broken") });
        }
        Some("ACCESS") => return Ok(None),
        _ => return Err(bad()),
    };
    let write = match f.get(3).copied() {
        Some("WRITE") => true,
        Some("READ") => false,
        _ => return Err(bad()),
    };
    let start: u64 = f.get(6).and_then(|s| s.parse().ok()).ok_or_else(bad)?;
    let end = match f.get(7).copied() {
        Some("EOF") => None,
        Some(e) => Some(e.parse::<u64>().map_err(|_| bad())?),
        None => return Err(bad()),
    };
    Ok(Some(FileLock { fd, kind, write, start, end }))
}

const NR_FCNTL: i64 = 72;
const NR_FLOCK: i64 = 73;
const F_SETLK: u64 = 6;
const F_OFD_SETLK: u64 = 37;
const F_SETLEASE: u64 = 1024;
const F_RDLCK: u16 = 0;
const F_WRLCK: u16 = 1;
const LOCK_SH: u64 = 1;
const LOCK_EX: u64 = 2;
const LOCK_NB: u64 = 4;

/// Take `locks` again from inside the process `r` injects into (its
/// descriptors in place, its credentials still the restorer's).
pub fn take(r: &mut Remote, locks: &[FileLock]) -> Result<()> {
    for l in locks {
        let ty = if l.write { F_WRLCK } else { F_RDLCK };
        let shown = describe(l);
        let res = match l.kind {
            LockKind::Posix | LockKind::Ofd => {
                // struct flock: type, whence (SEEK_SET), start, len (0: to
                // the end), pid (0 for an OFD lock).
                let mut b = [0u8; 32];
                b[..2].copy_from_slice(&ty.to_ne_bytes());
                b[8..16].copy_from_slice(&l.start.to_ne_bytes());
                let len = l.end.map_or(0, |e| e.saturating_sub(l.start) + 1);
                b[16..24].copy_from_slice(&len.to_ne_bytes());
                let a = r.put(0, &b)?;
                let cmd = if l.kind == LockKind::Ofd { F_OFD_SETLK } else { F_SETLK };
                r.raw(NR_FCNTL, &[l.fd as u64, cmd, a])?
            }
            LockKind::Flock => r.raw(NR_FLOCK, &[l.fd as u64, if l.write { LOCK_EX } else { LOCK_SH } | LOCK_NB])?,
            LockKind::Lease => r.raw(NR_FCNTL, &[l.fd as u64, F_SETLEASE, u64::from(ty)])?,
        };
        if res < 0 {
            let why = match -res as i32 {
                libc::EAGAIN | libc::EACCES => "another process holds a conflicting lock now".to_string(),
                e => std::io::Error::from_raw_os_error(e).to_string(),
            };
            return Err(EngineError::Other(format!("pid {}: {shown}: {why}", r.vpid)));
        }
    }
    Ok(())
}

/// A lock in words.
pub fn describe(l: &FileLock) -> String {
    let kind = match l.kind {
        LockKind::Posix => "POSIX lock",
        LockKind::Ofd => "open file description lock",
        LockKind::Flock => "flock",
        LockKind::Lease => "lease",
    };
    let range = match (l.kind, l.end) {
        (LockKind::Flock | LockKind::Lease, _) => String::new(),
        (_, Some(e)) => format!(" on bytes {}..={e}", l.start),
        (_, None) => format!(" on bytes {}.. (to the end)", l.start),
    };
    format!("a {} {kind}{range} through fd {}", if l.write { "write" } else { "read" }, l.fd)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fdinfo_lock_lines_parse() {
        let p = |l: &str| parse(l, (1, 3), "fd 3").unwrap().map(|l| (l.kind, l.write, l.start, l.end));
        assert_eq!(p("1: POSIX  ADVISORY  WRITE 1234 08:02:1311 0 99"), Some((LockKind::Posix, true, 0, Some(99))));
        assert_eq!(p("2: POSIX  ADVISORY  READ 1234 08:02:1311 200 EOF"), Some((LockKind::Posix, false, 200, None)));
        assert_eq!(p("3: OFDLCK ADVISORY  WRITE -1 08:02:1311 0 9"), Some((LockKind::Ofd, true, 0, Some(9))));
        assert_eq!(p("4: FLOCK  ADVISORY  WRITE 77 00:2a:12 0 EOF"), Some((LockKind::Flock, true, 0, None)));
        assert_eq!(p("5: LEASE  ACTIVE    READ 77 00:2a:12 0 EOF"), Some((LockKind::Lease, false, 0, None)));
        for bad in [
            "6: LEASE  BREAKING  READ 77 00:2a:12 0 EOF",
            "7: DELEG  ACTIVE    READ 77 00:2a:12 0 EOF",
            "8: POSIX  ADVISORY  WRITE 1 08:02:1 x EOF",
        ] {
            assert!(parse(bad, (1, 3), "fd 3").is_err(), "{bad}");
        }
    }
}
