//! The image format as untrusted input: round trips, truncation, corruption,
//! hostile lengths and random mutations never panic and always give a clear
//! error.

use cryopod_image::*;

/// A CPU with AVX-512 (the layout of the Intel hosts of this machine kind).
fn cpu() -> CpuImage {
    let c = |index, offset, size| XComponent { index, offset, size };
    CpuImage {
        model: "GenuineIntel Intel(R) Xeon(R) Processor".into(),
        xcr0: 0xe7,
        xsave_size: 2688,
        components: vec![c(2, 576, 256), c(5, 1088, 64), c(6, 1152, 512), c(7, 1664, 1024)],
        features: CpuFeatures { leaf1_ecx: 1 << 28, leaf7_ebx: 1 << 16, ..Default::default() },
    }
}

/// An XSAVE area for `cpu()`: AVX and ZMM_Hi256 in use.
fn xstate() -> Vec<u8> {
    let mut x = vec![1u8; 2688];
    x[512..576].fill(0);
    x[512] = 0x47;
    x
}

fn sample() -> Manifest {
    let thread = Thread {
        tid: 100,
        regs: vec![7; NREGS],
        xstate: xstate(),
        sigmask: 0,
        comm: "t".into(),
        clear_child_tid: 0,
        robust_list: (0, 24),
        rseq: None,
        sigaltstack: (0, 2, 0),
        pending: vec![],
        affinity: vec![3],
        seccomp: vec![],
    };
    let vma = Vma {
        start: 0x10000,
        end: 0x30000,
        prot: 3,
        shared: false,
        kind: VmaKind::Anon,
        name: String::new(),
        madv: 0,
        runs: vec![Run { addr: 0x10000, pages: 16, chunk: Some(0) }, Run { addr: 0x20000, pages: 2, chunk: None }],
    };
    Manifest {
        tool_version: "0".into(),
        created_unix: 1,
        kernel: "k".into(),
        cpu: cpu(),
        vdso_hash: [0; 32],
        root_pid: 100,
        processes: vec![Process {
            pid: 100,
            ppid: 1,
            pgid: 100,
            sid: 100,
            threads: vec![thread],
            vmas: vec![vma],
            mm: MmInfo::default(),
            fds: vec![Fd { fd: 0, file: 0, cloexec: false }],
            sigactions: vec![SigAction::default(); 64],
            shared_pending: vec![],
            creds: Creds::default(),
            cwd: "/".into(),
            root: "/".into(),
            umask: 0o22,
            personality: 0,
            rlimits: vec![],
            itimers: vec![],
            posix_timers: vec![],
            zombie_status: None,
            stopped: false,
        }],
        files: vec![OpenFile { flags: 0, pos: 0, kind: FileKind::CharDev { path: "/dev/null".into(), rdev: 0x103 } }],
        objects: vec![],
        packs: vec![Pack { name: "pages-0.pack".into(), size: 65536 }],
        chunks: vec![Chunk { hash: [9; 32], pack: 0, offset: 0, len: 65536 }],
        pod: Some(cryopod_image::PodImage {
            name: "web".into(),
            hostname: "box".into(),
            ip: Some((0x0a4d_0002, 24)),
            memory: Some(1 << 28),
            cpus: Some(0.5),
            links: vec![cryopod_image::pod::PodLink {
                name: "lo".into(),
                up: true,
                mtu: 65536,
                addrs: vec![],
                mac: vec![0; 6],
            }],
            mounts: vec![cryopod_image::pod::PodMount {
                target: "/mnt".into(),
                source: "none".into(),
                kind: cryopod_image::pod::PodMountKind::Tmpfs { index: 0 },
                flags: 0,
                data: "size=1m".into(),
            }],
            ..Default::default()
        }),
    }
}

#[test]
fn round_trip() {
    let m = sample();
    let bytes = encode_manifest(&m).unwrap();
    assert_eq!(decode_manifest(&bytes).unwrap(), m);
}

#[test]
fn every_truncation_is_an_error() {
    let bytes = encode_manifest(&sample()).unwrap();
    for n in 0..bytes.len() {
        let e = decode_manifest(&bytes[..n]).unwrap_err();
        let msg = e.to_string();
        assert!(!msg.is_empty());
    }
}

#[test]
fn wrong_magic_and_version() {
    let mut bytes = encode_manifest(&sample()).unwrap();
    bytes[0] = b'X';
    assert!(matches!(decode_manifest(&bytes), Err(ImageError::NotAnImage(_))));
    let mut bytes = encode_manifest(&sample()).unwrap();
    bytes[8] = 99;
    assert!(matches!(decode_manifest(&bytes), Err(ImageError::Version { found: 99, .. })));
}

#[test]
fn flipped_body_byte_fails_checksum() {
    let bytes = encode_manifest(&sample()).unwrap();
    for i in (56..bytes.len()).step_by(7) {
        let mut b = bytes.clone();
        b[i] ^= 0x40;
        let e = decode_manifest(&b).unwrap_err().to_string();
        assert!(e.contains("checksum"), "byte {i}: {e}");
    }
}

