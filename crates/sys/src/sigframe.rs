//! Signal frames of our own making (x86_64 `struct rt_sigframe`), so that a
//! task we inject syscalls into can always get back to its own context by
//! itself. Before the first injected call, the task's registers, signal mask
//! and extended state are written below its red zone, where the kernel would
//! put them to deliver a signal; every injected call then runs with its
//! stack pointer on that frame and returns (through a `syscall; ret`
//! sequence) into an `rt_sigreturn`. While we are alive we read each result
//! at the syscall-exit stop and put the registers back ourselves; if we die
//! at any instant, the task runs on into `rt_sigreturn` and resumes exactly
//! where it was, with its own mask, as a signal handler returns.
//!
//! Layout, from the task's stack pointer down: the 128-byte red zone (left
//! alone), a scratch area for the injected calls' outputs, the extended
//! state (64-byte aligned, followed by FP_XSTATE_MAGIC2), then the frame:
//! the return slot (holding the address of an `rt_sigreturn` instruction),
//! the ucontext and an empty siginfo.

use crate::ptrace::Regs;

/// Bytes below the stack pointer that the ABI lets a function use without
/// moving it (x86_64 red zone).
pub const RED_ZONE: u64 = 128;
/// `uc_flags`: extended state present, and restore SS as saved (what the
/// kernel itself sets for a 64-bit frame).
const UC_FLAGS: u64 = 0x1 | 0x2 | 0x4;
const FP_XSTATE_MAGIC1: u32 = 0x4650_5853;
const FP_XSTATE_MAGIC2: u32 = 0x4650_5845;
/// Legacy FXSAVE area plus the XSAVE header: the least a frame can hold.
const MIN_XSTATE: usize = 512 + 64;
/// Offset of the software-reserved bytes in the FXSAVE area.
const SW_RESERVED: usize = 464;
/// `struct rt_sigframe`: return slot (8), ucontext (304), siginfo (128).
pub const FRAME_LEN: u64 = 8 + 304 + 128;
/// Offsets inside the frame.
const UC: usize = 8;
const UC_STACK: usize = UC + 16;
const MCONTEXT: usize = UC + 40;
const UC_SIGMASK: usize = UC + 296;
/// `ss_flags` no kernel accepts: `rt_sigreturn` then leaves the thread's
/// alternate signal stack as it is (errors other than EFAULT from restoring
/// `uc_stack` are ignored), which is what we want, as we do not know it yet.
const SS_FLAGS_KEEP: u32 = 3;

/// Syscall restart codes the kernel leaves in rax when it stops a task in
/// an interrupted syscall (ERESTARTSYS, ERESTARTNOINTR, ERESTARTNOHAND,
/// ERESTART_RESTARTBLOCK).
const RESTART_CODES: [i64; 4] = [-512, -513, -514, -516];

/// A frame ready to be written into a task.
#[derive(Debug, Clone)]
pub struct Frame {
    /// Lowest address written: the bytes cover `[base, base + bytes.len())`,
    /// which ends at the bottom of the red zone.
    pub base: u64,
    pub bytes: Vec<u8>,
    /// Stack pointer for injected calls: the return slot, the frame above.
    pub sp: u64,
    /// Start of the scratch area for the injected calls' outputs.
    pub scratch: u64,
}

/// Why a frame could not be built.
#[derive(Debug, thiserror::Error)]
pub enum FrameError {
    #[error("extended state of {0} bytes is too short for a signal frame")]
    ShortXstate(usize),
    #[error("stack pointer {0:#x} leaves no room for a signal frame")]
    NoRoom(u64),
}

/// The registers with which the task would go on if it were resumed with
/// no signal to handle: a syscall interrupted by our stop is restarted, as
/// the kernel itself does (back at the `syscall` instruction with its
/// number). An interrupted sleep with a restart block is issued again from
/// the start, since `rt_sigreturn` forgets restart blocks.
pub fn resume_context(regs: &Regs) -> Regs {
    let mut r = *regs;
    if (r.orig_rax as i64) >= 0 && RESTART_CODES.contains(&(r.rax as i64)) {
        r.rax = r.orig_rax;
        r.rip = r.rip.wrapping_sub(2);
    }
    r
}

