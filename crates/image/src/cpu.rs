//! The checkpointing CPU as its programs saw it: the extended-state
//! components the OS enabled (XCR0) with their place in the XSAVE area, and
//! the instruction sets CPUID announced. A program picks its code paths
//! (memcpy, crypto, math kernels) once at start-up and keeps using them
//! after a restore, so a restoring CPU needs every one of them. The names
//! here let a refusal say in words what is missing.
//!
//! Which CPUID bits are recorded — the rule: a bit is recorded when it
//! announces instructions that user code may execute and that fault (#UD)
//! or compute something else on a CPU without them. Left out, because they
//! differ between hosts without harm to a running program:
//! - bits that describe the OS's choices (OSXSAVE, OSPKE: XCR0 covers the
//!   state they enable) and the hypervisor bit;
//! - platform, paging and debug features (APIC, MTRR, PAE, PCID, LA57,
//!   SMEP, SMAP, TSC deadline, ...) and privileged-only instructions (VMX,
//!   SMX, INVPCID, XSAVES, WRMSRNS, ...);
//! - performance hints that change no result (ERMS, FSRM, fast short REP
//!   string operations) and hints that are NOPs where absent (PREFETCHW,
//!   PREFETCHWT1, CLDEMOTE, HLE prefixes, MPX's BND prefixes);
//! - speculation controls; AMD's copies of leaf 1 EDX bits in leaf
//!   0x80000001 EDX, and its MMXEXT bit there (those instructions are a
//!   subset of SSE, which is recorded).
//!
//! Exactly the bits named in [`FEATURES`] are recorded.

use serde::{Deserialize, Serialize};

/// Largest XSAVE area accepted (AMX tiles included): bounds image records.
pub const XSAVE_MAX: u32 = 16 * 1024;
/// The legacy region (x87, SSE) and the XSAVE header: every area has them.
pub const XSAVE_LEGACY: u32 = 512;
pub const XSAVE_HEADER: u32 = 64;

/// What the checkpointing CPU offered.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq, Default)]
pub struct CpuImage {
    /// Vendor and brand string, for messages only.
    pub model: String,
    /// XCR0: state component n is enabled when bit n is set.
    pub xcr0: u64,
    /// Bytes of the standard-format XSAVE area for `xcr0`; every thread's
    /// `xstate` has this length.
    pub xsave_size: u32,
    /// Where each component of `xcr0` from 2 up lies in that area, by
    /// increasing index (components 0 and 1 live in the legacy region).
    pub components: Vec<XComponent>,
    /// Instruction sets, only the bits of [`FEATURES`].
    pub features: CpuFeatures,
}

/// One extended-state component in a standard-format XSAVE area.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
pub struct XComponent {
    pub index: u8,
    pub offset: u32,
    pub size: u32,
}

/// The CPUID words that announce instruction sets.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq, Default)]
pub struct CpuFeatures {
    pub leaf1_ecx: u32,
    pub leaf1_edx: u32,
    pub leaf7_ebx: u32,
    pub leaf7_ecx: u32,
    pub leaf7_edx: u32,
    pub leaf7_1_eax: u32,
    pub leafd_1_eax: u32,
    pub ext1_ecx: u32,
    pub ext1_edx: u32,
}

/// Names one of the words of [`CpuFeatures`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Word {
    Leaf1Ecx,
    Leaf1Edx,
    Leaf7Ebx,
    Leaf7Ecx,
    Leaf7Edx,
    Leaf7s1Eax,
    LeafDs1Eax,
    Ext1Ecx,
    Ext1Edx,
}

impl Word {
    pub const ALL: [Word; 9] = [
        Word::Leaf1Ecx,
        Word::Leaf1Edx,
        Word::Leaf7Ebx,
        Word::Leaf7Ecx,
        Word::Leaf7Edx,
        Word::Leaf7s1Eax,
        Word::LeafDs1Eax,
        Word::Ext1Ecx,
        Word::Ext1Edx,
    ];

