//! Namespaces and mounts for pods: unshare, setns through a pidfd,
//! mount/umount/pivot_root and chdir, host and domain names, and the
//! kernel release (uname) an image records.

use crate::{Errno, Pid, SysError, SysResult};
use rustix::mount::{MountFlags, UnmountFlags};
use rustix::thread::{ThreadNameSpaceType, UnshareFlags};
use std::ffi::CString;
use std::os::fd::AsFd;

/// unshare(flags) for the calling thread (CLONE_NEW* flags). CLONE_FILES
/// is refused: a table of descriptors apart from the other threads' would
/// leave their descriptors dangling in this one.
pub fn unshare(flags: i32) -> SysResult<()> {
    let op = || format!("unshare({flags:#x})");
    if flags & libc::CLONE_FILES != 0 {
        return Err(SysError::new(op(), 0, Errno(libc::EINVAL)));
    }
    // SAFETY: rustix's only condition is about CLONE_FILES, refused above.
    unsafe { rustix::thread::unshare_unsafe(UnshareFlags::from_bits_retain(flags as u32)) }
        .map_err(|e| SysError::new(op(), 0, e.into()))
}

/// Join the namespaces (`CLONE_NEW*` flags) of the process behind `pidfd`.
/// Joining a mount namespace needs a single-threaded caller.
pub fn enter(pidfd: impl AsFd, pid: Pid, flags: i32) -> SysResult<()> {
    rustix::thread::move_into_thread_name_spaces(pidfd.as_fd(), ThreadNameSpaceType::from_bits_retain(flags as u32))
        .map_err(|e| SysError::new(format!("setns({flags:#x})"), pid, e.into()))
}

/// mount(2). `data` may be empty (none). An empty `src` or `fstype` is
/// passed as an empty string, which the kernel ignores for the mounts
/// that have none (bind, remount, propagation changes).
pub fn mount(src: &str, target: &str, fstype: &str, flags: u64, data: &str) -> SysResult<()> {
    let what = || format!("mount {src:?} on {target} ({fstype})");
    let d = CString::new(data)
        .map_err(|_| SysError::new(format!("{} (NUL in {data:?})", what()), 0, Errno(libc::EINVAL)))?;
    let data = (!data.is_empty()).then_some(d.as_c_str());
    rustix::mount::mount(src, target, fstype, MountFlags::from_bits_retain(flags as u32), data)
        .map_err(|e| SysError::new(what(), 0, e.into()))
}

/// umount2(target, flags).
pub fn umount(target: &str, flags: i32) -> SysResult<()> {
    rustix::mount::unmount(target, UnmountFlags::from_bits_retain(flags as u32))
        .map_err(|e| SysError::new(format!("umount {target}"), 0, e.into()))
}

/// pivot_root(new_root, put_old).
pub fn pivot_root(new_root: &str, put_old: &str) -> SysResult<()> {
    rustix::process::pivot_root(new_root, put_old)
        .map_err(|e| SysError::new(format!("pivot_root({new_root}, {put_old})"), 0, e.into()))
}

/// chdir(path).
pub fn chdir(path: &str) -> SysResult<()> {
    rustix::process::chdir(path).map_err(|e| SysError::new(format!("chdir({path})"), 0, e.into()))
}

/// sethostname for the calling process's UTS namespace.
pub fn set_hostname(name: &str) -> SysResult<()> {
    rustix::system::sethostname(name.as_bytes()).map_err(|e| SysError::new(format!("sethostname({name})"), 0, e.into()))
}

/// setdomainname for the calling process's UTS namespace.
pub fn set_domainname(name: &str) -> SysResult<()> {
    rustix::system::setdomainname(name.as_bytes())
        .map_err(|e| SysError::new(format!("setdomainname({name})"), 0, e.into()))
}

/// The release string of the running kernel (uname -r).
pub fn kernel_release() -> String {
    rustix::system::uname().release().to_string_lossy().into_owned()
}
