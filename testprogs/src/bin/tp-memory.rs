//! Memory state across checkpoint/restore: private and shared anonymous
//! memory (shared with a forked child), private (CoW) and shared file
//! mappings, heap, stack, guard gaps, protections, madvise flags, the vDSO.

use cryopod_testprogs::*;
use std::ptr;

const MB: usize = 1 << 20;

unsafe fn map(len: usize, prot: i32, flags: i32, fd: i32) -> *mut u8 {
    let p = libc::mmap(ptr::null_mut(), len, prot, flags, fd, 0);
    assert!(p != libc::MAP_FAILED, "mmap failed");
    p as *mut u8
}

fn smaps_flags(addr: usize) -> String {
    let s = std::fs::read_to_string("/proc/self/smaps").unwrap();
    let mut hit = false;
    for l in s.lines() {
        if let Some((range, _)) = l.split_once(' ') {
            if let Some((a, b)) = range.split_once('-') {
                if let (Ok(a), Ok(b)) = (usize::from_str_radix(a, 16), usize::from_str_radix(b, 16)) {
                    hit = a <= addr && addr < b;
                    continue;
                }
            }
        }
        if hit {
            if let Some(f) = l.strip_prefix("VmFlags:") {
                return f.trim().to_string();
            }
        }
    }
    String::new()
}

fn maps_line(addr: usize) -> String {
    maps()
        .into_iter()
        .find(|l| {
            let (a, b) = l.split_once(' ').unwrap().0.split_once('-').unwrap();
            let (a, b) = (usize::from_str_radix(a, 16).unwrap(), usize::from_str_radix(b, 16).unwrap());
            a <= addr && addr < b
        })
        .unwrap_or_default()
}