    /// Where the word comes from, for bits without a name.
    pub fn describe(self) -> &'static str {
        match self {
            Word::Leaf1Ecx => "CPUID.1:ECX",
            Word::Leaf1Edx => "CPUID.1:EDX",
            Word::Leaf7Ebx => "CPUID.(7,0):EBX",
            Word::Leaf7Ecx => "CPUID.(7,0):ECX",
            Word::Leaf7Edx => "CPUID.(7,0):EDX",
            Word::Leaf7s1Eax => "CPUID.(7,1):EAX",
            Word::LeafDs1Eax => "CPUID.(0xD,1):EAX",
            Word::Ext1Ecx => "CPUID.0x80000001:ECX",
            Word::Ext1Edx => "CPUID.0x80000001:EDX",
        }
    }
}

/// The recorded bits: (word, bit, name as in /proc/cpuinfo where it has one).
pub const FEATURES: &[(Word, u8, &str)] = &[
    (Word::Leaf1Edx, 0, "fpu"),
    (Word::Leaf1Edx, 4, "tsc"),
    (Word::Leaf1Edx, 8, "cx8"),
    (Word::Leaf1Edx, 15, "cmov"),
    (Word::Leaf1Edx, 19, "clflush"),
    (Word::Leaf1Edx, 23, "mmx"),
    (Word::Leaf1Edx, 24, "fxsr"),
    (Word::Leaf1Edx, 25, "sse"),
    (Word::Leaf1Edx, 26, "sse2"),
    (Word::Leaf1Ecx, 0, "sse3"),
    (Word::Leaf1Ecx, 1, "pclmulqdq"),
    (Word::Leaf1Ecx, 9, "ssse3"),
    (Word::Leaf1Ecx, 12, "fma"),
    (Word::Leaf1Ecx, 13, "cx16"),
    (Word::Leaf1Ecx, 19, "sse4_1"),
    (Word::Leaf1Ecx, 20, "sse4_2"),
    (Word::Leaf1Ecx, 22, "movbe"),
    (Word::Leaf1Ecx, 23, "popcnt"),
    (Word::Leaf1Ecx, 25, "aes"),
    (Word::Leaf1Ecx, 26, "xsave"),
    (Word::Leaf1Ecx, 28, "avx"),
    (Word::Leaf1Ecx, 29, "f16c"),
    (Word::Leaf1Ecx, 30, "rdrand"),
    (Word::Leaf7Ebx, 0, "fsgsbase"),
    (Word::Leaf7Ebx, 3, "bmi1"),
    (Word::Leaf7Ebx, 5, "avx2"),
    (Word::Leaf7Ebx, 8, "bmi2"),
    (Word::Leaf7Ebx, 11, "rtm"),
    (Word::Leaf7Ebx, 16, "avx512f"),
    (Word::Leaf7Ebx, 17, "avx512dq"),
    (Word::Leaf7Ebx, 18, "rdseed"),
    (Word::Leaf7Ebx, 19, "adx"),
    (Word::Leaf7Ebx, 21, "avx512ifma"),
    (Word::Leaf7Ebx, 23, "clflushopt"),
    (Word::Leaf7Ebx, 24, "clwb"),
    (Word::Leaf7Ebx, 26, "avx512pf"),
    (Word::Leaf7Ebx, 27, "avx512er"),
    (Word::Leaf7Ebx, 28, "avx512cd"),
    (Word::Leaf7Ebx, 29, "sha_ni"),
    (Word::Leaf7Ebx, 30, "avx512bw"),
    (Word::Leaf7Ebx, 31, "avx512vl"),
    (Word::Leaf7Ecx, 1, "avx512vbmi"),
    (Word::Leaf7Ecx, 3, "pku"),
    (Word::Leaf7Ecx, 5, "waitpkg"),
    (Word::Leaf7Ecx, 6, "avx512_vbmi2"),
    (Word::Leaf7Ecx, 8, "gfni"),
    (Word::Leaf7Ecx, 9, "vaes"),
    (Word::Leaf7Ecx, 10, "vpclmulqdq"),
    (Word::Leaf7Ecx, 11, "avx512_vnni"),
    (Word::Leaf7Ecx, 12, "avx512_bitalg"),
    (Word::Leaf7Ecx, 14, "avx512_vpopcntdq"),
    (Word::Leaf7Ecx, 22, "rdpid"),
    (Word::Leaf7Ecx, 27, "movdiri"),
    (Word::Leaf7Ecx, 28, "movdir64b"),
    (Word::Leaf7Ecx, 29, "enqcmd"),
    (Word::Leaf7Edx, 2, "avx512_4vnniw"),
    (Word::Leaf7Edx, 3, "avx512_4fmaps"),
    (Word::Leaf7Edx, 8, "avx512_vp2intersect"),
    (Word::Leaf7Edx, 14, "serialize"),
    (Word::Leaf7Edx, 16, "tsxldtrk"),
    (Word::Leaf7Edx, 22, "amx_bf16"),
    (Word::Leaf7Edx, 23, "avx512_fp16"),
    (Word::Leaf7Edx, 24, "amx_tile"),
    (Word::Leaf7Edx, 25, "amx_int8"),
    (Word::Leaf7s1Eax, 0, "sha512"),
    (Word::Leaf7s1Eax, 1, "sm3"),
    (Word::Leaf7s1Eax, 2, "sm4"),
    (Word::Leaf7s1Eax, 3, "rao_int"),
    (Word::Leaf7s1Eax, 4, "avx_vnni"),
    (Word::Leaf7s1Eax, 5, "avx512_bf16"),
    (Word::Leaf7s1Eax, 7, "cmpccxadd"),
    (Word::Leaf7s1Eax, 21, "amx_fp16"),
    (Word::Leaf7s1Eax, 23, "avx_ifma"),
    (Word::LeafDs1Eax, 0, "xsaveopt"),
    (Word::LeafDs1Eax, 1, "xsavec"),
    (Word::LeafDs1Eax, 2, "xgetbv1"),
    (Word::Ext1Ecx, 0, "lahf_lm"),
    (Word::Ext1Ecx, 5, "abm"),
    (Word::Ext1Ecx, 6, "sse4a"),
    (Word::Ext1Ecx, 11, "xop"),
    (Word::Ext1Ecx, 16, "fma4"),
    (Word::Ext1Ecx, 21, "tbm"),
    (Word::Ext1Ecx, 29, "mwaitx"),
    (Word::Ext1Edx, 27, "rdtscp"),
    (Word::Ext1Edx, 30, "3dnowext"),
    (Word::Ext1Edx, 31, "3dnow"),
];

