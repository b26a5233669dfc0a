//! fanotify groups. fdinfo gives the group's init flags and event file
//! flags, and each mark: on an inode (a file handle on a device, recorded
//! with a mount point of that device, as inotify's watches are), on a
//! mount (by mount id: recorded as its mount point) or on a file system
//! (by device), with its flags, mask and ignored mask. Restore makes the
//! group and adds the marks again. Events queued at checkpoint are not
//! kept (a permission event's waiter is let go when the group closes).

use crate::inotify::{handle_of, hex, mount_of_device, open_handle};
use crate::{procfs, EngineError, Result};
use cryopod_image::{FanMark, FanTarget, FileKind};
use cryopod_sys::events;
use std::os::fd::OwnedFd;

const FAN_MARK_ADD: u32 = 0x1;
const FAN_MARK_IGNORED_MASK: u32 = 0x20;
const FAN_MARK_IGNORED_SURV_MODIFY: u32 = 0x40;
const FAN_MARK_MOUNT: u32 = 0x10;
const FAN_MARK_FILESYSTEM: u32 = 0x100;
const FAN_MARK_EVICTABLE: u32 = 0x200;
const FAN_MARK_IGNORE: u32 = 0x400;

/// The group behind fanotify fd `fd` of `pid`; `root` as in `files`.
pub fn collect(pid: i32, fd: i32, root: &str) -> Result<FileKind> {
    let info = procfs::read(pid, &format!("fdinfo/{fd}"))?;
    let mounts = procfs::parse_mountinfo(&procfs::read(pid, "mountinfo")?);
    let mount_of_dev = |sdev: u64| mount_of_device(&mounts, sdev, "a fanotify mark");
    let (mut flags, mut event_flags, mut marks) = (0, 0, Vec::new());
    for line in info.lines().filter_map(|l| l.strip_prefix("fanotify ")) {
        let kv: std::collections::HashMap<&str, &str> =
            line.split_whitespace().filter_map(|f| f.split_once(':')).collect();
        let get = |k: &str| kv.get(k).copied().unwrap_or("");
        if kv.contains_key("flags") {
            flags = hex(get("flags")) as u32;
            event_flags = hex(get("event-flags")) as u32;
            continue;
        }
        let on = if kv.contains_key("ino") {
            let (handle_type, handle) = handle_of(get);
            FanTarget::Inode { mount: mount_of_dev(hex(get("sdev")))?, handle_type, handle }
        } else if kv.contains_key("mnt_id") {
            let id = hex(get("mnt_id")) as u32;
            let m = mounts.iter().find(|m| m.id == id).ok_or_else(|| {
                EngineError::Other(format!("a fanotify mark on mount {id}, which is not in the process's view"))
            })?;
            FanTarget::Mount { path: m.target.clone() }
        } else {
            FanTarget::Filesystem { mount: mount_of_dev(hex(get("sdev")))? }
        };
        let m = FanMark {
            on,
            mflags: hex(get("mflags")) as u32,
            mask: hex(get("mask")),
            ignored: hex(get("ignored_mask")),
        };
        // What is marked must still be reachable, or restore could not mark it.
        open_target(root, &m.on)?;
        marks.push(m);
    }
    Ok(FileKind::Fanotify { flags, event_flags, marks })
}

/// A descriptor of what `t` marks (`root`: where the tree's root is seen).
fn open_target(root: &str, t: &FanTarget) -> Result<OwnedFd> {
    let open = |p: &str| {
        let path = format!("{root}{p}");
        std::fs::File::open(&path)
            .map(OwnedFd::from)
            .map_err(|e| EngineError::Other(format!("fanotify mark: {path}: {e}")))
    };
    match t {
        FanTarget::Inode { mount, handle_type, handle } => {
            open_handle(root, mount, (*handle_type, handle), "fanotify mark")
        }
        FanTarget::Mount { path } => open(path),
        FanTarget::Filesystem { mount } => open(mount),
    }
}

/// A new group with `marks` (the caller sets the status flags).
pub fn restore(flags: u32, event_flags: u32, marks: &[FanMark], root: &str) -> Result<OwnedFd> {
    // As fdinfo showed them (FAN_CLOEXEC and FAN_NONBLOCK are kept in the
    // group too; the descriptor's own flags are set after).
    let g = events::fanotify_init(flags, event_flags)?;
    for m in marks {
        let target = open_target(root, &m.on)?;
        let target = format!("/proc/self/fd/{}", std::os::fd::AsRawFd::as_raw_fd(&target));
        let kind = match m.on {
            FanTarget::Inode { .. } => 0,
            FanTarget::Mount { .. } => FAN_MARK_MOUNT,
            FanTarget::Filesystem { .. } => FAN_MARK_FILESYSTEM,
        };
        let evictable = m.mflags & FAN_MARK_EVICTABLE;
        if m.mask != 0 {
            events::fanotify_mark(&g, FAN_MARK_ADD | kind | evictable, m.mask, &target)?;
        }
        if m.ignored != 0 {
            let how = match m.mflags & FAN_MARK_IGNORE {
                0 => FAN_MARK_IGNORED_MASK,
                _ => FAN_MARK_IGNORE,
            };
            let surv = m.mflags & FAN_MARK_IGNORED_SURV_MODIFY;
            events::fanotify_mark(&g, FAN_MARK_ADD | kind | evictable | how | surv, m.ignored, &target)?;
        }
    }
    Ok(g)
}
