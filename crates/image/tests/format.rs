//! The image format as untrusted input: round trips, truncation, corruption,
//! hostile lengths and random mutations never panic and always give a clear
//! error; an image directory is opened safely (no FIFO, device, link or
//! file others may write; reads bounded; the owner decided by directory and
//! manifest); every damaged chunk is found. Run as root (chown).

use cryopod_image::stream;
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
        attrs: Default::default(),
    };
    let vma = Vma {
        start: 0x10000,
        end: 0x30000,
        prot: 3,
        shared: false,
        kind: VmaKind::Anon,
        name: String::new(),
        madv: 0,
        policy: None,
        runs: vec![
            Run { addr: 0x10000, pages: 16, chunk: Some(0), from: 0 },
            Run { addr: 0x20000, pages: 2, chunk: None, from: 0 },
        ],
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
            locks: vec![],
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
            attrs: Default::default(),
            ctty: None,
            cgroups: Vec::new(),
            carried: Vec::new(),
        }],
        files: vec![OpenFile { flags: 0, pos: 0, kind: FileKind::CharDev { path: "/dev/null".into(), rdev: 0x103 } }],
        objects: vec![],
        packs: vec![Pack { name: "pages-0.pack".into(), size: 65536, home: PackHome::Own }],
        chunks: vec![Chunk { hash: [9; 32], pack: 0, offset: 0, len: 65536, codec: Codec::Raw, stored: 65536 }],
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
        parent: None,
        store: None,
        cgroups: Vec::new(),
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

fn cg(controller: &str, path: &str) -> CgroupDir {
    CgroupDir { controller: controller.into(), path: path.into(), settings: vec![] }
}

fn pty_file(kind: FileKind) -> OpenFile {
    OpenFile { flags: 2, pos: 0, kind }
}

/// A unix socket with one queued message carrying `fds` (files of the
/// image), sent with `creds` (if any).
fn queued(fds: Vec<Vec<u32>>, creds: Vec<(i32, u32, u32)>) -> OpenFile {
    let u =
        UnixSock { kind: 1, queued: vec![b"m".to_vec()], queued_fds: fds, queued_creds: creds, ..Default::default() };
    OpenFile { flags: 2, pos: 0, kind: FileKind::Unix(u) }
}

