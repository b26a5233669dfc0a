//! BPF maps across checkpoint/restore (issue 11, class 9), made by root:
//! an array of 4 u64 (frozen after it was filled), a hash of 3 entries
//! (u32 keys, 16-byte values) with a second, read-only descriptor of it,
//! and a per-CPU array. After the restore each map has its type, sizes,
//! name and every entry; the frozen one refuses writes; the hash and its
//! read-only descriptor are one map (a write through one shows through
//! the other) and the read-only one refuses writes.

use cryopod_testprogs::*;

/// bpf(cmd, attr): its result.
unsafe fn bpf(cmd: i64, attr: &mut [u8; 128]) -> i64 {
    libc::syscall(libc::SYS_bpf, cmd, attr.as_mut_ptr(), 128u32)
}

fn put32(a: &mut [u8; 128], at: usize, v: u32) {
    a[at..at + 4].copy_from_slice(&v.to_ne_bytes());
}

fn put64(a: &mut [u8; 128], at: usize, v: u64) {
    a[at..at + 8].copy_from_slice(&v.to_ne_bytes());
}

unsafe fn create(kind: u32, key: u32, value: u32, max: u32, name: &[u8]) -> i32 {
    let mut a = [0u8; 128];
    put32(&mut a, 0, kind);
    put32(&mut a, 4, key);
    put32(&mut a, 8, value);
    put32(&mut a, 12, max);
    a[28..28 + name.len()].copy_from_slice(name);
    bpf(0, &mut a) as i32
}

unsafe fn elem(cmd: i64, fd: i32, key: &[u8], value: &mut [u8]) -> i64 {
    let mut a = [0u8; 128];
    put32(&mut a, 0, fd as u32);
    put64(&mut a, 8, key.as_ptr() as u64);
    put64(&mut a, 16, value.as_mut_ptr() as u64);
    bpf(cmd, &mut a)
}

unsafe fn update(fd: i32, key: &[u8], value: &[u8]) -> bool {
    let mut v = value.to_vec();
    elem(2, fd, key, &mut v) == 0
}

unsafe fn lookup(fd: i32, key: &[u8], size: usize) -> Option<Vec<u8>> {
    let mut v = vec![0u8; size];
    (elem(1, fd, key, &mut v) == 0).then_some(v)
}

/// (type, key size, value size, max entries, name) from BPF_OBJ_GET_INFO_BY_FD.
unsafe fn info(fd: i32) -> (u32, u32, u32, u32, Vec<u8>, u32) {
    let mut out = [0u8; 88];
    let mut a = [0u8; 128];
    put32(&mut a, 0, fd as u32);
    put32(&mut a, 4, 88);
    put64(&mut a, 8, out.as_mut_ptr() as u64);
    bpf(15, &mut a);
    let w = |at: usize| u32::from_ne_bytes([out[at], out[at + 1], out[at + 2], out[at + 3]]);
    let name = out[24..40].iter().copied().take_while(|&b| b != 0).collect();
    (w(0), w(8), w(12), w(16), name, w(4))
}

unsafe fn fd_by_id(id: u32, flags: u32) -> i32 {
    let mut a = [0u8; 128];
    put32(&mut a, 0, id);
    put32(&mut a, 8, flags);
    bpf(14, &mut a) as i32
}

fn k(n: u32) -> [u8; 4] {
    n.to_ne_bytes()
}

fn main() {
    let dir = work_dir();
    let mut c = Checks::new();
    // SAFETY: bpf calls on maps this program made, with live buffers.
    unsafe {
        let arr = create(2, 4, 8, 4, b"cryo_arr");
        let hash = create(1, 4, 16, 8, b"cryo_hash");
        let pcpu = create(6, 4, 8, 2, b"cryo_pcpu");
        let cpus = std::fs::read_to_string("/sys/devices/system/cpu/possible")
            .ok()
            .and_then(|s| s.trim().rsplit('-').next()?.parse::<usize>().ok())
            .map_or(1, |last| last + 1);
        let mut ok = arr >= 0 && hash >= 0 && pcpu >= 0;
        for i in 0..4u32 {
            ok &= update(arr, &k(i), &(u64::from(i) * 11 + 11).to_ne_bytes());
        }
        for n in [7u32, 100, 5000] {
            ok &= update(hash, &k(n), &[n as u8; 16]);
        }
        let per: Vec<u8> = (0..cpus as u64).flat_map(|c| (c + 1).to_ne_bytes()).collect();
        ok &= update(pcpu, &k(0), &per);
        let mut fa = [0u8; 128];
        put32(&mut fa, 0, arr as u32);
        ok &= bpf(22, &mut fa) == 0; // freeze
        let ro = fd_by_id(info(hash).5, 1 << 3);
        ok &= ro >= 0;
        if !ok {
            println!("FAIL (setup: bpf maps: {})", std::io::Error::last_os_error());
            std::process::exit(1);
        }
        let described = |fd: i32| {
            let i = info(fd);
            (i.0, i.1, i.2, i.3, i.4)
        };
        let before = [described(arr), described(hash), described(pcpu)];
        ready_and_wait(&dir);

        c.eq("each map's type, sizes and name", [described(arr), described(hash), described(pcpu)], before);
        let vals: Vec<Option<Vec<u8>>> = (0..4u32).map(|i| lookup(arr, &k(i), 8)).collect();
        let want: Vec<Option<Vec<u8>>> = (0..4u64).map(|i| Some((i * 11 + 11).to_ne_bytes().to_vec())).collect();
        c.eq("the array's entries", vals, want);
        c.check("the array is still frozen", !update(arr, &k(0), &[9; 8]), "a write went through");
        for n in [7u32, 100, 5000] {
            c.eq(&format!("the hash's entry {n}"), lookup(hash, &k(n), 16), Some(vec![n as u8; 16]));
        }
        c.eq("the hash has no other entry", lookup(hash, &k(8), 16), None);
        c.eq("the per-CPU array's values, one per CPU", lookup(pcpu, &k(0), 8 * cpus), Some(per.clone()));
        c.check("the read-only descriptor refuses writes", !update(ro, &k(1), &[1; 16]), "a write went through");
        c.check("a write to the hash ...", update(hash, &k(42), &[42; 16]), "failed");
        c.eq("... shows through the read-only descriptor (one map)", lookup(ro, &k(42), 16), Some(vec![42; 16]));
    }
    c.finish()
}
