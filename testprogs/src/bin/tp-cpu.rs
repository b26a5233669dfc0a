//! CPU state across checkpoint/restore: every vector register this CPU has
//! (zmm0-31 and opmask k1-k7 with AVX-512; ymm0-15, full 256 bits, on an
//! AVX2 CPU such as the AMD EPYC hosts; xmm0-15 otherwise), MXCSR,
//! callee-saved general registers, FS and GS base. A second argument `zmm`,
//! `ymm` or `xmm` picks the register set instead, so that an AVX-512 host
//! tests the AVX2 path too. The registers are loaded, then an assembly loop
//! that only makes syscalls (nanosleep, access) waits for the go file, then
//! stores them for checking.

use cryopod_testprogs::*;
use std::arch::asm;

/// Room for 32 zmm registers, then 8 opmask registers.
#[repr(C, align(64))]
struct Area([u64; 8 * 32 + 16]);
const K_AT: usize = 8 * 32;

thread_local! {
    static TLS: std::cell::Cell<u64> = const { std::cell::Cell::new(0) };
}

#[derive(Clone, Copy, Debug, PartialEq)]
enum Set {
    Zmm,
    Ymm,
    Xmm,
}

impl Set {
    fn best() -> Set {
        if std::is_x86_feature_detected!("avx512f") {
            Set::Zmm
        } else if std::is_x86_feature_detected!("avx") {
            Set::Ymm
        } else {
            Set::Xmm
        }
    }

    fn parse(s: &str) -> Option<Set> {
        [("zmm", Set::Zmm), ("ymm", Set::Ymm), ("xmm", Set::Xmm)].into_iter().find(|(n, _)| *n == s).map(|(_, v)| v)
    }

    fn available(self) -> bool {
        match self {
            Set::Zmm => std::is_x86_feature_detected!("avx512f"),
            Set::Ymm => std::is_x86_feature_detected!("avx"),
            Set::Xmm => true,
        }
    }

    /// (number of registers, bytes per register)
    fn shape(self) -> (usize, usize) {
        match self {
            Set::Zmm => (32, 64),
            Set::Ymm => (16, 32),
            Set::Xmm => (16, 16),
        }
    }
}

/// What the assembly reads and writes.
struct Io {
    pat: Area,
    kvals: [u64; 8],
    out: Area,
    mxcsr_in: u32,
    mxcsr_out: u32,
    r15_out: u64,
    rbx_out: u64,
    ts: libc::timespec,
    go: std::ffi::CString,
}

/// Load registers (`$load`), wait in a syscall-only loop until the go file
/// exists, store them (`$store`). Everything else is common to all sets.
macro_rules! hold {
    ($io:ident, [$($load:literal),*], [$($store:literal),*], $($clobbers:tt)*) => {
        // SAFETY: the asm reads `pat`/`kvals`, writes `out`, makes syscalls
        // with valid pointers, restores rbx, and declares what it clobbers.
        unsafe {
            asm!(
                "push rbx",
                "ldmxcsr [{mx}]",
                $($load,)*
                "mov r15, 0x0123456789abcdef",
                "mov rbx, 0x0fedcba987654321",
                "2:",
                "mov eax, 35",
                "mov rdi, r12",
                "xor esi, esi",
                "syscall",
                "mov eax, 21",
                "mov rdi, r13",
                "xor esi, esi",
                "syscall",
                "test rax, rax",
                "jnz 2b",
                $($store,)*
                "stmxcsr [{mxo}]",
                "mov {r15o}, r15",
                "mov {rbxo}, rbx",
                "pop rbx",
                mx = in(reg) &$io.mxcsr_in,
                mxo = in(reg) &mut $io.mxcsr_out,
                r15o = out(reg) $io.r15_out,
                rbxo = out(reg) $io.rbx_out,
                in("rdi") $io.pat.0.as_ptr(),
                in("rsi") $io.kvals.as_ptr(),
                in("r12") &$io.ts,
                in("r13") $io.go.as_ptr(),
                in("r14") $io.out.0.as_mut_ptr(),
                out("rax") _, out("rcx") _, out("r11") _, out("r15") _,
                $($clobbers)*
            )
        }
    };
}

