//! The PAGEMAP_SCAN ioctl on `/proc/<pid>/pagemap` (Linux 6.7+), used as a
//! query: which pages of a range are present, swapped, file-backed or the
//! shared zero page. Constants are defined here because the installed
//! headers predate them.

use crate::{Errno, Pid, SysError, SysResult};
use std::os::fd::AsRawFd;

pub const PAGE_IS_WPALLOWED: u64 = 1 << 0;
pub const PAGE_IS_WRITTEN: u64 = 1 << 1;
pub const PAGE_IS_FILE: u64 = 1 << 2;
pub const PAGE_IS_PRESENT: u64 = 1 << 3;
pub const PAGE_IS_SWAPPED: u64 = 1 << 4;
pub const PAGE_IS_PFNZERO: u64 = 1 << 5;
pub const PAGE_IS_HUGE: u64 = 1 << 6;

const PAGEMAP_SCAN: u64 = 0xc060_6610;
/// Write-protect the pages that match (asynchronous uffd-wp areas only).
const PM_SCAN_WP_MATCHING: u64 = 1 << 0;
/// Fail (EPERM) rather than skip an area not registered for async uffd-wp.
const PM_SCAN_CHECK_WPASYNC: u64 = 1 << 1;

#[repr(C)]
#[derive(Default)]
struct PmScanArg {
    size: u64,
    flags: u64,
    start: u64,
    end: u64,
    walk_end: u64,
    vec: u64,
    vec_len: u64,
    max_pages: u64,
    category_inverted: u64,
    category_mask: u64,
    category_anyof_mask: u64,
    return_mask: u64,
}

/// A run of pages with the same categories.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[repr(C)]
pub struct Region {
    pub start: u64,
    pub end: u64,
    pub categories: u64,
}

/// An open `/proc/<pid>/pagemap`.
pub struct Pagemap {
    file: std::fs::File,
    pid: Pid,
}

impl Pagemap {
    pub fn open(pid: Pid) -> SysResult<Self> {
        let file = std::fs::File::open(format!("/proc/{pid}/pagemap"))
            .map_err(|e| SysError::new("open pagemap", pid, Errno(e.raw_os_error().unwrap_or(0))))?;
        Ok(Pagemap { file, pid })
    }

    /// Regions of `[start, end)` having any category of `anyof`, reported
    /// with the categories in `report`.
    pub fn scan(&self, start: u64, end: u64, anyof: u64, report: u64) -> SysResult<Vec<Region>> {
        self.walk(start, end, (0, 0, anyof, report))
    }

    /// The pages of `[start, end)` written since they were last protected,
    /// protected again in the same walk (an area registered for
    /// asynchronous uffd-wp: else EPERM, possibly after part of it was
    /// walked — scan one area at a time).
    pub fn written_and_protect(&self, start: u64, end: u64) -> SysResult<Vec<Region>> {
        let flags = PM_SCAN_WP_MATCHING | PM_SCAN_CHECK_WPASYNC;
        self.walk(start, end, (flags, PAGE_IS_WRITTEN, 0, PAGE_IS_WRITTEN))
    }

    /// One PAGEMAP_SCAN walk: (flags, category mask, any-of mask, return mask).
    fn walk(&self, start: u64, end: u64, (flags, mask, anyof, report): (u64, u64, u64, u64)) -> SysResult<Vec<Region>> {
        let mut out = Vec::new();
        let mut buf = vec![Region::default(); 512];
        let mut pos = start;
        while pos < end {
            let mut arg = PmScanArg {
                size: std::mem::size_of::<PmScanArg>() as u64,
                start: pos,
                end,
                flags,
                vec: buf.as_mut_ptr() as u64,
                vec_len: buf.len() as u64,
                category_mask: mask,
                category_anyof_mask: anyof,
                return_mask: report,
                ..Default::default()
            };
            // SAFETY: `arg` is a valid pm_scan_arg whose vec points at `buf`
            // with vec_len entries; the kernel writes at most that many.
            let n = unsafe { libc::ioctl(self.file.as_raw_fd(), PAGEMAP_SCAN as _, &mut arg) };
            if n < 0 {
                return Err(SysError::last(format!("PAGEMAP_SCAN {pos:#x}-{end:#x}"), self.pid));
            }
            let n = (n as usize).min(buf.len());
            out.extend_from_slice(&buf[..n]);
            if arg.walk_end <= pos {
                break;
            }
            pos = arg.walk_end;
        }
        Ok(out)
    }
}