fn put_u64(b: &mut [u8], off: usize, v: u64) {
    b[off..off + 8].copy_from_slice(&v.to_ne_bytes());
}

fn put_u32(b: &mut [u8], off: usize, v: u32) {
    b[off..off + 4].copy_from_slice(&v.to_ne_bytes());
}

fn put_u16(b: &mut [u8], off: usize, v: u16) {
    b[off..off + 2].copy_from_slice(&v.to_ne_bytes());
}

/// Bytes a frame for `xstate_len` bytes of extended state and `scratch`
/// bytes of outputs needs below the red zone, alignment included.
pub fn footprint(xstate_len: usize, scratch: u64) -> u64 {
    scratch + 15 + xstate_len as u64 + 4 + 63 + FRAME_LEN + 16
}

/// Build the frame that returns to `ctx` (see [`resume_context`]) with
/// signal mask `sigmask` and extended state `xstate` (as PTRACE_GETREGSET
/// gives it), placed below `ctx.rsp`'s red zone. `sigreturn` is the address
/// of an `rt_sigreturn` sequence in the task, stored in the return slot.
pub fn build(ctx: &Regs, xstate: &[u8], sigmask: u64, sigreturn: u64, scratch_len: u64) -> Result<Frame, FrameError> {
    if xstate.len() < MIN_XSTATE {
        return Err(FrameError::ShortXstate(xstate.len()));
    }
    let top = ctx.rsp.checked_sub(RED_ZONE).ok_or(FrameError::NoRoom(ctx.rsp))?;
    let need = footprint(xstate.len(), scratch_len);
    if top < need + 0x10000 {
        return Err(FrameError::NoRoom(ctx.rsp));
    }
    let scratch = (top - scratch_len) & !15;
    let fpstate = (scratch - xstate.len() as u64 - 4) & !63;
    let frame = ((fpstate - FRAME_LEN) & !15) - 8;
    let mut b = vec![0u8; (top - frame) as usize];
    let at = |addr: u64| (addr - frame) as usize;

    put_u64(&mut b, 0, sigreturn);
    put_u64(&mut b, UC, UC_FLAGS);
    put_u32(&mut b, UC_STACK + 8, SS_FLAGS_KEEP);
    let mc = MCONTEXT;
    let gp = [
        ctx.r8, ctx.r9, ctx.r10, ctx.r11, ctx.r12, ctx.r13, ctx.r14, ctx.r15, ctx.rdi, ctx.rsi, ctx.rbp, ctx.rbx,
        ctx.rdx, ctx.rax, ctx.rcx, ctx.rsp, ctx.rip, ctx.eflags,
    ];
    for (i, v) in gp.iter().enumerate() {
        put_u64(&mut b, mc + 8 * i, *v);
    }
    put_u16(&mut b, mc + 144, ctx.cs as u16);
    put_u16(&mut b, mc + 150, ctx.ss as u16);
    put_u64(&mut b, mc + 184, fpstate);
    put_u64(&mut b, UC_SIGMASK, sigmask);

    let fp = at(fpstate);
    b[fp..fp + xstate.len()].copy_from_slice(xstate);
    // The software-reserved bytes tell rt_sigreturn that a full XSAVE area
    // follows (and how long it is); MAGIC2 closes it.
    let sw = fp + SW_RESERVED;
    put_u32(&mut b, sw, FP_XSTATE_MAGIC1);
    put_u32(&mut b, sw + 4, xstate.len() as u32 + 4);
    if u64::from_ne_bytes(b[sw + 8..sw + 16].try_into().unwrap_or_default()) == 0 {
        // XSTATE_BV from the header: the components the area holds.
        let bv = u64::from_ne_bytes(b[fp + 512..fp + 520].try_into().unwrap_or_default());
        put_u64(&mut b, sw + 8, bv | 0x3);
    }
    put_u32(&mut b, sw + 16, xstate.len() as u32);
    put_u32(&mut b, fp + xstate.len(), FP_XSTATE_MAGIC2);
    Ok(Frame { base: frame, bytes: b, sp: frame, scratch })
}

