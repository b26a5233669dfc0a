//! CPU portability of images. The machines that run cryopod differ from day
//! to day (an Intel with AVX-512, an AMD EPYC with AVX2 only), so an image
//! records what its CPU offered (`record`), a restore refuses before
//! anything runs when this CPU lacks some of it, naming what in words
//! (`check_image`), and each thread's saved XSAVE area is laid out as this
//! CPU's kernel expects it when the two areas differ (`fit_xstate`: an image
//! from a CPU with fewer components restores on one with more).

use crate::{EngineError, Result};
use cryopod_image::cpu::{self, XSAVE_HEADER, XSAVE_LEGACY, XSAVE_MAX};
use cryopod_image::{CpuFeatures, CpuImage, XComponent};
use std::borrow::Cow;
use std::sync::OnceLock;

/// This CPU, with every CPUID bit (read once per process).
pub fn this_cpu() -> &'static CpuImage {
    static THIS: OnceLock<CpuImage> = OnceLock::new();
    THIS.get_or_init(|| {
        use cryopod_sys::cpu;
        let xcr0 = cpu::xcr0();
        CpuImage {
            model: cpu::model(),
            xcr0,
            xsave_size: cpu::xsave_size(),
            components: cpu::xsave_components(xcr0),
            features: cpu::features(),
        }
    })
}

/// This CPU as a manifest records it: instruction-set bits only (the rule
/// is in `cryopod_image::cpu`).
pub fn record() -> CpuImage {
    let mut c = this_cpu().clone();
    c.features = c.features.recorded();
    c
}

/// Refuse an image whose CPU had state components or instruction sets this
/// CPU lacks, or a component of another size.
pub fn check_image(image: &CpuImage) -> Result<()> {
    compare(image, this_cpu())
}

/// [`check_image`] with `here` standing for this CPU.
pub fn compare(image: &CpuImage, here: &CpuImage) -> Result<()> {
    let mut lacking = CpuFeatures::default();
    for (w, bit) in image.features.missing_from(&here.features) {
        *lacking.get_mut(w) |= 1 << bit;
    }
    let names = lacking.names();
    let state = image.xcr0 & !here.xcr0;
    if !names.is_empty() || state != 0 {
        let state_names = cpu::component_names(state).join(", ");
        let what = match (names.is_empty(), state == 0) {
            (false, true) => names.join(", "),
            (true, _) => format!("extended state {state_names}"),
            (false, false) => format!("{} (extended state: {state_names})", names.join(", ")),
        };
        return Err(EngineError::CpuLacks { what, image: image.model.clone(), here: here.model.clone() });
    }
    for c in &image.components {
        if let Some(h) = here.component(c.index).filter(|h| h.size != c.size) {
            return Err(EngineError::Other(format!(
                "extended state {} has {} bytes in the image and {} on this CPU",
                cpu::component_name(c.index),
                c.size,
                h.size
            )));
        }
    }
    Ok(())
}

/// Byte range of a component in an XSAVE area.
fn span(c: &XComponent) -> Option<std::ops::Range<usize>> {
    let start = usize::try_from(c.offset).ok()?;
    Some(start..start.checked_add(usize::try_from(c.size).ok()?)?)
}

fn read_u64(b: &[u8], at: usize) -> Option<u64> {
    b.get(at..at.checked_add(8)?)?.try_into().ok().map(u64::from_le_bytes)
}

