//! BPF maps through the bpf(2) system call, which rustix does not wrap:
//! what a map is (type, sizes, flags, name), its entries read key by key,
//! and a map made again and filled. The attribute unions are built as
//! byte arrays at the kernel's documented offsets (linux/bpf.h).

use crate::{Errno, SysError, SysResult};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd};

const MAP_CREATE: i64 = 0;
const MAP_LOOKUP_ELEM: i64 = 1;
const MAP_UPDATE_ELEM: i64 = 2;
const MAP_GET_NEXT_KEY: i64 = 4;
const MAP_GET_FD_BY_ID: i64 = 14;
const OBJ_GET_INFO_BY_FD: i64 = 15;
const MAP_FREEZE: i64 = 22;

/// BPF_F_RDONLY and BPF_F_WRONLY: the creating descriptor's access.
pub const ACCESS_FLAGS: u32 = (1 << 3) | (1 << 4);

/// bpf(cmd, attr): its result, or the error naming `what`.
fn bpf(cmd: i64, attr: &mut [u8; 128], what: &str) -> SysResult<i64> {
    // SAFETY: `attr` is a live, zero-padded buffer of 128 bytes, larger
    // than every attribute this module builds; the kernel reads (and for
    // some commands writes) at most that size.
    let r = unsafe { libc::syscall(libc::SYS_bpf, cmd, attr.as_mut_ptr(), attr.len() as u32) };
    if r < 0 {
        return Err(SysError::last(what.to_string(), 0));
    }
    Ok(r)
}

fn put32(a: &mut [u8; 128], at: usize, v: u32) {
    a[at..at + 4].copy_from_slice(&v.to_ne_bytes());
}

fn put64(a: &mut [u8; 128], at: usize, v: u64) {
    a[at..at + 8].copy_from_slice(&v.to_ne_bytes());
}

/// What bpf_map_info says of a map.
#[derive(Debug, Clone, Default)]
pub struct MapInfo {
    pub map_type: u32,
    pub id: u32,
    pub key_size: u32,
    pub value_size: u32,
    pub max_entries: u32,
    pub map_flags: u32,
    pub name: Vec<u8>,
    pub map_extra: u64,
}

/// BPF_OBJ_GET_INFO_BY_FD of map `fd`.
pub fn info(fd: impl AsFd) -> SysResult<MapInfo> {
    let mut out = [0u8; 96];
    let mut a = [0u8; 128];
    put32(&mut a, 0, fd.as_fd().as_raw_fd() as u32);
    put32(&mut a, 4, out.len() as u32);
    put64(&mut a, 8, out.as_mut_ptr() as u64);
    bpf(OBJ_GET_INFO_BY_FD, &mut a, "bpf(BPF_OBJ_GET_INFO_BY_FD)")?;
    let w = |at: usize| u32::from_ne_bytes([out[at], out[at + 1], out[at + 2], out[at + 3]]);
    let name = out[24..40].iter().copied().take_while(|&b| b != 0).collect();
    let extra = u64::from_ne_bytes(out[80..88].try_into().unwrap_or([0; 8]));
    Ok(MapInfo {
        map_type: w(0),
        id: w(4),
        key_size: w(8),
        value_size: w(12),
        max_entries: w(16),
        map_flags: w(20),
        name,
        map_extra: extra,
    })
}

/// The key after `key` (the first with None); None at the end.
pub fn next_key(fd: BorrowedFd<'_>, key: Option<&[u8]>, size: usize) -> SysResult<Option<Vec<u8>>> {
    let mut next = vec![0u8; size];
    let mut a = [0u8; 128];
    put32(&mut a, 0, fd.as_raw_fd() as u32);
    put64(&mut a, 8, key.map_or(0, |k| k.as_ptr() as u64));
    put64(&mut a, 16, next.as_mut_ptr() as u64);
    match bpf(MAP_GET_NEXT_KEY, &mut a, "bpf(BPF_MAP_GET_NEXT_KEY)") {
        Ok(_) => Ok(Some(next)),
        Err(e) if e.errno == Errno(libc::ENOENT) => Ok(None),
        Err(e) => Err(e),
    }
}