/// A frame to chain before one that [`build`] made: returned into, its
/// `rt_sigreturn` loads `regs` (aimed at a `syscall; ret` site with a
/// syscall's number and arguments, and `rsp` at the first frame's return
/// slot) with every signal blocked, so that the task runs that syscall and
/// then goes on into the first frame. `head` is the first frame's first
/// [`FRAME_LEN`] bytes, as written in the task: the chained frame keeps its
/// return slot, its `uc_stack` and its extended state (the address of the
/// first frame's, loaded twice). None if `head` is short.
pub fn chained(head: &[u8], regs: &Regs) -> Option<Vec<u8>> {
    let mut b = head.get(..FRAME_LEN as usize)?.to_vec();
    let gp = [
        regs.r8,
        regs.r9,
        regs.r10,
        regs.r11,
        regs.r12,
        regs.r13,
        regs.r14,
        regs.r15,
        regs.rdi,
        regs.rsi,
        regs.rbp,
        regs.rbx,
        regs.rdx,
        regs.rax,
        regs.rcx,
        regs.rsp,
        regs.rip,
        regs.eflags,
    ];
    for (i, v) in gp.iter().enumerate() {
        put_u64(&mut b, MCONTEXT + 8 * i, *v);
    }
    put_u64(&mut b, UC_SIGMASK, !0);
    Some(b)
}

/// Find an `rt_sigreturn` sequence (`mov $15, %eax` or `mov $15, %rax`,
/// then `syscall`) in code; returns the offset of its first byte. Every C
/// library's signal restorer is one.
pub fn find_sigreturn(code: &[u8]) -> Option<usize> {
    const SHORT: [u8; 5] = [0xb8, 0x0f, 0, 0, 0];
    const LONG: [u8; 7] = [0x48, 0xc7, 0xc0, 0x0f, 0, 0, 0];
    // Each `syscall` instruction (found fast), looking behind it.
    for i in memchr::memmem::find_iter(code, &[0x0f, 0x05]) {
        if i >= 7 && code[i - 7..i] == LONG {
            return Some(i - 7);
        }
        if i >= 5 && code[i - 5..i] == SHORT {
            return Some(i - 5);
        }
    }
    None
}

/// Find a `syscall` instruction followed only by register-clearing
/// `xor r32, r32` instructions and a `ret` (the vDSO's fallback paths end
/// so): an injected call made there returns through the stack. Returns the
/// offset of the `syscall`.
pub fn find_syscall_ret(code: &[u8]) -> Option<usize> {
    let mut i = 0;
    while i + 2 <= code.len() {
        if code[i] == 0x0f && code[i + 1] == 0x05 && ends_in_ret(&code[i + 2..]) {
            return Some(i);
        }
        i += 1;
    }
    None
}

fn ends_in_ret(mut c: &[u8]) -> bool {
    for _ in 0..16 {
        match c {
            [0xc3, ..] => return true,
            // xor r32, r32 (same register, low eight).
            [0x31, m, rest @ ..] if is_self_xor(*m) => c = rest,
            // xor r8d..r15d with itself.
            [0x45, 0x31, m, rest @ ..] if is_self_xor(*m) => c = rest,
            _ => return false,
        }
    }
    false
}

fn is_self_xor(modrm: u8) -> bool {
    modrm >> 6 == 3 && (modrm >> 3) & 7 == modrm & 7 && modrm & 7 != 4
}

#[cfg(test)]
mod tests {
    use super::*;

    fn regs() -> Regs {
        // SAFETY: plain data; zero is valid.
        let mut r: Regs = unsafe { std::mem::zeroed() };
        r.rsp = 0x7fff_0000_1008;
        r.rip = 0x40_1000;
        r.cs = 0x33;
        r.ss = 0x2b;
        r.rax = 7;
        r
    }

