//! The CPU as user code sees it: CPUID leaves, XCR0, and the layout of the
//! standard-format XSAVE area that the kernel uses for `NT_X86_XSTATE`
//! (each component's offset and size from CPUID leaf 0xD). XGETBV is an
//! intrinsic that needs `unsafe`, hence this module's place here; which
//! CPUID bits matter is the image crate's business (`cryopod_image::cpu`).

use cryopod_image::{CpuFeatures, XComponent};
use std::arch::x86_64::{__cpuid_count, _xgetbv, CpuidResult};

/// CPUID with leaf `leaf`, subleaf `sub`.
pub fn cpuid(leaf: u32, sub: u32) -> CpuidResult {
    __cpuid_count(leaf, sub)
}

/// A leaf's registers, or zeros when the CPU's maximum (from `leaf & 0x80000000`)
/// does not reach it.
fn leaf(leaf: u32, sub: u32) -> CpuidResult {
    let max = cpuid(leaf & 0x8000_0000, 0).eax;
    if leaf > max {
        return CpuidResult { eax: 0, ebx: 0, ecx: 0, edx: 0 };
    }
    cpuid(leaf, sub)
}

/// XCR0: the state components the OS enabled (0 when XSAVE is not enabled).
pub fn xcr0() -> u64 {
    const OSXSAVE: u32 = 1 << 27;
    if leaf(1, 0).ecx & OSXSAVE == 0 {
        return 0;
    }
    // SAFETY: XGETBV with ECX=0 is available whenever CPUID reports OSXSAVE,
    // checked just above.
    unsafe { _xgetbv(0) }
}

/// Size of the standard-format XSAVE area for the components in XCR0 (what
/// the kernel sizes `NT_X86_XSTATE` by).
pub fn xsave_size() -> u32 {
    leaf(0xd, 0).ebx
}

/// Offset and size of each component from 2 up that `mask` has.
pub fn xsave_components(mask: u64) -> Vec<XComponent> {
    (2..64u8)
        .filter(|i| mask & (1 << i) != 0)
        .map(|i| {
            let r = leaf(0xd, u32::from(i));
            XComponent { index: i, offset: r.ebx, size: r.eax }
        })
        .collect()
}

/// The CPUID words that announce instruction sets, unfiltered.
pub fn features() -> CpuFeatures {
    let l1 = leaf(1, 0);
    let l7 = leaf(7, 0);
    // Subleaf 1 of leaf 7 exists when subleaf 0 reports it in EAX.
    let l7s1 = if l7.eax >= 1 { leaf(7, 1).eax } else { 0 };
    let e1 = leaf(0x8000_0001, 0);
    CpuFeatures {
        leaf1_ecx: l1.ecx,
        leaf1_edx: l1.edx,
        leaf7_ebx: l7.ebx,
        leaf7_ecx: l7.ecx,
        leaf7_edx: l7.edx,
        leaf7_1_eax: l7s1,
        leafd_1_eax: leaf(0xd, 1).eax,
        ext1_ecx: e1.ecx,
        ext1_edx: e1.edx,
    }
}

/// Vendor and brand string ("GenuineIntel Intel(R) Xeon(R) Processor").
pub fn model() -> String {
    let v = cpuid(0, 0);
    let mut vendor = Vec::with_capacity(12);
    for r in [v.ebx, v.edx, v.ecx] {
        vendor.extend_from_slice(&r.to_le_bytes());
    }
    let mut brand = Vec::with_capacity(48);
    for l in 0x8000_0002..=0x8000_0004 {
        let r = leaf(l, 0);
        for x in [r.eax, r.ebx, r.ecx, r.edx] {
            brand.extend_from_slice(&x.to_le_bytes());
        }
    }
    let text = |b: &[u8]| String::from_utf8_lossy(b).trim_matches(|c: char| c == '\0' || c == ' ').to_string();
    format!("{} {}", text(&vendor), text(&brand)).trim().to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The kernel's `NT_X86_XSTATE` area is exactly CPUID's size, laid out
    /// with CPUID's offsets: the restore builds areas from these numbers.
    #[test]
    fn kernel_xstate_matches_cpuid() {
        // SAFETY: fork in a test (the harness has several threads, so not
        // our fork_with_pid); the child only waits to be killed.
        let child = unsafe { libc::fork() };
        if child == 0 {
            loop {
                rustix::event::pause();
            }
        }
        let x = crate::ptrace::seize(child, 0)
            .and_then(|_| crate::ptrace::interrupt(child))
            .and_then(|_| crate::ptrace::wait(child))
            .and_then(|_| crate::ptrace::get_xstate(child));
        let _ = crate::process::kill(child, libc::SIGKILL);
        let _ = crate::process::waitpid(child, 0);
        let x = x.unwrap();
        assert_eq!(x.len(), xsave_size() as usize);
        // The kernel puts XCR0 in the legacy area's software bytes.
        assert_eq!(u64::from_le_bytes(x[464..472].try_into().unwrap()), xcr0());
        let comps = xsave_components(xcr0());
        let end = comps.iter().map(|c| c.offset + c.size).max().unwrap_or(576);
        assert!(end <= xsave_size(), "components end within the area");
        if xcr0() & 4 != 0 {
            assert_eq!(comps[0], XComponent { index: 2, offset: 576, size: 256 });
        }
        assert!(!model().is_empty());
    }
}