/// A thread's saved XSAVE area, laid out for the image's CPU, as this CPU's
/// kernel takes it (`here`'s size exactly): the image's legacy region
/// (x87, SSE, MXCSR), its XSTATE_BV, and every component it had in use at
/// `here`'s offset for that component; components the image did not have
/// stay in their initial state. Borrowed unchanged when both layouts match.
pub fn fit_xstate<'a>(xstate: &'a [u8], image: &CpuImage, here: &CpuImage) -> Result<Cow<'a, [u8]>> {
    if image.xsave_size == here.xsave_size && image.components == here.components {
        return Ok(Cow::Borrowed(xstate));
    }
    let bad = |why: String| EngineError::Other(format!("the saved extended state does not fit this CPU: {why}"));
    let legacy = XSAVE_LEGACY as usize;
    if here.xsave_size < XSAVE_LEGACY + XSAVE_HEADER || here.xsave_size > XSAVE_MAX {
        return Err(bad(format!("this CPU's XSAVE area has {} bytes", here.xsave_size)));
    }
    let mut out = vec![0u8; here.xsave_size as usize];
    let src = xstate.get(..legacy).ok_or_else(|| bad(format!("{} bytes saved", xstate.len())))?;
    out.get_mut(..legacy).ok_or_else(|| bad("no legacy region".into()))?.copy_from_slice(src);
    let bv = read_u64(xstate, legacy).ok_or_else(|| bad("no XSAVE header".into()))?;
    if bv & !here.xcr0 != 0 {
        return Err(bad(format!("components {:?} in use", cpu::component_names(bv & !here.xcr0))));
    }
    out.get_mut(legacy..legacy + 8).ok_or_else(|| bad("no XSAVE header".into()))?.copy_from_slice(&bv.to_le_bytes());
    for c in image.components.iter().filter(|c| bv & (1 << c.index) != 0) {
        let name = cpu::component_name(c.index);
        let h = here.component(c.index).filter(|h| h.size == c.size);
        let h = h.ok_or_else(|| bad(format!("{name} has no place of {} bytes here", c.size)))?;
        let from = span(c).and_then(|r| xstate.get(r)).ok_or_else(|| bad(format!("{name} beyond the saved area")))?;
        let to = span(h).and_then(|r| out.get_mut(r)).ok_or_else(|| bad(format!("{name} beyond this CPU's area")))?;
        to.copy_from_slice(from);
    }
    Ok(Cow::Owned(out))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn c(index: u8, offset: u32, size: u32) -> XComponent {
        XComponent { index, offset, size }
    }

    /// The Intel hosts of this machine kind: AVX-512, no PKRU.
    fn intel() -> CpuImage {
        CpuImage {
            model: "Intel".into(),
            xcr0: 0xe7,
            xsave_size: 2688,
            components: vec![c(2, 576, 256), c(5, 1088, 64), c(6, 1152, 512), c(7, 1664, 1024)],
            features: CpuFeatures {
                leaf1_ecx: 1 << 28,
                leaf7_ebx: (1 << 5) | (1 << 16) | (1 << 17) | (1 << 28) | (1 << 30) | (1 << 31),
                ..Default::default()
            },
        }
    }

    /// An AMD host with AVX2 only.
    fn amd() -> CpuImage {
        CpuImage {
            model: "AMD".into(),
            xcr0: 0x7,
            xsave_size: 832,
            components: vec![c(2, 576, 256)],
            features: CpuFeatures { leaf1_ecx: 1 << 28, leaf7_ebx: 1 << 5, ext1_ecx: 1 << 6, ..Default::default() },
        }
    }

    #[test]
    fn refusal_names_what_is_missing() {
        let e = compare(&intel(), &amd()).unwrap_err().to_string();
        assert!(
            e.starts_with(
                "this CPU lacks avx512f, avx512dq, avx512cd, avx512bw, avx512vl \
                 (extended state: AVX-512 opmask, ZMM_Hi256, Hi16_ZMM) that the image's CPU had"
            ),
            "{e}"
        );
        // sse4a only, then state only, then a bit without a name.
        let e = compare(&amd(), &intel()).unwrap_err().to_string();
        assert!(e.starts_with("this CPU lacks sse4a that"), "{e}");
        let mut pkru = intel();
        pkru.xcr0 |= 1 << 9;
        pkru.components.push(c(9, 2688, 8));
        pkru.xsave_size = 2696;
        let e = compare(&pkru, &intel()).unwrap_err().to_string();
        assert!(e.starts_with("this CPU lacks extended state PKRU that"), "{e}");
        let mut odd = amd();
        odd.features = CpuFeatures { leaf7_edx: 1 << 1, ..Default::default() };
        let e = compare(&odd, &intel()).unwrap_err().to_string();
        assert!(e.contains("lacks CPUID.(7,0):EDX[1] that"), "{e}");
        // A subset restores; so does the same CPU.
        let mut subset = amd();
        subset.features.ext1_ecx = 0;
        compare(&subset, &intel()).unwrap();
        compare(&intel(), &intel()).unwrap();
        let mut resized = subset;
        resized.components[0].size = 128;
        assert!(compare(&resized, &intel()).unwrap_err().to_string().contains("AVX has 128 bytes"));
    }

    #[test]
    fn a_smaller_area_is_laid_out_for_this_cpu() {
        // AVX2-era area: legacy, header with x87|SSE|AVX in use, ymm upper halves.
        let mut small = vec![0u8; 832];
        small[..512].iter_mut().enumerate().for_each(|(i, b)| *b = i as u8);
        small[512] = 0x7;
        small[576..832].fill(0xab);
        let out = fit_xstate(&small, &amd(), &intel()).unwrap();
        assert_eq!(out.len(), 2688);
        assert_eq!(out[..512], small[..512]);
        assert_eq!(read_u64(&out, 512), Some(0x7));
        assert!(out[520..576].iter().all(|&b| b == 0), "XCOMP_BV and reserved bytes stay zero");
        assert_eq!(out[576..832], small[576..832]);
        assert!(out[832..].iter().all(|&b| b == 0), "AVX-512 state stays initial");
        // Same layout: the saved bytes as they are.
        assert!(matches!(fit_xstate(&small, &amd(), &amd()).unwrap(), Cow::Borrowed(_)));
    }

    #[test]
    fn components_move_to_this_cpus_offsets() {
        // PKRU right after AVX (as AMD places it) onto a CPU that keeps it
        // after the AVX-512 state.
        let mut there = amd();
        there.xcr0 |= 1 << 9;
        there.components.push(c(9, 832, 8));
        there.xsave_size = 840;
        let mut here = intel();
        here.xcr0 |= 1 << 9;
        here.components.push(c(9, 2688, 8));
        here.xsave_size = 2696;
        let mut x = vec![0u8; 840];
        x[512] = 0x7;
        x[513] = 0x2; // PKRU (bit 9) in use
        x[832..840].copy_from_slice(&0x5555_5554u64.to_le_bytes());
        let out = fit_xstate(&x, &there, &here).unwrap();
        assert_eq!(read_u64(&out, 2688), Some(0x5555_5554));
        assert_eq!(read_u64(&out, 512), Some(0x207));
    }

    #[test]
    fn what_cannot_fit_is_an_error_not_a_panic() {
        let mut x = vec![0u8; 832];
        x[512] = 0x7 | 0x20; // opmask in use, not on AMD
        assert!(fit_xstate(&x, &intel(), &amd()).is_err());
        assert!(fit_xstate(&x[..100], &amd(), &intel()).is_err());
        x[512] = 0x7;
        assert!(fit_xstate(&x[..700], &amd(), &intel()).is_err(), "AVX beyond a short area");
        let mut huge = intel();
        huge.xsave_size = XSAVE_MAX + 1;
        assert!(fit_xstate(&x, &amd(), &huge).is_err());
    }
}
