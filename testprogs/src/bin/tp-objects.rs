//! Memory objects across checkpoint/restore: a memfd mapped shared and
//! private and kept open, a deleted file mapped like a replaced library
//! (private, one CoW'd page), and a deleted file both open and mapped
//! shared. Contents, names, offsets and sharing (writes through the fd show
//! in the shared mapping) must all come back.

use cryopod_testprogs::*;
use std::ffi::CString;

const LEN: usize = 256 * 1024;

unsafe fn map(fd: i32, prot: i32, flags: i32) -> *mut u8 {
    let p = libc::mmap(std::ptr::null_mut(), LEN, prot, flags, fd, 0);
    assert!(p != libc::MAP_FAILED);
    p as *mut u8
}

fn link(fd: i32) -> String {
    std::fs::read_link(format!("/proc/self/fd/{fd}")).map(|p| p.display().to_string()).unwrap_or_default()
}

fn slice<'a>(p: *mut u8) -> &'a [u8] {
    unsafe { std::slice::from_raw_parts(p, LEN) }
}

fn main() {
    let dir = work_dir();
    let mut c = Checks::new();
    let rw = libc::PROT_READ | libc::PROT_WRITE;
    unsafe {
        // memfd: contents, shared + private mappings, fd kept at offset 100.
        let mfd = libc::memfd_create(c"cryo-memfd".as_ptr(), 0);
        let mdata = pattern(11, LEN);
        libc::write(mfd, mdata.as_ptr().cast(), LEN);
        libc::lseek(mfd, 100, libc::SEEK_SET);
        let m_shared = map(mfd, rw, libc::MAP_SHARED);
        let m_private = map(mfd, rw, libc::MAP_PRIVATE);
        *m_private.add(4096) = 0xEE; // CoW'd page
                                     // A deleted "library": mapped private read-only plus a CoW'd page
                                     // in a writable private mapping; no fd kept.
        let lib = dir.join("libgone.so");
        let ldata = pattern(12, LEN);
        std::fs::write(&lib, &ldata).unwrap();
        let lfd = libc::open(CString::new(lib.as_os_str().as_encoded_bytes()).unwrap().as_ptr(), libc::O_RDONLY);
        let l_ro = map(lfd, libc::PROT_READ, libc::MAP_PRIVATE);
        let l_rw = map(lfd, rw, libc::MAP_PRIVATE);
        *l_rw.add(8192) = 0xAA;
        libc::close(lfd);
        std::fs::remove_file(&lib).unwrap();
        // A deleted file, open and mapped shared.
        let sf = dir.join("shared-gone.dat");
        std::fs::write(&sf, pattern(13, LEN)).unwrap();
        let sfd = libc::open(CString::new(sf.as_os_str().as_encoded_bytes()).unwrap().as_ptr(), libc::O_RDWR);
        let s_map = map(sfd, rw, libc::MAP_SHARED);
        std::fs::remove_file(&sf).unwrap();
        // A sealed memfd (no growing, shrinking or writing any more), and
        // the plain one above: it cannot take seals at all.
        let sealed = libc::memfd_create(c"cryo-sealed".as_ptr(), libc::MFD_ALLOW_SEALING);
        libc::write(sealed, b"frozen".as_ptr().cast(), 6);
        let seals = libc::F_SEAL_SHRINK | libc::F_SEAL_GROW | libc::F_SEAL_WRITE;
        libc::fcntl(sealed, libc::F_ADD_SEALS, seals);
        let plain_seals = libc::fcntl(mfd, libc::F_GET_SEALS);
        let links = (link(mfd), link(sfd));
        let maps_before = maps();

        ready_and_wait(&dir);

        c.check("memfd contents (shared mapping)", slice(m_shared) == &mdata[..], "differ");
        c.eq("memfd fd offset", libc::lseek(mfd, 0, libc::SEEK_CUR), 100);
        c.eq("memfd fd link", link(mfd), links.0.clone());
        c.check("memfd link names it", links.0.starts_with("/memfd:cryo-memfd"), links.0.clone());
        c.eq("memfd private CoW page kept", *m_private.add(4096), 0xEE);
        libc::pwrite(mfd, b"through-fd".as_ptr().cast(), 10, 50_000);
        c.eq("memfd fd and mapping are one object", slice(m_shared)[50_000..50_010].to_vec(), b"through-fd".to_vec());
        c.check("deleted library contents", slice(l_ro) == &ldata[..], "differ");
        c.eq("deleted library CoW page kept", *l_rw.add(8192), 0xAA);
        c.eq("deleted library clean page", *l_rw.add(0), ldata[0]);
        c.check("deleted library not back on disk", !lib.exists(), "reappeared");
        c.eq("deleted shared file link", link(sfd), links.1.clone());
        libc::pwrite(sfd, b"shared".as_ptr().cast(), 6, 1234);
        c.eq("deleted file fd and mapping are one object", slice(s_map)[1234..1240].to_vec(), b"shared".to_vec());
        c.eq("sealed memfd keeps its seals", libc::fcntl(sealed, libc::F_GET_SEALS), seals);
        let w = libc::pwrite(sealed, b"x".as_ptr().cast(), 1, 0);
        c.check("sealed memfd refuses writes", w < 0, format!("pwrite gave {w}"));
        c.eq("unsealable memfd stays so", libc::fcntl(mfd, libc::F_GET_SEALS), plain_seals);
        let mut b = [0u8; 6];
        libc::pread(sealed, b.as_mut_ptr().cast(), 6, 0);
        c.eq("sealed memfd contents", &b, b"frozen");
        let after = maps();
        let missing: Vec<&String> =
            maps_before.iter().filter(|l| !l.ends_with("[heap]") && !after.contains(l)).collect();
        c.check("every area of the maps is back, names included", missing.is_empty(), format!("{missing:#?}"));
    }
    c.finish();
}