/// Re-encode with a valid checksum, so that structural checks are reached.
fn reseal(body: &[u8]) -> Vec<u8> {
    cryopod_image::seal(body)
}

#[test]
fn hostile_lengths_do_not_allocate() {
    // A body that claims a vector of 2^60 elements right away.
    let mut body = Vec::new();
    body.extend_from_slice(&(1u64 << 60).to_le_bytes());
    body.extend_from_slice(&[0u8; 64]);
    let e = decode_manifest(&reseal(&body)).unwrap_err();
    assert!(matches!(e, ImageError::Corrupt(_)), "{e}");
    // A header claiming a body larger than the limit.
    let mut b = encode_manifest(&sample()).unwrap();
    b[16..24].copy_from_slice(&u64::MAX.to_le_bytes());
    assert!(decode_manifest(&b).unwrap_err().to_string().contains("limit"));
}

#[test]
fn structural_errors_are_caught() {
    type Damage = Box<dyn Fn(&mut Manifest)>;
    let cases: Vec<(&str, Damage)> = vec![
        ("chunk beyond pack", Box::new(|m| m.chunks[0].offset = 4096)),
        ("missing pack", Box::new(|m| m.chunks[0].pack = 3)),
        ("run beyond area", Box::new(|m| m.processes[0].vmas[0].runs[1].pages = 100)),
        ("dangling chunk", Box::new(|m| m.processes[0].vmas[0].runs[0].chunk = Some(5))),
        ("bad fd file", Box::new(|m| m.processes[0].fds[0].file = 9)),
        ("no root", Box::new(|m| m.root_pid = 5)),
        ("pack path", Box::new(|m| m.packs[0].name = "../x".into())),
        ("register count", Box::new(|m| m.processes[0].threads[0].regs.pop().map(|_| ()).unwrap_or(()))),
        ("unaligned area", Box::new(|m| m.processes[0].vmas[0].start = 0x10001)),
        ("xstate size", Box::new(|m| m.processes[0].threads[0].xstate.truncate(832))),
        ("xstate component not in XCR0", Box::new(|m| m.processes[0].threads[0].xstate[513] = 1)),
        ("compacted xstate", Box::new(|m| m.processes[0].threads[0].xstate[527] = 0x80)),
        ("component beyond the area", Box::new(|m| m.cpu.components[3].size = 1025)),
        ("component in the header", Box::new(|m| m.cpu.components[0].offset = 520)),
        ("components out of order", Box::new(|m| m.cpu.components.swap(0, 1))),
        ("component not in XCR0", Box::new(|m| m.cpu.xcr0 = 0x67)),
        ("huge XSAVE area", Box::new(|m| m.cpu.xsave_size = 1 << 20)),
        ("no SSE state", Box::new(|m| m.cpu.xcr0 = 0xe5)),
    ];
    for (what, f) in cases {
        let mut m = sample();
        f(&mut m);
        let e = m.validate().unwrap_err();
        assert!(matches!(e, ImageError::Corrupt(_)), "{what}: {e}");
        // And through the full decoder.
        let body = bincode_body(&m);
        assert!(decode_manifest(&reseal(&body)).is_err(), "{what}");
    }
}

fn bincode_body(m: &Manifest) -> Vec<u8> {
    encode_manifest(m).unwrap()[56..].to_vec()
}

#[test]
fn random_mutations_never_panic() {
    let body = bincode_body(&sample());
    let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
    let mut next = || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    };
    for _ in 0..20_000 {
        let mut b = body.clone();
        for _ in 0..(next() % 8 + 1) {
            let i = (next() as usize) % b.len();
            b[i] = next() as u8;
        }
        if next() % 4 == 0 {
            let n = (next() as usize) % b.len();
            b.truncate(n);
        }
        let _ = decode_manifest(&reseal(&b));
    }
}

#[test]
fn cpu_features_are_named_and_only_instruction_sets_recorded() {
    // avx and OSXSAVE, hypervisor; avx512f and ERMS; AMD's copy of fpu and rdtscp.
    let raw = CpuFeatures {
        leaf1_ecx: (1 << 28) | (1 << 27) | (1 << 31),
        leaf7_ebx: (1 << 16) | (1 << 9),
        ext1_edx: 1 | (1 << 27),
        ..Default::default()
    };
    let rec = raw.recorded();
    assert_eq!(rec, CpuFeatures { leaf1_ecx: 1 << 28, leaf7_ebx: 1 << 16, ext1_edx: 1 << 27, ..Default::default() });
    assert_eq!(rec.names(), ["avx", "avx512f", "rdtscp"]);
    assert_eq!(
        raw.names()[3..],
        ["CPUID.1:ECX[27]", "CPUID.1:ECX[31]", "CPUID.(7,0):EBX[9]", "CPUID.0x80000001:EDX[0]"]
    );
    assert_eq!(cpu::component_names(0xe4), ["AVX", "AVX-512 opmask", "ZMM_Hi256", "Hi16_ZMM"]);
    assert_eq!(cpu::component_name(40), "component 40");
}