impl CpuFeatures {
    pub fn get(&self, w: Word) -> u32 {
        match w {
            Word::Leaf1Ecx => self.leaf1_ecx,
            Word::Leaf1Edx => self.leaf1_edx,
            Word::Leaf7Ebx => self.leaf7_ebx,
            Word::Leaf7Ecx => self.leaf7_ecx,
            Word::Leaf7Edx => self.leaf7_edx,
            Word::Leaf7s1Eax => self.leaf7_1_eax,
            Word::LeafDs1Eax => self.leafd_1_eax,
            Word::Ext1Ecx => self.ext1_ecx,
            Word::Ext1Edx => self.ext1_edx,
        }
    }

    pub fn get_mut(&mut self, w: Word) -> &mut u32 {
        match w {
            Word::Leaf1Ecx => &mut self.leaf1_ecx,
            Word::Leaf1Edx => &mut self.leaf1_edx,
            Word::Leaf7Ebx => &mut self.leaf7_ebx,
            Word::Leaf7Ecx => &mut self.leaf7_ecx,
            Word::Leaf7Edx => &mut self.leaf7_edx,
            Word::Leaf7s1Eax => &mut self.leaf7_1_eax,
            Word::LeafDs1Eax => &mut self.leafd_1_eax,
            Word::Ext1Ecx => &mut self.ext1_ecx,
            Word::Ext1Edx => &mut self.ext1_edx,
        }
    }