    #[test]
    fn frame_is_below_the_red_zone_and_aligned() {
        let x = vec![0u8; 2696];
        let f = build(&regs(), &x, 0x55, 0x1234, 256).unwrap();
        assert_eq!(f.base + f.bytes.len() as u64, 0x7fff_0000_1008 - RED_ZONE);
        assert_eq!(f.sp, f.base);
        assert_eq!((f.sp + 8) % 16, 0);
        let fp = u64::from_ne_bytes(f.bytes[MCONTEXT + 184..MCONTEXT + 192].try_into().unwrap());
        assert_eq!(fp % 64, 0);
        let o = (fp - f.base) as usize;
        let magic2 = u32::from_ne_bytes(f.bytes[o + x.len()..o + x.len() + 4].try_into().unwrap());
        assert_eq!(magic2, FP_XSTATE_MAGIC2);
        assert!(f.scratch >= fp + x.len() as u64 + 4);
        assert!(f.bytes.len() as u64 <= footprint(x.len(), 256));
        assert_eq!(u64::from_ne_bytes(f.bytes[0..8].try_into().unwrap()), 0x1234);
        assert_eq!(u64::from_ne_bytes(f.bytes[UC_SIGMASK..UC_SIGMASK + 8].try_into().unwrap()), 0x55);
    }

    #[test]
    fn a_chained_frame_runs_one_syscall_then_returns_to_the_first() {
        let f = build(&regs(), &vec![0u8; 2696], 0x55, 0x1234, 768).unwrap();
        let mut r = regs();
        (r.rip, r.rax, r.rdi, r.rsp) = (0x7000, 3, 9, f.sp);
        let c = chained(&f.bytes, &r).unwrap();
        let word = |b: &[u8], at: usize| u64::from_ne_bytes(b[at..at + 8].try_into().unwrap());
        assert_eq!(c.len() as u64, FRAME_LEN);
        assert_eq!(word(&c, 0), 0x1234, "the same rt_sigreturn in its return slot");
        assert_eq!((word(&c, MCONTEXT + 128), word(&c, MCONTEXT + 104), word(&c, MCONTEXT + 64)), (0x7000, 3, 9));
        assert_eq!(word(&c, MCONTEXT + 120), f.sp, "on to the first frame");
        assert_eq!(word(&c, UC_SIGMASK), !0, "every signal blocked meanwhile");
        assert_eq!(word(&c, MCONTEXT + 184), word(&f.bytes, MCONTEXT + 184), "the first frame's extended state");
        assert!(chained(&f.bytes[..100], &r).is_none());
    }

    #[test]
    fn interrupted_syscalls_restart() {
        let mut r = regs();
        r.orig_rax = 202;
        r.rax = (-512i64) as u64;
        let c = resume_context(&r);
        assert_eq!((c.rax, c.rip), (202, 0x40_1000 - 2));
        r.orig_rax = u64::MAX;
        assert_eq!(resume_context(&r).rip, 0x40_1000);
        r.orig_rax = 0;
        r.rax = 5;
        assert_eq!(resume_context(&r).rax, 5);
    }

    #[test]
    fn gadgets_are_found() {
        let code = [0x90, 0xb8, 0xe5, 0, 0, 0, 0x0f, 0x05, 0x31, 0xd2, 0x45, 0x31, 0xdb, 0xc3];
        assert_eq!(find_syscall_ret(&code), Some(6));
        assert_eq!(find_syscall_ret(&[0x0f, 0x05, 0xc9, 0xc3]), None);
        assert_eq!(find_sigreturn(&[0x90, 0x48, 0xc7, 0xc0, 0x0f, 0, 0, 0, 0x0f, 0x05]), Some(1));
        assert_eq!(find_sigreturn(&[0xb8, 0x0f, 0, 0, 0, 0x0f, 0x05]), Some(0));
        assert_eq!(find_sigreturn(&[0xb8, 0x0e, 0, 0, 0, 0x0f, 0x05]), None);
    }
}