fn pty_master(index: u32, unread: usize) -> OpenFile {
    let tty = PtyState {
        termios: TermiosRec::default(),
        winsize: [24, 80, 0, 0],
        packet: false,
        locked: false,
        exclusive: false,
        unread: vec![b'x'; unread],
    };
    pty_file(FileKind::PtyMaster { index, tty: Box::new(tty) })
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
        ("terminal end of no pair", Box::new(|m| m.files.push(pty_file(FileKind::PtySlave { index: 3 })))),
        ("two masters of a pair", Box::new(|m| m.files.extend([pty_master(2, 0), pty_master(2, 0)]))),
        ("too much unread", Box::new(|m| m.files.push(pty_master(2, PTY_UNREAD_MAX + 1)))),
        ("controlling terminal of no pair", Box::new(|m| m.processes[0].ctty = Some(Ctty { index: 1, foreground: 1 }))),
        ("cgroup of another controller", Box::new(|m| m.cgroups.push(cg("devices", "a")))),
        ("cgroup path climbing out", Box::new(|m| m.cgroups.push(cg("memory", "../a")))),
        ("cgroup before its parent", Box::new(|m| m.cgroups.push(cg("memory", "a/b")))),
        (
            "cgroup setting of another controller",
            Box::new(|m| {
                let mut c = cg("memory", "a");
                c.settings.push(("pids.max".into(), "3".into()));
                m.cgroups.push(c);
            }),
        ),
        ("process in a cgroup not listed", Box::new(|m| m.processes[0].cgroups.push(("pids".into(), "x".into())))),
        (
            "files of queued messages, not one list per message",
            Box::new(|m| m.files.push(queued(vec![vec![], vec![]], vec![]))),
        ),
        ("a queued message carrying no file of the image", Box::new(|m| m.files.push(queued(vec![vec![99]], vec![])))),
        ("a queued message carrying too many files", Box::new(|m| m.files.push(queued(vec![vec![0; 254]], vec![])))),
        ("a queued message from no process", Box::new(|m| m.files.push(queued(vec![], vec![(4242, 0, 0)])))),
        ("a carried number among no fds", Box::new(|m| m.processes[0].carried.push(77))),
        (
            "a BPF map entry of the wrong size",
            Box::new(|m| {
                let b = BpfMapRec {
                    map_type: 1,
                    key_size: 4,
                    value_size: 8,
                    max_entries: 4,
                    entries: vec![(vec![0; 4], vec![0; 7])],
                    ..Default::default()
                };
                m.files.push(OpenFile { flags: 2, pos: 0, kind: FileKind::BpfMap(Box::new(b)) })
            }),
        ),
        (
            "a BPF map of a kind not carried",
            Box::new(|m| {
                let b = BpfMapRec { map_type: 3, key_size: 4, value_size: 4, max_entries: 4, ..Default::default() };
                m.files.push(OpenFile { flags: 2, pos: 0, kind: FileKind::BpfMap(Box::new(b)) })
            }),
        ),
        (
            "a netlink socket of a bad type",
            Box::new(|m| {
                m.files.push(OpenFile {
                    flags: 2,
                    pos: 0,
                    kind: FileKind::Netlink(NetlinkSock { kind: 1, ..Default::default() }),
                })
            }),
        ),
        (
            "a netlink flag not kept",
            Box::new(|m| {
                let n = NetlinkSock { kind: 3, flags: vec![1], ..Default::default() };
                m.files.push(OpenFile { flags: 2, pos: 0, kind: FileKind::Netlink(n) })
            }),
        ),
        (
            "an outside peer with a relative name",
            Box::new(|m| {
                let mut f = queued(vec![], vec![]);
                if let FileKind::Unix(u) = &mut f.kind {
                    u.external = b"dev/log".to_vec();
                }
                m.files.push(f);
            }),
        ),
        (
            "controlling terminal of a process that leads no session",
            Box::new(|m| {
                m.files.push(pty_master(1, 0));
                m.processes[0].sid = 77;
                m.processes[0].ctty = Some(Ctty { index: 1, foreground: 1 });
            }),
        ),
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

/// A scratch directory for one test (removed when dropped).
struct Scratch(std::path::PathBuf);

impl Scratch {
    fn new(name: &str) -> Scratch {
        let d = std::path::PathBuf::from(format!("/tmp/cryopod-image-test-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir(&d).unwrap();
        std::fs::set_permissions(&d, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
        Scratch(d)
    }
    /// An image: the sample manifest and its pack (chunk hash made right).
    fn image(name: &str) -> Scratch {
        let s = Scratch::new(name);
        let mut m = sample();
        m.chunks[0].hash = *blake3::hash(&[5u8; 65536]).as_bytes();
        s.write("pages-0.pack", &[5u8; 65536]);
        s.write("manifest", &encode_manifest(&m).unwrap());
        s
    }
    fn path(&self, f: &str) -> std::path::PathBuf {
        self.0.join(f)
    }
    fn write(&self, f: &str, data: &[u8]) {
        std::fs::write(self.path(f), data).unwrap();
        std::fs::set_permissions(self.path(f), std::os::unix::fs::PermissionsExt::from_mode(0o644)).unwrap();
    }
    /// Put something else (made by `make`) where file `f` is.
    fn replace_with(&self, f: &str, make: impl FnOnce(&std::path::Path)) {
        let _ = std::fs::remove_file(self.path(f));
        let _ = std::fs::remove_dir(self.path(f));
        make(&self.path(f));
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn mkfifo(p: &std::path::Path) {
    rustix::fs::mkfifoat(rustix::fs::CWD, p, rustix::fs::Mode::from_raw_mode(0o644)).unwrap();
}

fn mkchr_zero(p: &std::path::Path) {
    let dev = rustix::fs::makedev(1, 5);
    rustix::fs::mknodat(
        rustix::fs::CWD,
        p,
        rustix::fs::FileType::CharacterDevice,
        rustix::fs::Mode::from_raw_mode(0o644),
        dev,
    )
    .unwrap();
}

fn chown(p: &std::path::Path, uid: u32) {
    std::os::unix::fs::chown(p, Some(uid), Some(uid)).unwrap();
}

#[test]
fn image_dir_reads_a_good_image_once() {
    let s = Scratch::image("good");
    let img = ImageDir::open(&s.0).unwrap();
    assert_eq!(img.owner(), ImageOwner::Root);
    // Changed after open: what was read at open is what is parsed.
    s.write("manifest", b"garbage");
    let m = img.manifest().unwrap();
    let reader = img.packs(&m).unwrap();
    reader.verify_all(&m, 1).unwrap();
    assert!(reader.damage(&m, 1).is_empty());
}

#[test]
fn image_dir_refuses_what_is_not_a_regular_file() {
    let s = Scratch::image("kinds");
    let good = std::fs::read(s.path("manifest")).unwrap();
    type Make = fn(&std::path::Path);
    let kinds: [(&str, Make); 4] = [
        ("a FIFO", mkfifo),
        ("a character device", mkchr_zero),
        ("a symbolic link", |p| std::os::unix::fs::symlink("/dev/zero", p).unwrap()),
        ("a directory", |p| std::fs::create_dir(p).unwrap()),
    ];
    for (what, make) in kinds {
        // As the manifest: refused at open, at once (a FIFO would block a
        // plain open, /dev/zero would be read forever).
        s.replace_with("manifest", make);
        let t = std::time::Instant::now();
        let e = ImageDir::open(&s.0).unwrap_err().to_string();
        assert!(e.contains(what) && e.contains("not a regular file"), "manifest {what}: {e}");
        assert!(t.elapsed().as_secs() < 2, "manifest {what}: took {:?}", t.elapsed());
        s.replace_with("manifest", |_| {});
        s.write("manifest", &good);
        // As a pack: refused when the packs are opened.
        let img = ImageDir::open(&s.0).unwrap();
        let m = img.manifest().unwrap();
        s.replace_with("pages-0.pack", make);
        let e = img.packs(&m).err().expect("a pack that is not a file must be refused").to_string();
        assert!(e.contains(what), "pack {what}: {e}");
        s.replace_with("pages-0.pack", |_| {});
        s.write("pages-0.pack", &[5u8; 65536]);
    }
}

#[test]
fn image_dir_bounds_what_it_reads() {
    let s = Scratch::image("bounds");
    // A manifest far over the limit (sparse): refused before reading.
    let f = std::fs::OpenOptions::new().write(true).open(s.path("manifest")).unwrap();
    f.set_len(1 << 40).unwrap();
    let e = ImageDir::open(&s.0).unwrap_err().to_string();
    assert!(e.contains("limit"), "{e}");
    // A file read no further than its size at open, even if it grows.
    let s = Scratch::image("bounds2");
    let img = ImageDir::open(&s.0).unwrap();
    let f = img.open_file("pages-0.pack").unwrap();
    std::fs::OpenOptions::new().append(true).open(s.path("pages-0.pack")).unwrap().write_all(&[1; 4096]).unwrap();
    assert_eq!(f.read_all(1 << 20).unwrap().len(), 65536);
    assert!(f.read_all(1000).unwrap_err().to_string().contains("limit"));
    // Names that are not plain are refused.
    for bad in ["../manifest", ".cryopod-incomplete", "", "a/b"] {
        assert!(img.open_file(bad).is_err(), "{bad:?}");
    }
}

use std::io::Write;

#[test]
fn image_dir_says_missing_and_interrupted() {
    let e = ImageDir::open(std::path::Path::new("/nonexistent/cryopod-image")).unwrap_err();
    assert!(matches!(e, ImageError::Missing(_)) && e.to_string().contains("missing"), "{e}");
    let s = Scratch::new("interrupted");
    s.write(".cryopod-incomplete", b"pages-0.pack\n");
    let e = ImageDir::open(&s.0).unwrap_err().to_string();
    assert!(e.contains("interrupted checkpoint"), "{e}");
    let s = Scratch::new("foreign");
    let e = ImageDir::open(&s.0).unwrap_err().to_string();
    assert!(e.contains("has no manifest"), "{e}");
}

#[test]
fn image_owner_is_decided_by_directory_and_manifest() {
    // Root's directory, a user's manifest: the user's image.
    let s = Scratch::image("owner-manifest");
    chown(&s.path("manifest"), 65534);
    assert_eq!(ImageDir::open(&s.0).unwrap().owner(), ImageOwner::User { uid: 65534, gid: 65534 });
    // A user's directory with root's files: the user's image too (the
    // user could have put any of root's files there).
    let s = Scratch::image("owner-dir");
    chown(&s.0, 65534);
    let img = ImageDir::open(&s.0).unwrap();
    assert_eq!(img.owner(), ImageOwner::User { uid: 65534, gid: 65534 });
    // Root's pack in a user's image is fine.
    let m = img.manifest().unwrap();
    assert!(img.packs(&m).is_ok());
    // Two users: refused.
    chown(&s.path("manifest"), 1000);
    let e = ImageDir::open(&s.0).unwrap_err().to_string();
    assert!(e.contains("uid 65534") && e.contains("uid 1000") && e.contains("one owner"), "{e}");
    // Root's image with a user's pack: refused, it never becomes the user's
    // after the trust decision.
    let s = Scratch::image("owner-pack");
    let img = ImageDir::open(&s.0).unwrap();
    let m = img.manifest().unwrap();
    chown(&s.path("pages-0.pack"), 65534);
    let e = img.packs(&m).err().expect("a user's pack in root's image").to_string();
    assert!(e.contains("owned by uid 65534") && e.contains("belongs to root"), "{e}");
}

#[test]
fn images_others_may_write_are_refused() {
    use std::os::unix::fs::PermissionsExt;
    let s = Scratch::image("writable");
    std::fs::set_permissions(s.path("manifest"), PermissionsExt::from_mode(0o664)).unwrap();
    let e = ImageDir::open(&s.0).unwrap_err().to_string();
    assert!(e.contains("group or others may write"), "{e}");
    std::fs::set_permissions(s.path("manifest"), PermissionsExt::from_mode(0o644)).unwrap();
    std::fs::set_permissions(&s.0, PermissionsExt::from_mode(0o777)).unwrap();
    assert!(ImageDir::open(&s.0).unwrap_err().to_string().contains("group or others may write"));
    // A sticky directory: others cannot replace what is not theirs.
    std::fs::set_permissions(&s.0, PermissionsExt::from_mode(0o1777)).unwrap();
    let img = ImageDir::open(&s.0).unwrap();
    std::fs::set_permissions(s.path("pages-0.pack"), PermissionsExt::from_mode(0o646)).unwrap();
    let m = img.manifest().unwrap();
    assert!(img.packs(&m).err().unwrap().to_string().contains("group or others may write"));
}

#[test]
fn every_damaged_chunk_is_listed() {
    let s = Scratch::new("damage");
    let mut m = sample();
    let pages: Vec<Vec<u8>> = (0..4u8).map(|i| vec![i; 65536]).collect();
    m.packs[0].size = 4 * 65536;
    m.chunks = (0..4)
        .map(|i| Chunk {
            hash: *blake3::hash(&pages[i]).as_bytes(),
            pack: 0,
            offset: i as u64 * 65536,
            len: 65536,
            codec: Codec::Raw,
            stored: 65536,
        })
        .collect();
    let mut pack = pages.concat();
    pack[65536 + 7] ^= 1;
    pack[3 * 65536] ^= 1;
    s.write("pages-0.pack", &pack);
    s.write("manifest", &encode_manifest(&m).unwrap());
    let img = ImageDir::open(&s.0).unwrap();
    let reader = img.packs(&m).unwrap();
    let d = reader.damage(&m, 2);
    assert_eq!(d.iter().map(|d| d.chunk).collect::<Vec<_>>(), vec![1, 3]);
    assert!(d[0].problem.contains("checksum") && d[0].pack.ends_with("pages-0.pack") && d[0].offset == 65536);
    let e = reader.verify_all(&m, 1).unwrap_err().to_string();
    assert!(e.contains("page chunk 1") && e.contains("checksum"), "{e}");
}

/// Text-like page data: compresses well.
fn text_pages(n: usize) -> Vec<u8> {
    let words = ["checkpoint", "restore", "pod", "memory", "page", "chunk", "migrate", "the", "of", "a"];
    let mut out = Vec::new();
    let mut x = 7u64;
    while out.len() < n {
        x = x.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        out.extend_from_slice(words[(x >> 60) as usize % words.len()].as_bytes());
        out.push(b' ');
    }
    out.truncate(n);
    out
}

fn noise(n: usize, seed: u64) -> Vec<u8> {
    let mut x = seed | 1;
    (0..n)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

#[test]
fn chunks_compress_only_where_it_pays() {
    let text = text_pages(65536);
    let mut enc = codec::Encoder::new(Compression::Zstd(1)).unwrap();
    let (c, stored) = enc.encode(&text);
    assert_eq!(c, Codec::Zstd);
    assert!(stored.len() < text.len() / 2, "{} bytes", stored.len());
    let stored = stored.to_vec();
    let chunk = Chunk {
        hash: *blake3::hash(&text).as_bytes(),
        pack: 0,
        offset: 0,
        len: 65536,
        codec: Codec::Zstd,
        stored: stored.len() as u32,
    };
    let mut back = vec![0u8; 65536];
    codec::decode(&chunk, &stored, &mut back).unwrap();
    assert_eq!(back, text);
    // The same through a kept context, twice; and a bad frame through it.
    let mut dec = codec::Decoder::new().unwrap();
    for _ in 0..2 {
        back.fill(0);
        dec.decode(&chunk, &stored, &mut back).unwrap();
        assert_eq!(back, text);
    }
    assert!(dec.decode(&chunk, &noise(stored.len(), 5), &mut back).is_err());
    // A single page is stored raw, and is no miss: the next chunk is tried.
    assert_eq!(enc.encode(&text[..4096]).0, Codec::Raw);
    assert_eq!(enc.encode(&text).0, Codec::Zstd);
    // Noise is stored raw, and so is whatever follows for a while (no try).
    let random = noise(65536, 3);
    assert_eq!(enc.encode(&random).0, Codec::Raw);
    assert_eq!(enc.encode(&text).0, Codec::Raw);
    // No compression asked: raw.
    let mut none = codec::Encoder::new(Compression::None).unwrap();
    assert_eq!(none.encode(&text).0, Codec::Raw);
    // Untrusted frames: garbage, a truncated frame, a frame that decodes to
    // more or less than the chunk, all refused.
    let mut out = vec![0u8; 65536];
    assert!(codec::decode(&chunk, &noise(stored.len(), 9), &mut out).is_err());
    let short = Chunk { stored: stored.len() as u32 - 5, ..chunk.clone() };
    assert!(codec::decode(&short, &stored[..stored.len() - 5], &mut out).is_err());
    let smaller = Chunk { len: 4096, ..chunk.clone() };
    assert!(codec::decode(&smaller, &stored, &mut out[..4096]).is_err());
    let half = enc_frame(&text[..32768]);
    let bigger = Chunk { stored: half.len() as u32, ..chunk.clone() };
    assert!(codec::decode(&bigger, &half, &mut out).is_err());
    assert_eq!("none".parse::<Compression>(), Ok(Compression::None));
    assert_eq!("3".parse::<Compression>(), Ok(Compression::Zstd(3)));
    assert!("0".parse::<Compression>().is_err() && "fast".parse::<Compression>().is_err());
}

fn enc_frame(data: &[u8]) -> Vec<u8> {
    let mut e = codec::Encoder::new(Compression::Zstd(1)).unwrap();
    let (c, s) = e.encode(data);
    assert_eq!(c, Codec::Zstd);
    s.to_vec()
}

#[test]
fn a_damaged_compressed_chunk_is_found() {
    let s = Scratch::new("damage-zstd");
    let mut m = sample();
    let pages: Vec<Vec<u8>> = (0..3).map(|i| text_pages(65536 + i * 4096)[i * 4096..].to_vec()).collect();
    let frames: Vec<Vec<u8>> = pages.iter().map(|p| enc_frame(p)).collect();
    let mut off = 0u64;
    m.chunks = (0..3)
        .map(|i| {
            let c = Chunk {
                hash: *blake3::hash(&pages[i]).as_bytes(),
                pack: 0,
                offset: off,
                len: 65536,
                codec: Codec::Zstd,
                stored: frames[i].len() as u32,
            };
            off += frames[i].len() as u64;
            c
        })
        .collect();
    m.packs[0].size = off;
    let mut pack = frames.concat();
    s.write("pages-0.pack", &pack);
    s.write("manifest", &encode_manifest(&m).unwrap());
    let img = ImageDir::open(&s.0).unwrap();
    let reader = img.packs(&m).unwrap();
    reader.verify_all(&m, 1).unwrap();
    let mut out = vec![0u8; 65536];
    reader.read_chunk(&m.chunks[1], &mut out).unwrap();
    assert_eq!(out, pages[1]);
    // One flipped byte inside the second frame.
    pack[frames[0].len() + frames[1].len() / 2] ^= 0x20;
    s.write("pages-0.pack", &pack);
    let img = ImageDir::open(&s.0).unwrap();
    let reader = img.packs(&m).unwrap();
    let d = reader.damage(&m, 1);
    assert_eq!(d.iter().map(|d| d.chunk).collect::<Vec<_>>(), vec![1], "{d:?}");
    // A record that says raw for a frame, or stores more than it holds.
    let mut lying = m.clone();
    lying.chunks[0].codec = Codec::Raw;
    assert!(lying.validate().is_err());
    let mut lying = m.clone();
    lying.chunks[0].stored = 65536;
    assert!(lying.validate().is_err());
}

/// Import `stream` into a fresh directory (files made as `create` would);
/// returns the manifest or the error's text.
fn import_into(stream: &[u8], name: &str) -> (Scratch, std::result::Result<Manifest, String>) {
    let out = Scratch::new(name);
    let dir = out.0.clone();
    let mut create = |n: &str| -> cryopod_image::Result<Box<dyn stream::Sink>> {
        let f = std::fs::OpenOptions::new().write(true).create_new(true).open(dir.join(n)).unwrap();
        Ok(Box::new(f))
    };
    let r = stream::import(&mut &stream[..], &mut create).map_err(|e| e.to_string());
    (out, r.map(|i| i.manifest.expect("a plain image")))
}

#[test]
fn an_image_goes_through_a_stream_and_back() {
    let s = Scratch::image("stream-src");
    s.write("pod.log", b"count 1\ncount 2\n");
    // A pod's SysV segment: its contents are a file of the image too.
    let mut m = ImageDir::open(&s.0).unwrap().manifest().unwrap();
    let seg = b"segment!";
    m.pod.as_mut().unwrap().ipc.shm.push(pod::ShmSegment {
        key: 7,
        id: 7,
        perm: (0, 0, 0o600),
        size: 4096,
        data: ("ipc-shm-7".into(), seg.len() as u64, *blake3::hash(seg).as_bytes()),
        removed: false,
    });
    s.write("ipc-shm-7", seg);
    s.write("manifest", &encode_manifest(&m).unwrap());
    let img = ImageDir::open(&s.0).unwrap();
    let mut bytes = Vec::new();
    let n = stream::export(&img, &mut bytes).unwrap();
    assert_eq!(n, bytes.len() as u64);
    let (out, m) = import_into(&bytes, "stream-dst");
    assert_eq!(m.unwrap(), img.manifest().unwrap());
    assert_eq!(std::fs::read(out.path("pages-0.pack")).unwrap(), vec![5u8; 65536]);
    assert_eq!(std::fs::read(out.path("pod.log")).unwrap(), b"count 1\ncount 2\n");
    assert_eq!(std::fs::read(out.path("ipc-shm-7")).unwrap(), seg);
    // Every kind of damage is refused, in one sentence.
    // Where the pack's entry names it (the manifest names it too, earlier).
    let pack_at = bytes.windows(15).position(|w| w == b"\x01\x0c\x00pages-0.pack").unwrap() + 3;
    let cases: Vec<(&str, Vec<u8>, &str)> = vec![
        ("bad magic", [b"NOTCRYOP".as_slice(), &bytes[8..]].concat(), "not a cryopod image stream"),
        ("truncated", bytes[..bytes.len() / 2].to_vec(), "ends inside"),
        (
            "flipped page byte",
            {
                let mut b = bytes.clone();
                b[pack_at + 12 + 8 + 100] ^= 1;
                b
            },
            "fails its checksum",
        ),
        (
            "renamed file",
            {
                let mut b = bytes.clone();
                b[pack_at + 6] = b'X';
                b
            },
            "not a file of this image",
        ),
        ("trailing bytes", [bytes.as_slice(), b"x"].concat(), "bytes follow its end"),
        (
            "wrong size",
            {
                let mut b = bytes.clone();
                b[pack_at + 12] ^= 0x10;
                b
            },
            "the manifest says",
        ),
    ];
    for (what, damaged, want) in cases {
        let (_out, r) = import_into(&damaged, &format!("stream-bad-{}", what.replace(' ', "-")));
        let e = r.expect_err(what);
        assert!(e.contains(want), "{what}: {e}");
    }
    // A pack shorter than its manifest says is not exported.
    s.write("pages-0.pack", &[5u8; 4096]);
    let img = ImageDir::open(&s.0).unwrap();
    let e = stream::export(&img, &mut Vec::new()).unwrap_err().to_string();
    assert!(e.contains("4096 of its 65536 bytes"), "{e}");
    // The end must count the entries: a stream cut after a file, with an
    // end of its own, is refused.
    let log_at = bytes.windows(10).position(|w| w == b"\x01\x07\x00pod.log").unwrap();
    let mut cut = bytes[..log_at].to_vec();
    cut.push(0);
    cut.extend_from_slice(&2u64.to_le_bytes());
    cut.extend_from_slice(&[0u8; 32]);
    let (_out, r) = import_into(&cut, "stream-cut");
    assert!(r.unwrap_err().contains("does not match its entries"));
}

#[test]
fn pack_homes_need_their_links() {
    let mut m = sample();
    m.packs[0].home = PackHome::Parent(1);
    assert!(m.validate().unwrap_err().to_string().contains("does not link"));
    m.parent = Some(ParentLink { path: "/images/prev".into(), manifest_hash: [1; 32] });
    m.validate().unwrap();
    m.packs[0].home = PackHome::Parent(MAX_CHAIN + 1);
    assert!(m.validate().is_err());
    m.packs[0].home = PackHome::Store;
    assert!(m.validate().is_err());
    m.store = Some(StoreLink { path: "/store".into(), store_id: [2; 16], image_id: [3; 16] });
    m.validate().unwrap();
    let bytes = encode_manifest(&m).unwrap();
    assert_eq!(decode_manifest(&bytes).unwrap(), m);
    m.store.as_mut().unwrap().path = "relative/store".into();
    assert!(m.validate().unwrap_err().to_string().contains("not absolute"));
}

#[test]
fn runs_may_take_part_of_a_chunk_but_never_beyond_it() {
    let mut m = sample();
    let run = &mut m.processes[0].vmas[0].runs[0];
    (run.pages, run.from) = (4, 12);
    m.validate().unwrap();
    m.processes[0].vmas[0].runs[0].from = 13;
    assert!(m.validate().unwrap_err().to_string().contains("from page 13"));
    let mut m = sample();
    m.processes[0].vmas[0].runs[1].from = 1;
    assert!(m.validate().unwrap_err().to_string().contains("zero run with an offset"));
}

#[test]
fn store_index_round_trips_and_refuses_damage() {
    use cryopod_image::shared::{decode_index, encode_index, IndexEntry, PackIndex};
    let ix = PackIndex {
        pack: "0123-abcd.pack".into(),
        size: 3 * 65536,
        entries: vec![
            IndexEntry { hash: [1; 32], offset: 0, len: 65536, codec: Codec::Raw, stored: 65536 },
            IndexEntry { hash: [2; 32], offset: 65536, len: 65536, codec: Codec::Zstd, stored: 100 },
        ],
    };
    let bytes = encode_index(&ix).unwrap();
    assert_eq!(decode_index(&bytes, "x").unwrap(), ix);
    for n in 0..bytes.len() {
        assert!(decode_index(&bytes[..n], "x").is_err(), "a truncation to {n} bytes was accepted");
    }
    for i in (0..bytes.len()).step_by(7) {
        let mut b = bytes.clone();
        b[i] ^= 0x40;
        assert!(decode_index(&b, "x").is_err(), "a flipped byte at {i} was accepted");
    }
    let bad = |f: &dyn Fn(&mut PackIndex)| {
        let mut x = ix.clone();
        f(&mut x);
        decode_index(&encode_index(&x).unwrap(), "x").unwrap_err().to_string()
    };
    assert!(bad(&|x| x.entries[1].offset = 3 * 65536 - 50).contains("beyond the end"));
    assert!(bad(&|x| x.entries[0].len = 100).contains("stored in"));
    assert!(bad(&|x| x.entries[1].stored = 65536).contains("stored in"));
    assert!(bad(&|x| x.pack = "../evil.pack".into()).contains("plain"));
}
