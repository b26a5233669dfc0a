//! Whose permissions the calling process acts with: file-system ids while
//! the restorer opens a user's files, effective ids while a stub makes a
//! socket whose peer credentials must name the right user, and root of a
//! user namespace just entered.
//!
//! These stay on libc: rustix has no setfsuid/setfsgid, and its
//! set_thread_res_uid family changes the calling thread only, where
//! glibc's setresuid/setresgid/setgroups change every thread of the
//! process, which these callers rely on.

use crate::{Errno, SysError, SysResult};

/// setfsuid + setfsgid for the calling thread: file permission checks are
/// then made as that user. Returns the previous (fsuid, fsgid).
pub fn set_fs_ids(uid: u32, gid: u32) -> (u32, u32) {
    // SAFETY: integer arguments; setfsgid first, while we may still change it.
    unsafe {
        let old_gid = libc::setfsgid(gid) as u32;
        let old_uid = libc::setfsuid(uid) as u32;
        (old_uid, old_gid)
    }
}

/// Switch the calling process's effective uid and gid (the saved ids stay,
/// so a root caller can switch back). Used so that sockets connected or
/// listening record the right peer credentials.
pub fn set_effective_ids(uid: u32, gid: u32) -> SysResult<()> {
    // SAFETY: integer arguments; -1 leaves an id unchanged.
    if unsafe { libc::setresgid(u32::MAX, gid, u32::MAX) } < 0 {
        return Err(SysError::last(format!("setresgid(-, {gid}, -)"), 0));
    }
    // SAFETY: as above.
    if unsafe { libc::setresuid(u32::MAX, uid, u32::MAX) } < 0 {
        return Err(SysError::last(format!("setresuid(-, {uid}, -)"), 0));
    }
    Ok(())
}

/// Become uid and gid 0 of the user namespace just entered (whose maps
/// are written), with no supplementary groups.
pub fn become_root() -> SysResult<()> {
    // SAFETY: integer arguments; an empty group list.
    unsafe {
        if libc::setgroups(0, std::ptr::null()) < 0 && Errno::last().0 != libc::EPERM {
            return Err(SysError::last("setgroups([])", 0));
        }
        if libc::setresgid(0, 0, 0) < 0 {
            return Err(SysError::last("setresgid(0)", 0));
        }
        if libc::setresuid(0, 0, 0) < 0 {
            return Err(SysError::last("setresuid(0)", 0));
        }
    }
    Ok(())
}
