//! inotify instances. fdinfo names each watch by descriptor, mask and a
//! file handle on a device; we record the handle with a mount point of that
//! device (as the tree sees it). Restore opens the handle again
//! (open_by_handle_at) and adds the watches in descriptor order, so that
//! each gets its number back (the kernel numbers them one after the other;
//! a gap is made by adding and removing a placeholder watch, whose
//! IN_IGNORED event is dropped). Events queued at checkpoint are not kept.

use crate::{procfs, EngineError, Result};
use cryopod_image::{FileKind, InotifyWatch};
use cryopod_sys::{events, fs, io};
use std::os::fd::{AsRawFd, OwnedFd};

/// A hexadecimal field of fdinfo (0 if it is not one).
pub(crate) fn hex(s: &str) -> u64 {
    u64::from_str_radix(s, 16).unwrap_or(0)
}

/// The file handle an fdinfo line names (inotify watches and fanotify
/// inode marks print it alike): its type and bytes, both in hexadecimal.
pub(crate) fn handle_of<'a>(get: impl Fn(&str) -> &'a str) -> (i32, Vec<u8>) {
    let bytes = get("f_handle")
        .as_bytes()
        .chunks(2)
        .filter_map(|c| std::str::from_utf8(c).ok().and_then(|h| u8::from_str_radix(h, 16).ok()))
        .collect();
    (hex(get("fhandle-type")) as i32, bytes)
}

/// A mount point of device `sdev` (as fdinfo prints it: major << 20 |
/// minor), as the process sees its mounts; `what` names the object in
/// the error.
pub(crate) fn mount_of_device(mounts: &[procfs::MountInfo], sdev: u64, what: &str) -> Result<String> {
    let dev = format!("{}:{}", sdev >> 20, sdev & 0xfffff);
    mounts.iter().find(|m| m.dev == dev).map(|m| m.target.clone()).ok_or_else(|| {
        EngineError::Other(format!("{what} on device {dev}, which is not mounted in the process's view"))
    })
}

/// Open the file that a handle names on the file system mounted at
/// `mount`, under `root` (where the tree's root is seen); `what` names the
/// object in errors.
pub(crate) fn open_handle(root: &str, mount: &str, (handle_type, handle): (i32, &[u8]), what: &str) -> Result<OwnedFd> {
    let mnt = format!("{root}{mount}");
    let m = std::fs::File::open(&mnt).map_err(|e| EngineError::Other(format!("{what}: {mnt}: {e}")))?;
    fs::open_by_handle(&m, handle_type, handle).map_err(|e| EngineError::Other(format!("{what}: the file: {e}")))
}

/// Open the file a watch names, under `root` (where the tree's root is seen).
fn open_watched(root: &str, w: &InotifyWatch) -> Result<OwnedFd> {
    open_handle(root, &w.mount, (w.handle_type, &w.handle), &format!("inotify watch {}", w.wd))
}

/// The watches of inotify fd `fd` of `pid`; `root` as in `files`.
pub fn collect(pid: i32, fd: i32, root: &str) -> Result<FileKind> {
    let info = procfs::read(pid, &format!("fdinfo/{fd}"))?;
    let mounts = procfs::parse_mountinfo(&procfs::read(pid, "mountinfo")?);
    let mut watches = Vec::new();
    for line in info.lines().filter_map(|l| l.strip_prefix("inotify ")) {
        let kv: std::collections::HashMap<&str, &str> =
            line.split_whitespace().filter_map(|f| f.split_once(':')).collect();
        let get = |k: &str| kv.get(k).copied().unwrap_or("");
        let mount = mount_of_device(&mounts, hex(get("sdev")), "an inotify watch")?;
        let (handle_type, handle) = handle_of(get);
        let w = InotifyWatch {
            wd: get("wd").parse().unwrap_or(0),
            mask: hex(get("mask")) as u32,
            mount,
            handle_type,
            handle,
        };
        // The watched file must still be reachable, or restore could not add it.
        open_watched(root, &w)?;
        watches.push(w);
    }
    watches.sort_by_key(|w| w.wd);
    Ok(FileKind::Inotify { watches })
}

/// A new inotify instance with `watches`, each at its descriptor.
pub fn restore(watches: &[InotifyWatch], root: &str) -> Result<OwnedFd> {
    let ino = events::inotify_init(libc::IN_CLOEXEC | libc::IN_NONBLOCK)?;
    let fd = &ino;
    let mut next = 1;
    for w in watches {
        let file = open_watched(root, w)?;
        let path = format!("/proc/self/fd/{}", file.as_raw_fd());
        // Placeholders up to the wanted number (on the watched file itself,
        // removed at once, so the number moves on).
        while next < w.wd {
            let p = events::inotify_add(fd, &path, libc::IN_ATTRIB)?;
            events::inotify_rm(fd, p)?;
            next = p + 1;
        }
        let got = events::inotify_add(fd, &path, w.mask)?;
        if got != w.wd {
            return Err(EngineError::Other(format!("inotify watch {} came back as {got}", w.wd)));
        }
        next = got + 1;
    }
    // The placeholders' removal queued IN_IGNORED events: drop them (events
    // queued at checkpoint are not kept anyway). The caller sets the final
    // status flags.
    let mut buf = [0u8; 4096];
    while io::read_some(fd, &mut buf).is_ok_and(|n| n > 0) {}
    Ok(ino)
}
