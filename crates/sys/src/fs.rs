//! Facts about files that the checkpoint needs beyond a path: the file
//! system a descriptor is on (a POSIX message queue shows as a path on the
//! mqueue file system), device numbers, and reopening a file from the
//! handle inotify records for a watch.

use crate::{Errno, SysError, SysResult};
use std::os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd};

/// The file system type (statfs f_type) of what `path` leads to.
pub fn fs_magic(path: &str) -> SysResult<i64> {
    rustix::fs::statfs(path).map(|s| s.f_type).map_err(|e| SysError::new(format!("statfs({path})"), 0, e.into()))
}

/// The major number of a device number.
pub fn major(rdev: u64) -> u32 {
    rustix::fs::major(rdev)
}

/// mkfifo(path, mode).
pub fn mkfifo(path: &str, mode: u32) -> SysResult<()> {
    use rustix::fs::{FileType, Mode, CWD};
    rustix::fs::mknodat(CWD, path, FileType::Fifo, Mode::from_raw_mode(mode), 0)
        .map_err(|e| SysError::new(format!("mkfifo({path})"), 0, e.into()))
}

/// The type and permission bits of the file on `fd` (st_mode).
pub fn fstat_mode(fd: impl AsFd) -> SysResult<u32> {
    rustix::fs::fstat(fd).map(|s| s.st_mode).map_err(|e| SysError::new("fstat", 0, e.into()))
}

/// The device of the file system `fd` is on (st_dev).
pub fn fstat_dev(fd: impl AsFd) -> SysResult<u64> {
    rustix::fs::fstat(fd).map(|s| s.st_dev).map_err(|e| SysError::new("fstat", 0, e.into()))
}

pub fn minor(rdev: u64) -> u32 {
    rustix::fs::minor(rdev)
}

/// open_by_handle_at(mount_fd, {type, bytes}, O_PATH): the file a handle
/// names, on the file system `mount_fd` is on.
pub fn open_by_handle(mount_fd: impl AsFd, handle_type: i32, handle: &[u8]) -> SysResult<OwnedFd> {
    if handle.len() > 128 {
        return Err(SysError::new("open_by_handle_at (handle too long)", 0, Errno(libc::EINVAL)));
    }
    // struct file_handle { u32 handle_bytes; i32 handle_type; u8 f_handle[] }
    let mut buf = Vec::with_capacity(8 + handle.len());
    buf.extend_from_slice(&(handle.len() as u32).to_ne_bytes());
    buf.extend_from_slice(&handle_type.to_ne_bytes());
    buf.extend_from_slice(handle);
    let mount_fd = mount_fd.as_fd().as_raw_fd();
    // rustix has no open_by_handle_at. SAFETY: `buf` is a complete
    // file_handle of its declared length; `mount_fd` is open for the call.
    let r = unsafe {
        libc::syscall(libc::SYS_open_by_handle_at, mount_fd, buf.as_mut_ptr(), libc::O_PATH | libc::O_CLOEXEC)
    };
    if r < 0 {
        return Err(SysError::last("open_by_handle_at", 0));
    }
    // SAFETY: the kernel returned a new fd that nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(r as i32) })
}
