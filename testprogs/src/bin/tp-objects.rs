//! Memory objects across checkpoint/restore: a memfd mapped shared and
//! private and kept open, a deleted file mapped like a replaced library
//! (private, one CoW'd page), and a deleted file both open and mapped
//! shared. Contents, names, offsets and sharing (writes through the fd show
//! in the shared mapping) must all come back. And (issue 11, class 4) a
//! memfd of 3 pages mapped over 4 (the last page past its end) and a file
//! mapped in part (2 pages from its fourth): the object keeps its size,
//! the area its length, and the pages their contents.

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
        // Past its end, and in part.
        let short = libc::memfd_create(c"cryo-short".as_ptr(), 0);
        libc::ftruncate(short, 3 * 4096);
        let past = libc::mmap(std::ptr::null_mut(), 4 * 4096, rw, libc::MAP_SHARED, short, 0) as *mut u8;
        let part_file = dir.join("part");
        let pf = libc::open(
            CString::new(part_file.to_str().unwrap()).unwrap().as_ptr(),
            libc::O_RDWR | libc::O_CREAT,
            0o600,
        );
        libc::ftruncate(pf, 8 * 4096);
        let part = libc::mmap(std::ptr::null_mut(), 2 * 4096, rw, libc::MAP_SHARED, pf, 3 * 4096) as *mut u8;
        if past == libc::MAP_FAILED as *mut u8 || part == libc::MAP_FAILED as *mut u8 {
            println!("FAIL (setup: mappings past an end, in part)");
            std::process::exit(1);
        }
        *past = 1;
        *past.add(2 * 4096 + 7) = 3;
        *part.add(4096 + 9) = 4;
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
        let mut st: libc::stat = std::mem::zeroed();
        libc::fstat(short, &mut st);
        c.eq("the memfd mapped past its end keeps its size", st.st_size, 3 * 4096);
        c.eq("its pages", (*past, *past.add(2 * 4096 + 7)), (1, 3));
        let mut b = [0u8; 1];
        libc::pread(pf, b.as_mut_ptr().cast(), 1, 4 * 4096 + 9);
        c.eq("the file mapped in part: its page, through the file", b[0], 4);
        let after = maps();
        let missing: Vec<&String> =
            maps_before.iter().filter(|l| !l.ends_with("[heap]") && !after.contains(l)).collect();
        c.check("every area of the maps is back, names included", missing.is_empty(), format!("{missing:#?}"));
    }
    c.finish();
}