fn hold_zmm(io: &mut Io) {
    hold!(
        io,
        [
            "vmovdqu64 zmm0, [rdi + 0]", "vmovdqu64 zmm1, [rdi + 64]", "vmovdqu64 zmm2, [rdi + 128]",
            "vmovdqu64 zmm3, [rdi + 192]", "vmovdqu64 zmm4, [rdi + 256]", "vmovdqu64 zmm5, [rdi + 320]",
            "vmovdqu64 zmm6, [rdi + 384]", "vmovdqu64 zmm7, [rdi + 448]", "vmovdqu64 zmm8, [rdi + 512]",
            "vmovdqu64 zmm9, [rdi + 576]", "vmovdqu64 zmm10, [rdi + 640]", "vmovdqu64 zmm11, [rdi + 704]",
            "vmovdqu64 zmm12, [rdi + 768]", "vmovdqu64 zmm13, [rdi + 832]", "vmovdqu64 zmm14, [rdi + 896]",
            "vmovdqu64 zmm15, [rdi + 960]", "vmovdqu64 zmm16, [rdi + 1024]", "vmovdqu64 zmm17, [rdi + 1088]",
            "vmovdqu64 zmm18, [rdi + 1152]", "vmovdqu64 zmm19, [rdi + 1216]", "vmovdqu64 zmm20, [rdi + 1280]",
            "vmovdqu64 zmm21, [rdi + 1344]", "vmovdqu64 zmm22, [rdi + 1408]", "vmovdqu64 zmm23, [rdi + 1472]",
            "vmovdqu64 zmm24, [rdi + 1536]", "vmovdqu64 zmm25, [rdi + 1600]", "vmovdqu64 zmm26, [rdi + 1664]",
            "vmovdqu64 zmm27, [rdi + 1728]", "vmovdqu64 zmm28, [rdi + 1792]", "vmovdqu64 zmm29, [rdi + 1856]",
            "vmovdqu64 zmm30, [rdi + 1920]", "vmovdqu64 zmm31, [rdi + 1984]",
            "kmovq k1, [rsi + 8]", "kmovq k2, [rsi + 16]", "kmovq k3, [rsi + 24]", "kmovq k4, [rsi + 32]",
            "kmovq k5, [rsi + 40]", "kmovq k6, [rsi + 48]", "kmovq k7, [rsi + 56]"
        ],
        [
            "vmovdqu64 [r14 + 0], zmm0", "vmovdqu64 [r14 + 64], zmm1", "vmovdqu64 [r14 + 128], zmm2",
            "vmovdqu64 [r14 + 192], zmm3", "vmovdqu64 [r14 + 256], zmm4", "vmovdqu64 [r14 + 320], zmm5",
            "vmovdqu64 [r14 + 384], zmm6", "vmovdqu64 [r14 + 448], zmm7", "vmovdqu64 [r14 + 512], zmm8",
            "vmovdqu64 [r14 + 576], zmm9", "vmovdqu64 [r14 + 640], zmm10", "vmovdqu64 [r14 + 704], zmm11",
            "vmovdqu64 [r14 + 768], zmm12", "vmovdqu64 [r14 + 832], zmm13", "vmovdqu64 [r14 + 896], zmm14",
            "vmovdqu64 [r14 + 960], zmm15", "vmovdqu64 [r14 + 1024], zmm16", "vmovdqu64 [r14 + 1088], zmm17",
            "vmovdqu64 [r14 + 1152], zmm18", "vmovdqu64 [r14 + 1216], zmm19", "vmovdqu64 [r14 + 1280], zmm20",
            "vmovdqu64 [r14 + 1344], zmm21", "vmovdqu64 [r14 + 1408], zmm22", "vmovdqu64 [r14 + 1472], zmm23",
            "vmovdqu64 [r14 + 1536], zmm24", "vmovdqu64 [r14 + 1600], zmm25", "vmovdqu64 [r14 + 1664], zmm26",
            "vmovdqu64 [r14 + 1728], zmm27", "vmovdqu64 [r14 + 1792], zmm28", "vmovdqu64 [r14 + 1856], zmm29",
            "vmovdqu64 [r14 + 1920], zmm30", "vmovdqu64 [r14 + 1984], zmm31",
            "kmovq [r14 + 2056], k1", "kmovq [r14 + 2064], k2", "kmovq [r14 + 2072], k3",
            "kmovq [r14 + 2080], k4", "kmovq [r14 + 2088], k5", "kmovq [r14 + 2096], k6", "kmovq [r14 + 2104], k7"
        ],
        out("zmm0") _, out("zmm1") _, out("zmm2") _, out("zmm3") _, out("zmm4") _, out("zmm5") _,
        out("zmm6") _, out("zmm7") _, out("zmm8") _, out("zmm9") _, out("zmm10") _, out("zmm11") _,
        out("zmm12") _, out("zmm13") _, out("zmm14") _, out("zmm15") _, out("zmm16") _, out("zmm17") _,
        out("zmm18") _, out("zmm19") _, out("zmm20") _, out("zmm21") _, out("zmm22") _, out("zmm23") _,
        out("zmm24") _, out("zmm25") _, out("zmm26") _, out("zmm27") _, out("zmm28") _, out("zmm29") _,
        out("zmm30") _, out("zmm31") _,
        out("k1") _, out("k2") _, out("k3") _, out("k4") _, out("k5") _, out("k6") _, out("k7") _,
    );
}

