//! CPU state across checkpoint/restore: all 32 AVX-512 registers, the
//! opmask registers, MXCSR, callee-saved general registers, FS and GS base.
//! The registers are loaded, then an assembly loop that only makes syscalls
//! (nanosleep, access) waits for the go file, then stores them for checking.

use cryopod_testprogs::*;
use std::arch::asm;

#[repr(C, align(64))]
struct Area([u64; 8 * 32 + 8 + 8]);

thread_local! {
    static TLS: std::cell::Cell<u64> = const { std::cell::Cell::new(0) };
}

fn main() {
    let dir = work_dir();
    let mut c = Checks::new();
    if !std::is_x86_feature_detected!("avx512f") {
        println!("SKIP: no AVX-512 on this CPU");
        c.check("avx512 present", true, "");
        c.finish();
    }
    TLS.with(|t| t.set(0xfeed_f00d));
    let mut pat = Area([0; 8 * 32 + 16]);
    let bytes = pattern(42, 8 * 32 * 8);
    for (i, ch) in bytes.chunks(8).enumerate() {
        pat.0[i] = u64::from_le_bytes(ch.try_into().unwrap());
    }
    let kvals: [u64; 8] = std::array::from_fn(|i| 0x0101_0101_0101_0101u64.wrapping_mul(i as u64 + 3));
    let mut out = Area([0; 8 * 32 + 16]);
    let gs_value: u64 = 0x1357_9bdf_0000;
    // SAFETY: arch_prctl on our own thread.
    unsafe {
        libc::syscall(libc::SYS_arch_prctl, 0x1001 /* ARCH_SET_GS */, gs_value)
    };
    let mut fs_before: u64 = 0;
    unsafe {
        libc::syscall(libc::SYS_arch_prctl, 0x1003 /* ARCH_GET_FS */, &mut fs_before as *mut u64)
    };
    let go = std::ffi::CString::new(dir.join("go").as_os_str().as_encoded_bytes()).unwrap();
    let ts = libc::timespec { tv_sec: 0, tv_nsec: 5_000_000 };
    let mxcsr_in: u32 = 0x1f80 | (0b11 << 13); // round toward zero
    let mut mxcsr_out: u32 = 0;
    let mut r15_out: u64;
    let mut rbx_out: u64;
    println!("READY");
    use std::io::Write;
    std::io::stdout().flush().unwrap();
    // SAFETY: the asm reads `pat`/`kvals`, writes `out`, makes syscalls with
    // valid pointers, and declares everything it clobbers.
    unsafe {
        asm!(
            "push rbx",
            "ldmxcsr [{mx}]",
        "vmovdqu64 zmm0, [rdi + 0]",
        "vmovdqu64 zmm1, [rdi + 64]",
        "vmovdqu64 zmm2, [rdi + 128]",
        "vmovdqu64 zmm3, [rdi + 192]",
        "vmovdqu64 zmm4, [rdi + 256]",
        "vmovdqu64 zmm5, [rdi + 320]",
        "vmovdqu64 zmm6, [rdi + 384]",
        "vmovdqu64 zmm7, [rdi + 448]",
        "vmovdqu64 zmm8, [rdi + 512]",
        "vmovdqu64 zmm9, [rdi + 576]",
        "vmovdqu64 zmm10, [rdi + 640]",
        "vmovdqu64 zmm11, [rdi + 704]",
        "vmovdqu64 zmm12, [rdi + 768]",
        "vmovdqu64 zmm13, [rdi + 832]",
        "vmovdqu64 zmm14, [rdi + 896]",
        "vmovdqu64 zmm15, [rdi + 960]",
        "vmovdqu64 zmm16, [rdi + 1024]",
        "vmovdqu64 zmm17, [rdi + 1088]",
        "vmovdqu64 zmm18, [rdi + 1152]",
        "vmovdqu64 zmm19, [rdi + 1216]",
        "vmovdqu64 zmm20, [rdi + 1280]",
        "vmovdqu64 zmm21, [rdi + 1344]",
        "vmovdqu64 zmm22, [rdi + 1408]",
        "vmovdqu64 zmm23, [rdi + 1472]",
        "vmovdqu64 zmm24, [rdi + 1536]",
        "vmovdqu64 zmm25, [rdi + 1600]",
        "vmovdqu64 zmm26, [rdi + 1664]",
        "vmovdqu64 zmm27, [rdi + 1728]",
        "vmovdqu64 zmm28, [rdi + 1792]",
        "vmovdqu64 zmm29, [rdi + 1856]",
        "vmovdqu64 zmm30, [rdi + 1920]",
        "vmovdqu64 zmm31, [rdi + 1984]",
        "kmovq k1, [rsi + 8]",
        "kmovq k2, [rsi + 16]",
        "kmovq k3, [rsi + 24]",
        "kmovq k4, [rsi + 32]",
        "kmovq k5, [rsi + 40]",
        "kmovq k6, [rsi + 48]",
        "kmovq k7, [rsi + 56]",
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
        "vmovdqu64 [r14 + 0], zmm0",
        "vmovdqu64 [r14 + 64], zmm1",
        "vmovdqu64 [r14 + 128], zmm2",
        "vmovdqu64 [r14 + 192], zmm3",
        "vmovdqu64 [r14 + 256], zmm4",
        "vmovdqu64 [r14 + 320], zmm5",
        "vmovdqu64 [r14 + 384], zmm6",
        "vmovdqu64 [r14 + 448], zmm7",
        "vmovdqu64 [r14 + 512], zmm8",
        "vmovdqu64 [r14 + 576], zmm9",
        "vmovdqu64 [r14 + 640], zmm10",
        "vmovdqu64 [r14 + 704], zmm11",
        "vmovdqu64 [r14 + 768], zmm12",
        "vmovdqu64 [r14 + 832], zmm13",
        "vmovdqu64 [r14 + 896], zmm14",
        "vmovdqu64 [r14 + 960], zmm15",
        "vmovdqu64 [r14 + 1024], zmm16",
        "vmovdqu64 [r14 + 1088], zmm17",
        "vmovdqu64 [r14 + 1152], zmm18",
        "vmovdqu64 [r14 + 1216], zmm19",
        "vmovdqu64 [r14 + 1280], zmm20",
        "vmovdqu64 [r14 + 1344], zmm21",
        "vmovdqu64 [r14 + 1408], zmm22",
        "vmovdqu64 [r14 + 1472], zmm23",
        "vmovdqu64 [r14 + 1536], zmm24",
        "vmovdqu64 [r14 + 1600], zmm25",
        "vmovdqu64 [r14 + 1664], zmm26",
        "vmovdqu64 [r14 + 1728], zmm27",
        "vmovdqu64 [r14 + 1792], zmm28",
        "vmovdqu64 [r14 + 1856], zmm29",
        "vmovdqu64 [r14 + 1920], zmm30",
        "vmovdqu64 [r14 + 1984], zmm31",
        "kmovq [r14 + 2056], k1",
        "kmovq [r14 + 2064], k2",
        "kmovq [r14 + 2072], k3",
        "kmovq [r14 + 2080], k4",
        "kmovq [r14 + 2088], k5",
        "kmovq [r14 + 2096], k6",
        "kmovq [r14 + 2104], k7",
            "stmxcsr [{mxo}]",
            "mov {r15o}, r15",
            "mov {rbxo}, rbx",
            "pop rbx",
            mx = in(reg) &mxcsr_in,
            mxo = in(reg) &mut mxcsr_out,
            r15o = out(reg) r15_out,
            rbxo = out(reg) rbx_out,
            in("rdi") pat.0.as_ptr(),
            in("rsi") kvals.as_ptr(),
            in("r12") &ts,
            in("r13") go.as_ptr(),
            in("r14") out.0.as_mut_ptr(),
            out("rax") _, out("rcx") _, out("r11") _, out("r15") _,
            out("zmm0") _, out("zmm1") _, out("zmm2") _, out("zmm3") _, out("zmm4") _, out("zmm5") _, out("zmm6") _, out("zmm7") _,
            out("zmm8") _, out("zmm9") _, out("zmm10") _, out("zmm11") _, out("zmm12") _, out("zmm13") _, out("zmm14") _, out("zmm15") _,
            out("zmm16") _, out("zmm17") _, out("zmm18") _, out("zmm19") _, out("zmm20") _, out("zmm21") _, out("zmm22") _, out("zmm23") _,
            out("zmm24") _, out("zmm25") _, out("zmm26") _, out("zmm27") _, out("zmm28") _, out("zmm29") _, out("zmm30") _, out("zmm31") _,
            out("k1") _, out("k2") _, out("k3") _, out("k4") _, out("k5") _, out("k6") _, out("k7") _,
        );
    }
    // Restore default rounding for the rest of the program.
    unsafe { asm!("ldmxcsr [{m}]", m = in(reg) &0x1f80u32) };
    let mut bad = Vec::new();
    for r in 0..32 {
        if out.0[r * 8..r * 8 + 8] != pat.0[r * 8..r * 8 + 8] {
            bad.push(r);
        }
    }
    c.check("zmm0-31 survive", bad.is_empty(), format!("registers differ: {bad:?}"));
    let kout: Vec<u64> = (1..8).map(|i| out.0[256 + i]).collect();
    c.eq("opmask k1-k7 survive", kout, kvals[1..8].to_vec());
    c.eq("mxcsr survives", mxcsr_out, mxcsr_in);
    c.eq("r15 survives", r15_out, 0x0123456789abcdef);
    c.eq("rbx survives", rbx_out, 0x0fedcba987654321);
    let mut gs: u64 = 0;
    let mut fs: u64 = 0;
    unsafe {
        libc::syscall(libc::SYS_arch_prctl, 0x1004 /* ARCH_GET_GS */, &mut gs as *mut u64);
        libc::syscall(libc::SYS_arch_prctl, 0x1003, &mut fs as *mut u64);
    }
    c.eq("gs base survives", gs, gs_value);
    c.eq("fs base survives", fs, fs_before);
    c.eq("thread-local variable", TLS.with(|t| t.get()), 0xfeed_f00d);
    c.finish();
}