    /// Only the bits the rule records (see the module comment).
    pub fn recorded(&self) -> CpuFeatures {
        let mut out = CpuFeatures::default();
        for &(w, bit, _) in FEATURES {
            *out.get_mut(w) |= self.get(w) & (1 << bit);
        }
        out
    }

    /// Bits set here and not in `other`, as (word, bit).
    pub fn missing_from(&self, other: &CpuFeatures) -> Vec<(Word, u8)> {
        let mut out = Vec::new();
        for w in Word::ALL {
            let missing = self.get(w) & !other.get(w);
            out.extend((0..32u8).filter(|b| missing & (1 << b) != 0).map(|b| (w, b)));
        }
        out
    }

    /// The names of the set bits, in table order (unnamed bits after).
    pub fn names(&self) -> Vec<String> {
        let all = self.missing_from(&CpuFeatures::default());
        let mut out: Vec<String> = FEATURES
            .iter()
            .filter(|(w, b, _)| all.contains(&(*w, *b)))
            .map(|(_, _, name)| (*name).to_string())
            .collect();
        out.extend(all.iter().filter(|&&(w, b)| feature_name(w, b).is_none()).map(|&(w, b)| unnamed(w, b)));
        out
    }
}

/// The name of one feature bit, if the table has it.
pub fn feature_name(w: Word, bit: u8) -> Option<&'static str> {
    FEATURES.iter().find(|(fw, fb, _)| *fw == w && *fb == bit).map(|(_, _, n)| *n)
}

/// A bit the table does not name (an image of a newer cryopod).
pub fn unnamed(w: Word, bit: u8) -> String {
    format!("{}[{bit}]", w.describe())
}

/// The name of extended-state component `index` (bit `index` of XCR0).
pub fn component_name(index: u8) -> String {
    let name = match index {
        0 => "x87",
        1 => "SSE",
        2 => "AVX",
        3 => "MPX BNDREGS",
        4 => "MPX BNDCSR",
        5 => "AVX-512 opmask",
        6 => "ZMM_Hi256",
        7 => "Hi16_ZMM",
        9 => "PKRU",
        17 => "AMX TILECFG",
        18 => "AMX TILEDATA",
        19 => "APX",
        _ => return format!("component {index}"),
    };
    name.to_string()
}

/// Names of the components whose bits are set in `mask`.
pub fn component_names(mask: u64) -> Vec<String> {
    (0..64u8).filter(|i| mask & (1 << i) != 0).map(component_name).collect()
}

impl CpuImage {
    /// The place of component `index` in this CPU's XSAVE area.
    pub fn component(&self, index: u8) -> Option<&XComponent> {
        self.components.iter().find(|c| c.index == index)
    }

    /// Bounds and consistency, so that restore code can slice XSAVE areas
    /// with these offsets. Returns a description of the first problem.
    pub fn check(&self) -> std::result::Result<(), String> {
        if self.model.len() > 256 {
            return Err("CPU model name over 256 bytes".into());
        }
        if self.xcr0 & 3 != 3 {
            return Err(format!("XCR0 {:#x} lacks x87 or SSE state", self.xcr0));
        }
        let min = XSAVE_LEGACY + XSAVE_HEADER;
        if self.xsave_size < min || self.xsave_size > XSAVE_MAX {
            return Err(format!("XSAVE area of {} bytes (not {min}..={XSAVE_MAX})", self.xsave_size));
        }
        let mut listed = 0u64;
        let mut prev: Option<u8> = None;
        for c in &self.components {
            if c.index < 2 || c.index > 63 || prev.is_some_and(|p| p >= c.index) {
                return Err(format!("XSAVE component {} out of order or range", c.index));
            }
            prev = Some(c.index);
            listed |= 1 << c.index;
            let end = c.offset.checked_add(c.size);
            if c.offset < min || c.size == 0 || end.is_none_or(|e| e > self.xsave_size) {
                return Err(format!("XSAVE component {} at {}+{} outside the area", c.index, c.offset, c.size));
            }
        }
        if listed != self.xcr0 & !3 {
            return Err(format!("XSAVE components {listed:#x} do not match XCR0 {:#x}", self.xcr0));
        }
        Ok(())
    }
}