/// The value of `key` (`size` bytes: a per-CPU map's hold one slot per
/// possible CPU); None if there is none.
pub fn lookup(fd: BorrowedFd<'_>, key: &[u8], size: usize) -> SysResult<Option<Vec<u8>>> {
    let mut value = vec![0u8; size];
    let mut a = [0u8; 128];
    put32(&mut a, 0, fd.as_raw_fd() as u32);
    put64(&mut a, 8, key.as_ptr() as u64);
    put64(&mut a, 16, value.as_mut_ptr() as u64);
    match bpf(MAP_LOOKUP_ELEM, &mut a, "bpf(BPF_MAP_LOOKUP_ELEM)") {
        Ok(_) => Ok(Some(value)),
        Err(e) if e.errno == Errno(libc::ENOENT) => Ok(None),
        Err(e) => Err(e),
    }
}

/// A new map like `i` (its access flags aside: it is filled through this
/// descriptor), close-on-exec.
pub fn create(i: &MapInfo) -> SysResult<OwnedFd> {
    let mut a = [0u8; 128];
    put32(&mut a, 0, i.map_type);
    put32(&mut a, 4, i.key_size);
    put32(&mut a, 8, i.value_size);
    put32(&mut a, 12, i.max_entries);
    put32(&mut a, 16, i.map_flags & !ACCESS_FLAGS);
    let n = i.name.len().min(15);
    a[28..28 + n].copy_from_slice(&i.name[..n]);
    put64(&mut a, 64, i.map_extra);
    let fd = bpf(MAP_CREATE, &mut a, "bpf(BPF_MAP_CREATE)")?;
    // SAFETY: a new descriptor (bpf map fds are close-on-exec) nobody else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as i32) })
}

/// Set `key` to `value`.
pub fn update(fd: BorrowedFd<'_>, key: &[u8], value: &[u8]) -> SysResult<()> {
    let mut a = [0u8; 128];
    put32(&mut a, 0, fd.as_raw_fd() as u32);
    put64(&mut a, 8, key.as_ptr() as u64);
    put64(&mut a, 16, value.as_ptr() as u64);
    bpf(MAP_UPDATE_ELEM, &mut a, "bpf(BPF_MAP_UPDATE_ELEM)").map(|_| ())
}

/// Freeze the map: no more writes from user space.
pub fn freeze(fd: BorrowedFd<'_>) -> SysResult<()> {
    let mut a = [0u8; 128];
    put32(&mut a, 0, fd.as_raw_fd() as u32);
    bpf(MAP_FREEZE, &mut a, "bpf(BPF_MAP_FREEZE)").map(|_| ())
}

/// Another descriptor of map `id`, opened with `access` (BPF_F_RDONLY,
/// BPF_F_WRONLY or none).
pub fn fd_by_id(id: u32, access: u32) -> SysResult<OwnedFd> {
    let mut a = [0u8; 128];
    put32(&mut a, 0, id);
    put32(&mut a, 8, access);
    let fd = bpf(MAP_GET_FD_BY_ID, &mut a, "bpf(BPF_MAP_GET_FD_BY_ID)")?;
    // SAFETY: a new descriptor nobody else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as i32) })
}

/// The number of possible CPUs (a per-CPU map's value has one slot each).
pub fn possible_cpus() -> SysResult<u32> {
    let s = std::fs::read_to_string("/sys/devices/system/cpu/possible")
        .map_err(|e| SysError::new("/sys/devices/system/cpu/possible", 0, Errno(e.raw_os_error().unwrap_or(0))))?;
    let mut n = 0;
    for part in s.trim().split(',') {
        let (a, b) = part.split_once('-').unwrap_or((part, part));
        let (a, b): (u32, u32) = (a.parse().unwrap_or(0), b.parse().unwrap_or(0));
        n += b.saturating_sub(a) + 1;
    }
    Ok(n)
}
