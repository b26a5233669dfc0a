//! Shared memory the way PostgreSQL and Python's multiprocessing keep it:
//! MAP_SHARED|MAP_ANONYMOUS memory mapped before a fork (the child inherits
//! it), and a file made with shm_open under /dev/shm, mapped shared by both
//! processes. Run in a pod or as a plain tree. After restore each process
//! writes into both areas and the other must see the write; the contents
//! from before must be intact, and the /dev/shm file must hold what the
//! mapping shows (and keep its size: space reserved beyond the mapping).

use cryopod_testprogs::*;
use std::ptr;

const ANON: usize = 4 << 20;
const SHM: usize = 1 << 20;

unsafe fn map(len: usize, flags: i32, fd: i32) -> *mut u8 {
    let p = libc::mmap(ptr::null_mut(), len, libc::PROT_READ | libc::PROT_WRITE, flags, fd, 0);
    assert!(p != libc::MAP_FAILED, "mmap: {}", std::io::Error::last_os_error());
    p.cast()
}

/// Wait (up to 10 s) until `*p == want`.
unsafe fn wait_byte(p: *const u8, want: u8) -> bool {
    for _ in 0..2000 {
        if ptr::read_volatile(p) == want {
            return true;
        }
        libc::usleep(5000);
    }
    false
}

fn main() {
    let dir = work_dir();
    let mut c = Checks::new();
    // SAFETY (whole block): raw mappings of sizes we chose, accessed in range.
    unsafe {
        let anon = map(ANON, libc::MAP_SHARED | libc::MAP_ANONYMOUS, -1);
        let apat = pattern(11, ANON);
        ptr::copy_nonoverlapping(apat.as_ptr(), anon, ANON);
        let name = std::ffi::CString::new(format!("/cryopod-tp-shm-{}", std::process::id())).unwrap();
        let fd = libc::shm_open(name.as_ptr(), libc::O_CREAT | libc::O_RDWR | libc::O_EXCL, 0o600);
        assert!(fd >= 0, "shm_open: {}", std::io::Error::last_os_error());
        // Space reserved as PostgreSQL does (posix_fallocate), with an
        // untouched tail: archived as a file with holes.
        assert_eq!(libc::posix_fallocate(fd, 0, (SHM + 65536) as i64), 0);
        let shm = map(SHM, libc::MAP_SHARED, fd);
        let spat = pattern(12, SHM);
        ptr::copy_nonoverlapping(spat.as_ptr(), shm, SHM);
        // Bytes at these offsets are the after-restore messages.
        let (a_parent, a_child, s_parent, s_child) = (ANON / 2, ANON - 1, SHM / 3, SHM - 1);
        let child = libc::fork();
        if child == 0 {
            wait_go(&dir);
            let anon_ok = std::slice::from_raw_parts(anon, ANON)
                .iter()
                .enumerate()
                .all(|(i, &b)| i == a_parent || i == a_child || b == apat[i]);
            let shm_ok = std::slice::from_raw_parts(shm, SHM)
                .iter()
                .enumerate()
                .all(|(i, &b)| i == s_parent || i == s_child || b == spat[i]);
            ptr::write_volatile(anon.add(a_child), 0xC1);
            ptr::write_volatile(shm.add(s_child), 0xC2);
            let seen = wait_byte(anon.add(a_parent), 0xA1) && wait_byte(shm.add(s_parent), 0xA2);
            libc::_exit(if anon_ok && shm_ok && seen { 0 } else { 1 + anon_ok as i32 * 2 + shm_ok as i32 * 4 });
        }
        ready_and_wait(&dir);
        let anon_ok = std::slice::from_raw_parts(anon, ANON)
            .iter()
            .enumerate()
            .all(|(i, &b)| i == a_parent || i == a_child || b == apat[i]);
        c.check("shared anonymous contents", anon_ok, "differ");
        let shm_ok = std::slice::from_raw_parts(shm, SHM)
            .iter()
            .enumerate()
            .all(|(i, &b)| i == s_parent || i == s_child || b == spat[i]);
        c.check("/dev/shm mapping contents", shm_ok, "differ");
        ptr::write_volatile(anon.add(a_parent), 0xA1);
        ptr::write_volatile(shm.add(s_parent), 0xA2);
        c.check("child's write seen in shared anonymous memory", wait_byte(anon.add(a_child), 0xC1), "not seen");
        c.check("child's write seen in the /dev/shm mapping", wait_byte(shm.add(s_child), 0xC2), "not seen");
        let mut st = 0;
        libc::waitpid(child, &mut st, 0);
        c.eq("child's verdict (0: it saw the same memory and our writes)", libc::WEXITSTATUS(st), 0);
        // The file itself holds what the mapping shows.
        let mut buf = vec![0u8; SHM];
        let n = libc::pread(fd, buf.as_mut_ptr().cast(), SHM, 0);
        c.eq("/dev/shm file size read", n, SHM as isize);
        c.check("/dev/shm file equals the mapping", buf == std::slice::from_raw_parts(shm, SHM), "differ");
        let mut st: libc::stat = std::mem::zeroed();
        libc::fstat(fd, &mut st);
        c.eq("/dev/shm file size", st.st_size, (SHM + 65536) as i64);
        let path = format!("/dev/shm{}", name.to_str().unwrap_or_default());
        c.check("/dev/shm file still named", std::path::Path::new(&path).exists(), &path);
        libc::shm_unlink(name.as_ptr());
    }
    c.finish()
}