fn main() {
    let dir = work_dir();
    let mut c = Checks::new();
    unsafe {
        let rw = libc::PROT_READ | libc::PROT_WRITE;
        let anon = libc::MAP_PRIVATE | libc::MAP_ANONYMOUS;
        // Private anonymous, 8 MiB of pattern with a hole of untouched pages.
        let priv_len = 8 * MB;
        let pa = map(priv_len, rw, anon, -1);
        let pat = pattern(1, priv_len);
        ptr::copy_nonoverlapping(pat.as_ptr(), pa, priv_len);
        libc::madvise(pa.add(MB) as _, MB, libc::MADV_DONTNEED); // hole: zeros again
                                                                 // Pages only read (mapped to the zero page) and pages written with zeros.
        let zr = map(MB, rw, anon, -1);
        let mut sum = 0u64;
        for i in (0..MB).step_by(4096) {
            sum += ptr::read_volatile(zr.add(i)) as u64;
        }
        let zw = map(MB, rw, anon, -1);
        ptr::write_bytes(zw, 0, MB);
        // Shared anonymous, shared with a child.
        let sh_len = 256 * 1024;
        let sh = map(sh_len, rw, libc::MAP_SHARED | libc::MAP_ANONYMOUS, -1);
        let shpat = pattern(2, sh_len);
        ptr::copy_nonoverlapping(shpat.as_ptr(), sh, sh_len);
        // Private file mapping with one CoW'd page; shared file mapping.
        let fpath = dir.join("private.dat");
        let fdata = pattern(3, 64 * 1024);
        std::fs::write(&fpath, &fdata).unwrap();
        let ffd = libc::open(format!("{}\0", fpath.display()).as_ptr() as _, libc::O_RDONLY);
        let pf = map(64 * 1024, rw, libc::MAP_PRIVATE, ffd);
        libc::close(ffd);
        ptr::write_bytes(pf.add(8192), 0xAB, 4096);
        let spath = dir.join("shared.dat");
        std::fs::write(&spath, vec![0u8; 16384]).unwrap();
        let sfd = libc::open(format!("{}\0", spath.display()).as_ptr() as _, libc::O_RDWR);
        let sf = map(16384, rw, libc::MAP_SHARED, sfd);
        libc::close(sfd);
        ptr::copy_nonoverlapping(b"before-checkpoint".as_ptr(), sf, 17);
        // Heap and stack.
        let heap: Vec<u8> = pattern(4, 3 * MB);
        let small: Box<[u64; 16]> = Box::new([0x1234_5678_9abc_def0; 16]);
        let brk_before = libc::sbrk(0) as usize;
        let stack_arr: [u64; 512] = std::array::from_fn(|i| (i as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15));
        // Guard gap, read-only and executable areas.
        let guard = map(64 * 1024, libc::PROT_NONE, anon, -1);
        let ro = map(64 * 1024, rw, anon, -1);
        ptr::write_bytes(ro, 0x5A, 64 * 1024);
        libc::mprotect(ro as _, 64 * 1024, libc::PROT_READ);
        let rx = map(4096, rw, anon, -1);
        // mov eax, 42; ret
        ptr::copy_nonoverlapping([0xB8u8, 42, 0, 0, 0, 0xC3].as_ptr(), rx, 6);
        libc::mprotect(rx as _, 4096, libc::PROT_READ | libc::PROT_EXEC);
        // madvise flags.
        let adv = |a: i32| {
            let p = map(4 * MB, rw, anon, -1);
            libc::madvise(p as _, 4 * MB, a);
            ptr::write_bytes(p, 0x77, 4096);
            p
        };
        let m_huge = adv(libc::MADV_HUGEPAGE);
        let m_nohuge = adv(libc::MADV_NOHUGEPAGE);
        let m_dontfork = adv(libc::MADV_DONTFORK);
        let m_wipe = adv(libc::MADV_WIPEONFORK);
        let m_dontdump = adv(libc::MADV_DONTDUMP);
        ptr::write_bytes(m_huge, 0x66, 4 * MB);
        // vDSO.
        let vdso = libc::getauxval(libc::AT_SYSINFO_EHDR) as usize;
        let vdso_line = maps_line(vdso);
        let maps_before: Vec<String> = maps();
        let mut t0: libc::timespec = std::mem::zeroed();
        libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut t0);

        // The child shares `sh` and will write to it after restore.
        let child = libc::fork();
        if child == 0 {
            wait_go(&dir);
            let ok = std::slice::from_raw_parts(sh, sh_len)[100..200] == shpat[100..200];
            *sh.add(sh_len - 1) = if ok { 0xC1 } else { 0xEE };
            libc::_exit(7);
        }

        ready_and_wait(&dir);
        let brk_after = libc::sbrk(0) as usize;

        let got = std::slice::from_raw_parts(pa, priv_len);
        c.check("private anon pattern", got[..MB] == pat[..MB] && got[2 * MB..] == pat[2 * MB..], "contents differ");
        c.check("private anon hole stays zero", got[MB..2 * MB].iter().all(|&b| b == 0), "hole not zero");
        let mut sum2 = sum;
        for i in (0..MB).step_by(4096) {
            sum2 += ptr::read_volatile(zr.add(i)) as u64;
        }
        c.eq("zero-page area reads zero", sum2, 0);
        c.check("written zeros", std::slice::from_raw_parts(zw, MB).iter().all(|&b| b == 0), "not zero");
        c.check("shared anon contents", std::slice::from_raw_parts(sh, sh_len - 1) == &shpat[..sh_len - 1], "differ");
        // Wait for the child's write through the shared mapping.
        let t = std::time::Instant::now();
        while ptr::read_volatile(sh.add(sh_len - 1)) != 0xC1 && t.elapsed().as_secs() < 10 {
            std::thread::sleep(std::time::Duration::from_millis(1));
        }
        c.eq("shared anon still shared with child", ptr::read_volatile(sh.add(sh_len - 1)), 0xC1);
        let mut st = 0;
        let r = libc::waitpid(child, &mut st, 0);
        c.check(
            "child reaped with status 7",
            r == child && libc::WIFEXITED(st) && libc::WEXITSTATUS(st) == 7,
            format!("r={r} st={st:#x}"),
        );
        let pfv = std::slice::from_raw_parts(pf, 64 * 1024);
        c.check("private file: CoW page kept", pfv[8192..12288].iter().all(|&b| b == 0xAB), "CoW page lost");
        c.check(
            "private file: clean pages from file",
            pfv[..8192] == fdata[..8192] && pfv[12288..] == fdata[12288..],
            "differ",
        );
        c.check("private file: file untouched", std::fs::read(&fpath).unwrap() == fdata, "file changed");
        ptr::copy_nonoverlapping(b"+after-restore".as_ptr(), sf.add(17), 14);
        libc::msync(sf as _, 16384, libc::MS_SYNC);
        let filed = std::fs::read(&spath).unwrap();
        c.check(
            "shared file mapping writes reach the file",
            &filed[..31] == b"before-checkpoint+after-restore",
            String::from_utf8_lossy(&filed[..31]),
        );
        c.check("heap vector", heap == pattern(4, 3 * MB), "differs");
        c.check("heap box", small.iter().all(|&x| x == 0x1234_5678_9abc_def0), "differs");
        c.eq("brk unchanged", brk_after, brk_before);
        c.check(
            "stack array",
            stack_arr.iter().enumerate().all(|(i, &v)| v == (i as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15)),
            "differs",
        );
        c.check("guard gap is PROT_NONE", maps_line(guard as usize).contains(" ---p "), maps_line(guard as usize));
        c.check(
            "read-only area",
            maps_line(ro as usize).contains(" r--p ") && *ro.add(1000) == 0x5A,
            maps_line(ro as usize),
        );
        let f: extern "C" fn() -> i32 = std::mem::transmute(rx);
        c.eq("executable area runs", f(), 42);
        for (name, area, flag) in [
            ("madvise hugepage", m_huge, "hg"),
            ("madvise nohugepage", m_nohuge, "nh"),
            ("madvise dontfork", m_dontfork, "dc"),
            ("madvise wipeonfork", m_wipe, "wf"),
            ("madvise dontdump", m_dontdump, "dd"),
        ] {
            let flags = smaps_flags(area as usize);
            c.check(name, flags.split(' ').any(|x| x == flag), &flags);
        }
        c.check(
            "hugepage area contents",
            std::slice::from_raw_parts(m_huge, 4 * MB).iter().all(|&b| b == 0x66),
            "differ",
        );
        // wipeonfork: a child sees zeros there; the parent keeps its data.
        let ch = libc::fork();
        if ch == 0 {
            libc::_exit(if *m_wipe == 0 && *m_dontfork.cast::<u8>() == 0x77 { 1 } else { 0 });
        }
        let mut st2 = 0;
        libc::waitpid(ch, &mut st2, 0);
        c.check("wipeonfork behaves", libc::WEXITSTATUS(st2) == 0 && *m_wipe == 0x77, format!("status {st2:#x}"));
        c.eq("vDSO at its address", maps_line(vdso), vdso_line);
        let mut t1: libc::timespec = std::mem::zeroed();
        libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut t1);
        c.check("clock_gettime through the vDSO", (t1.tv_sec, t1.tv_nsec) > (t0.tv_sec, t0.tv_nsec), "time went back");
        let after = maps();
        // The heap may have grown since (this check allocates): compare its start.
        let heap_start = |v: &[String]| {
            v.iter().find(|l| l.ends_with("[heap]")).map(|l| l.split('-').next().unwrap_or("").to_string())
        };
        c.eq("heap starts where it did", heap_start(&after), heap_start(&maps_before));
        let missing: Vec<&String> =
            maps_before.iter().filter(|l| !l.ends_with("[heap]") && !after.contains(l)).collect();
        c.check("every area of the maps is back", missing.is_empty(), format!("{missing:#?}"));
    }
    c.finish();
}