fn hold_ymm(io: &mut Io) {
    hold!(
        io,
        [
            "vmovdqu ymm0, [rdi + 0]", "vmovdqu ymm1, [rdi + 32]", "vmovdqu ymm2, [rdi + 64]",
            "vmovdqu ymm3, [rdi + 96]", "vmovdqu ymm4, [rdi + 128]", "vmovdqu ymm5, [rdi + 160]",
            "vmovdqu ymm6, [rdi + 192]", "vmovdqu ymm7, [rdi + 224]", "vmovdqu ymm8, [rdi + 256]",
            "vmovdqu ymm9, [rdi + 288]", "vmovdqu ymm10, [rdi + 320]", "vmovdqu ymm11, [rdi + 352]",
            "vmovdqu ymm12, [rdi + 384]", "vmovdqu ymm13, [rdi + 416]", "vmovdqu ymm14, [rdi + 448]",
            "vmovdqu ymm15, [rdi + 480]"
        ],
        [
            "vmovdqu [r14 + 0], ymm0", "vmovdqu [r14 + 32], ymm1", "vmovdqu [r14 + 64], ymm2",
            "vmovdqu [r14 + 96], ymm3", "vmovdqu [r14 + 128], ymm4", "vmovdqu [r14 + 160], ymm5",
            "vmovdqu [r14 + 192], ymm6", "vmovdqu [r14 + 224], ymm7", "vmovdqu [r14 + 256], ymm8",
            "vmovdqu [r14 + 288], ymm9", "vmovdqu [r14 + 320], ymm10", "vmovdqu [r14 + 352], ymm11",
            "vmovdqu [r14 + 384], ymm12", "vmovdqu [r14 + 416], ymm13", "vmovdqu [r14 + 448], ymm14",
            "vmovdqu [r14 + 480], ymm15"
        ],
        out("ymm0") _, out("ymm1") _, out("ymm2") _, out("ymm3") _, out("ymm4") _, out("ymm5") _,
        out("ymm6") _, out("ymm7") _, out("ymm8") _, out("ymm9") _, out("ymm10") _, out("ymm11") _,
        out("ymm12") _, out("ymm13") _, out("ymm14") _, out("ymm15") _,
    );
}

fn hold_xmm(io: &mut Io) {
    hold!(
        io,
        [
            "movdqu xmm0, [rdi + 0]", "movdqu xmm1, [rdi + 16]", "movdqu xmm2, [rdi + 32]",
            "movdqu xmm3, [rdi + 48]", "movdqu xmm4, [rdi + 64]", "movdqu xmm5, [rdi + 80]",
            "movdqu xmm6, [rdi + 96]", "movdqu xmm7, [rdi + 112]", "movdqu xmm8, [rdi + 128]",
            "movdqu xmm9, [rdi + 144]", "movdqu xmm10, [rdi + 160]", "movdqu xmm11, [rdi + 176]",
            "movdqu xmm12, [rdi + 192]", "movdqu xmm13, [rdi + 208]", "movdqu xmm14, [rdi + 224]",
            "movdqu xmm15, [rdi + 240]"
        ],
        [
            "movdqu [r14 + 0], xmm0", "movdqu [r14 + 16], xmm1", "movdqu [r14 + 32], xmm2",
            "movdqu [r14 + 48], xmm3", "movdqu [r14 + 64], xmm4", "movdqu [r14 + 80], xmm5",
            "movdqu [r14 + 96], xmm6", "movdqu [r14 + 112], xmm7", "movdqu [r14 + 128], xmm8",
            "movdqu [r14 + 144], xmm9", "movdqu [r14 + 160], xmm10", "movdqu [r14 + 176], xmm11",
            "movdqu [r14 + 192], xmm12", "movdqu [r14 + 208], xmm13", "movdqu [r14 + 224], xmm14",
            "movdqu [r14 + 240], xmm15"
        ],
        out("xmm0") _, out("xmm1") _, out("xmm2") _, out("xmm3") _, out("xmm4") _, out("xmm5") _,
        out("xmm6") _, out("xmm7") _, out("xmm8") _, out("xmm9") _, out("xmm10") _, out("xmm11") _,
        out("xmm12") _, out("xmm13") _, out("xmm14") _, out("xmm15") _,
    );
}

fn arch_prctl(code: i32, arg: u64) {
    // SAFETY: ARCH_SET_* takes a value, ARCH_GET_* a pointer to a live u64.
    unsafe { libc::syscall(libc::SYS_arch_prctl, code, arg) };
}

fn main() {
    let dir = work_dir();
    let mut c = Checks::new();
    let arg = std::env::args().nth(2);
    let set = match arg.as_deref().map(Set::parse) {
        None => Set::best(),
        Some(Some(set)) => set,
        Some(None) => {
            c.check("register set argument", false, format!("{arg:?} is not zmm, ymm or xmm"));
            c.finish()
        }
    };
    if !set.available() {
        c.check("register set available", false, format!("this CPU has no {set:?} registers"));
        c.finish();
    }
    println!("registers: {set:?}");
    TLS.with(|t| t.set(0xfeed_f00d));
    let mut pat = Area([0; 8 * 32 + 16]);
    for (i, ch) in pattern(42, 8 * 32 * 8).chunks(8).enumerate() {
        pat.0[i] = u64::from_le_bytes(ch.try_into().unwrap());
    }
    let gs_value: u64 = 0x1357_9bdf_0000;
    arch_prctl(0x1001 /* ARCH_SET_GS */, gs_value);
    let mut fs_before: u64 = 0;
    arch_prctl(0x1003 /* ARCH_GET_FS */, &mut fs_before as *mut u64 as u64);
    let mut io = Io {
        pat,
        kvals: std::array::from_fn(|i| 0x0101_0101_0101_0101u64.wrapping_mul(i as u64 + 3)),
        out: Area([0; 8 * 32 + 16]),
        mxcsr_in: 0x1f80 | (0b11 << 13), // round toward zero
        mxcsr_out: 0,
        r15_out: 0,
        rbx_out: 0,
        ts: libc::timespec { tv_sec: 0, tv_nsec: 5_000_000 },
        go: std::ffi::CString::new(dir.join("go").as_os_str().as_encoded_bytes()).unwrap(),
    };
    println!("READY");
    use std::io::Write;
    std::io::stdout().flush().unwrap();
    match set {
        Set::Zmm => hold_zmm(&mut io),
        Set::Ymm => hold_ymm(&mut io),
        Set::Xmm => hold_xmm(&mut io),
    }
    // Default rounding again for the rest of the program.
    // SAFETY: loads a valid MXCSR value.
    unsafe { asm!("ldmxcsr [{m}]", m = in(reg) &0x1f80u32) };
    let (n, bytes) = set.shape();
    let words = bytes / 8;
    let bad: Vec<usize> =
        (0..n).filter(|r| io.out.0[r * words..(r + 1) * words] != io.pat.0[r * words..(r + 1) * words]).collect();
    let name = format!("{}0-{} survive", format!("{set:?}").to_lowercase(), n - 1);
    c.check(&name, bad.is_empty(), format!("registers differ: {bad:?}"));
    if set == Set::Zmm {
        let kout: Vec<u64> = (1..8).map(|i| io.out.0[K_AT + i]).collect();
        c.eq("opmask k1-k7 survive", kout, io.kvals[1..8].to_vec());
    }
    c.eq("mxcsr survives", io.mxcsr_out, io.mxcsr_in);
    c.eq("r15 survives", io.r15_out, 0x0123456789abcdef);
    c.eq("rbx survives", io.rbx_out, 0x0fedcba987654321);
    let mut gs: u64 = 0;
    let mut fs: u64 = 0;
    arch_prctl(0x1004 /* ARCH_GET_GS */, &mut gs as *mut u64 as u64);
    arch_prctl(0x1003 /* ARCH_GET_FS */, &mut fs as *mut u64 as u64);
    c.eq("gs base survives", gs, gs_value);
    c.eq("fs base survives", fs, fs_before);
    c.eq("thread-local variable", TLS.with(|t| t.get()), 0xfeed_f00d);
    c.finish();
}
