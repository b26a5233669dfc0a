//! Sealed images (`--key`): the manifest, page chunks and a pod's files
//! open only with their key, a wrong key and a changed byte are each
//! refused with their own sentence, nothing of the contents shows in the
//! sealed bytes, and streams and a store's gc work without the key. Run as
//! root (like format.rs: image directories are made in /tmp).

use cryopod_image::codec::{Decoder, Encoder};
use cryopod_image::manifest::Outline;
use cryopod_image::seal::{FileWriter, CHUNK_OVERHEAD, FILE_HEADER, FRAME, TAG};
use cryopod_image::shared::{IndexEntry, Lock, PackIndex, Store};
use cryopod_image::*;
use std::io::Write;
use std::sync::Arc;

fn key(seed: u8) -> Arc<ImageKey> {
    Arc::new(ImageKey::from_bytes(&[seed; 32]))
}

const SECRET: &[u8] = b"the secret of the pipe";

/// Text-like page data (compresses well), with words to look for.
fn text(n: usize) -> Vec<u8> {
    let words: [&[u8]; 4] = [b"checkpoint ", b"restore ", b"memory ", b"page "];
    let mut out = Vec::new();
    let mut x = 7u64;
    while out.len() < n {
        x = x.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        out.extend_from_slice(words[(x >> 62) as usize]);
    }
    out.truncate(n);
    out
}

fn contains(hay: &[u8], needle: &[u8]) -> bool {
    hay.windows(needle.len()).any(|w| w == needle)
}

/// A small valid manifest whose one chunk (`data`, 64 KiB) is stored as
/// `codec` in `stored` bytes; a pipe holds [`SECRET`].
fn sample(chunk: Chunk) -> Manifest {
    let cpu =
        CpuImage { model: "cpu".into(), xcr0: 3, xsave_size: 576, components: vec![], features: Default::default() };
    let thread = Thread {
        tid: 100,
        regs: vec![7; NREGS],
        xstate: vec![0; 576],
        sigmask: 0,
        comm: "t".into(),
        clear_child_tid: 0,
        robust_list: (0, 24),
        rseq: None,
        sigaltstack: (0, 2, 0),
        pending: vec![],
        affinity: vec![],
        seccomp: vec![],
        attrs: Default::default(),
    };
    let vma = Vma {
        start: 0x10000,
        end: 0x20000,
        prot: 3,
        shared: false,
        kind: VmaKind::Anon,
        name: String::new(),
        madv: 0,
        policy: None,
        runs: vec![Run { addr: 0x10000, pages: 16, chunk: Some(0), from: 0 }],
    };
    let pipe = FileKind::Pipe { pipe: 1, write: false, capacity: 65536, queued: SECRET.to_vec() };
    Manifest {
        tool_version: "0".into(),
        created_unix: 1,
        kernel: "k".into(),
        cpu,
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
        files: vec![OpenFile { flags: 0, pos: 0, kind: pipe }],
        objects: vec![],
        packs: vec![Pack { name: "pages-0.pack".into(), size: u64::from(chunk.stored), home: PackHome::Own }],
        chunks: vec![chunk],
        pod: None,
        parent: None,
        store: None,
        cgroups: Vec::new(),
    }
}

/// Seal `data` as a chunk under `k` (compressed if it pays); returns its
/// record (pack 0, offset 0) and stored bytes.
fn seal_chunk(k: &ImageKey, data: &[u8]) -> (Chunk, Vec<u8>) {
    let mut enc = Encoder::new(Compression::Zstd(1)).unwrap();
    let (codec, inner) = enc.encode(data);
    let (codec, hash, len) = (codec.sealed(), k.hash(data), data.len() as u32);
    let mut stored = Vec::new();
    k.seal_chunk(&hash, len, codec, inner, &mut stored).unwrap();
    let c = Chunk { hash, pack: 0, offset: 0, len, codec, stored: stored.len() as u32 };
    (c, stored)
}

fn decode(k: Option<&Arc<ImageKey>>, c: &Chunk, stored: &[u8]) -> std::result::Result<Vec<u8>, String> {
    let mut out = vec![0u8; c.len as usize];
    Decoder::with_key(k.cloned()).unwrap().decode(c, stored, &mut out).map(|_| out).map_err(|e| e.to_string())
}

/// The manifest file `bytes` with its checksum made right again (what
/// anyone can do: the checksum is not keyed).
fn rechecksum(mut bytes: Vec<u8>) -> Vec<u8> {
    let sum = *blake3::hash(&bytes[56..]).as_bytes();
    bytes[24..56].copy_from_slice(&sum);
    bytes
}

#[test]
fn a_sealed_manifest_opens_only_with_its_key() {
    let k = key(1);
    let (c, _) = seal_chunk(&k, &text(65536));
    let m = sample(c);
    let bytes = encode_manifest_keyed(&m, Some(&*k)).unwrap();
    assert_eq!(decode_manifest_keyed(&bytes, Some(&*k)).unwrap(), m);
    assert!(manifest::header(&bytes).unwrap().sealed);
    // What is in the manifest does not show.
    assert!(!contains(&bytes, SECRET));
    assert!(contains(&encode_manifest(&m).unwrap(), SECRET));
    // Its outline is readable without the key (streams, gc).
    assert_eq!(manifest::outline(&bytes).unwrap(), Outline::of(&m));
    // Each refusal has its own sentence.
    let no_key = decode_manifest(&bytes).unwrap_err().to_string();
    assert_eq!(no_key, "the image is encrypted: give its key with --key FILE");
    let wrong = decode_manifest_keyed(&bytes, Some(&*key(2))).unwrap_err().to_string();
    assert_eq!(wrong, "the key does not open this image: it was encrypted with another key");
    const ALTERED: &str = "the manifest fails authentication: it was damaged or altered";
    let mut flipped = bytes.clone();
    let last = flipped.len() - 1;
    flipped[last] ^= 1;
    assert_eq!(decode_manifest_keyed(&flipped, Some(&*k)).unwrap_err().to_string(), ALTERED);
    // A plain image where a sealed one is expected: refused.
    let plain = encode_manifest(&sample(Chunk { codec: Codec::Raw, stored: 65536, ..m.chunks[0].clone() })).unwrap();
    let e = decode_manifest_keyed(&plain, Some(&*k)).unwrap_err().to_string();
    assert!(e.contains("not encrypted"), "{e}");
    // A sealed manifest only names sealed chunks.
    assert!(encode_manifest_keyed(
        &sample(Chunk { codec: Codec::Raw, stored: 65536, ..m.chunks[0].clone() }),
        Some(&*k)
    )
    .is_err());
}

#[test]
fn every_changed_byte_of_a_sealed_manifest_is_refused() {
    let k = key(1);
    let (c, _) = seal_chunk(&k, &text(65536));
    let bytes = encode_manifest_keyed(&sample(c), Some(&*k)).unwrap();
    for i in 0..bytes.len() {
        let mut b = bytes.clone();
        b[i] ^= 0x20;
        // Unchanged checksum: the damage shows at once.
        let plain = decode_manifest_keyed(&b, Some(&*k));
        assert!(plain.is_err(), "byte {i} flipped was accepted");
        // Checksum made right: the key still sees it.
        if i >= 56 {
            let e = decode_manifest_keyed(&rechecksum(b), Some(&*k)).unwrap_err().to_string();
            let want = match i - 56 {
                0..16 => "another key",
                16..40 => "fails authentication",
                _ => "",
            };
            assert!(e.contains(want), "byte {i}: {e}");
        }
    }
    for n in 0..bytes.len() {
        assert!(decode_manifest_keyed(&bytes[..n], Some(&*k)).is_err(), "cut to {n} bytes was accepted");
    }
    // The "sealed" flag cleared: damage, not a plain image.
    let mut b = bytes.clone();
    b[12] ^= 1;
    let e = decode_manifest_keyed(&b, Some(&*k)).unwrap_err().to_string();
    assert_eq!(e, "the manifest fails authentication: it was damaged or altered");
    // The ciphertext and tag: authentication fails (checksum made right).
    let mut b = bytes.clone();
    let at = b.len() - TAG - 3;
    b[at] ^= 1;
    let e = decode_manifest_keyed(&rechecksum(b), Some(&*k)).unwrap_err().to_string();
    assert_eq!(e, "the manifest fails authentication: it was damaged or altered");
}

#[test]
fn a_sealed_chunk_opens_only_with_its_key() {
    let k = key(1);
    let data = text(65536);
    let (c, stored) = seal_chunk(&k, &data);
    assert_eq!(c.codec, Codec::SealedZstd);
    assert!(c.codec.stored_ok(c.len, c.stored));
    assert_eq!(decode(Some(&k), &c, &stored).unwrap(), data);
    assert!(!contains(&stored, b"checkpoint "), "a sealed chunk shows its words");
    // The same chunk under the same key seals the same: deduplication
    // (and a shared store) works; another key gives another hash.
    assert_eq!(seal_chunk(&k, &data), (c.clone(), stored.clone()));
    assert_ne!(key(2).hash(&data), c.hash);
    assert_ne!(*blake3::hash(&data).as_bytes(), c.hash, "a sealed chunk's hash must be keyed");
    // A zstd frame depends on the level, not on the data alone: each
    // frame gets its own nonce (one nonce never seals two messages).
    let mut strong = Encoder::new(Compression::Zstd(19)).unwrap();
    let (_, frame) = strong.encode(&data);
    let mut other = Vec::new();
    k.seal_chunk(&c.hash, c.len, c.codec, frame, &mut other).unwrap();
    assert_ne!(other.len(), stored.len(), "level 19 made the same frame as level 1");
    assert_ne!(other[..24], stored[..24], "two frames sealed under one nonce");
    let strong_c = Chunk { stored: other.len() as u32, ..c.clone() };
    assert_eq!(decode(Some(&k), &strong_c, &other).unwrap(), data);
    // Raw (incompressible) data, sealed.
    let mut x = 0x9e37_79b9_7f4a_7c15u64;
    let noise: Vec<u8> = (0..65536)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect();
    let (rc, rstored) = seal_chunk(&k, &noise);
    assert_eq!((rc.codec, rc.stored), (Codec::SealedRaw, 65536 + CHUNK_OVERHEAD));
    assert_eq!(decode(Some(&k), &rc, &rstored).unwrap(), noise);
    for (c, stored) in [(&c, &stored), (&rc, &rstored)] {
        let e = decode(None, c, stored).unwrap_err();
        assert_eq!(e, "the image is encrypted: give its key with --key FILE");
        let e = decode(Some(&key(2)), c, stored).unwrap_err();
        assert!(e.contains("fails authentication"), "{e}");
        for i in (0..stored.len()).step_by(97).chain([0, 23, 24, stored.len() - 1]) {
            let mut b = stored.clone();
            b[i] ^= 1;
            let e = decode(Some(&k), c, &b).unwrap_err();
            assert!(e.contains("fails authentication"), "byte {i}: {e}");
        }
        // Truncated: the record's length is the only one trusted.
        assert!(decode(Some(&k), c, &stored[..stored.len() - 1]).is_err());
        let short = Chunk { stored: c.stored - 1, ..c.clone() };
        assert!(decode(Some(&k), &short, &stored[..stored.len() - 1]).is_err());
        // The record binds the seal: another hash, length or codec fails.
        let other = Chunk { hash: [3; 32], ..c.clone() };
        assert!(decode(Some(&k), &other, stored).unwrap_err().contains("fails authentication"));
    }
    let swapped = Chunk { codec: Codec::SealedRaw, ..c.clone() };
    assert!(decode(Some(&k), &swapped, &stored).is_err());
    // Records check the sizes a seal makes.
    let mut m = sample(rc.clone());
    m.validate().unwrap();
    m.chunks[0].stored = 65536;
    assert!(m.validate().unwrap_err().to_string().contains("stored"));
    m.chunks[0].stored = 65536 + CHUNK_OVERHEAD + 1;
    assert!(m.validate().is_err());
    let mut m = sample(c.clone());
    m.chunks[0].stored = CHUNK_OVERHEAD;
    assert!(m.validate().is_err());
    let ix = |e: IndexEntry| PackIndex { pack: "a-b.pack".into(), size: 1 << 20, entries: vec![e] };
    let entry = IndexEntry { hash: c.hash, offset: 0, len: c.len, codec: c.codec, stored: c.stored };
    let good = shared::encode_index(&ix(entry.clone())).unwrap();
    assert!(shared::decode_index(&good, "x").is_ok());
    let bad = shared::encode_index(&ix(IndexEntry { codec: Codec::SealedRaw, ..entry })).unwrap();
    assert!(shared::decode_index(&bad, "x").is_err());
}

/// Seal `data` as file `name` under `k`.
fn seal_file(k: &ImageKey, name: &str, data: &[u8]) -> Vec<u8> {
    let mut w = FileWriter::new(Some(k), name, Vec::new()).unwrap();
    // In odd pieces, as a tar builder writes.
    for piece in data.chunks(7777) {
        w.write_all(piece).unwrap();
    }
    w.finish().unwrap()
}

fn open_file(k: &ImageKey, name: &str, sealed: &[u8]) -> std::result::Result<Vec<u8>, String> {
    k.open_bytes(name, sealed).map_err(|e| e.to_string())
}

#[test]
fn a_sealed_file_opens_only_whole_in_order_and_unchanged() {
    let k = key(1);
    for n in [0, 1, FRAME - 1, FRAME, FRAME + 1, 3 * FRAME + 5] {
        let data = text(n);
        let sealed = seal_file(&k, "tmpfs.tar", &data);
        assert_eq!(sealed.len(), FILE_HEADER + n + n.div_ceil(FRAME).max(1) * TAG, "{n} bytes");
        assert_eq!(open_file(&k, "tmpfs.tar", &sealed).unwrap(), data, "{n} bytes");
        assert_eq!(k.seal_bytes("tmpfs.tar", &data).map(|s| open_file(&k, "tmpfs.tar", &s).unwrap()).unwrap(), data);
        if n > 100 {
            assert!(!contains(&sealed, b"restore "), "a sealed file shows its words");
        }
        // Cut anywhere (at a frame's end too): refused.
        for cut in (0..sealed.len()).step_by(4099).chain((1..4).map(|f| FILE_HEADER + f * (FRAME + TAG))) {
            if cut < sealed.len() {
                let e = open_file(&k, "tmpfs.tar", &sealed[..cut]).unwrap_err();
                assert!(e.contains("tmpfs.tar fails authentication"), "cut at {cut}: {e}");
            }
        }
        // Extended by a copy of its last frame: refused.
        let mut longer = sealed.clone();
        longer.extend_from_slice(&sealed[sealed.len() - TAG..]);
        assert!(open_file(&k, "tmpfs.tar", &longer).is_err());
        assert!(open_file(&key(2), "tmpfs.tar", &sealed).is_err(), "another key");
        assert!(open_file(&k, "ipc-shm-1", &sealed).is_err(), "another file's name");
    }
    let data = text(3 * FRAME + 5);
    let sealed = seal_file(&k, "f", &data);
    // Two frames swapped: refused.
    let f = FRAME + TAG;
    let mut swapped = sealed.clone();
    swapped[FILE_HEADER..FILE_HEADER + f].copy_from_slice(&sealed[FILE_HEADER + f..FILE_HEADER + 2 * f]);
    swapped[FILE_HEADER + f..FILE_HEADER + 2 * f].copy_from_slice(&sealed[FILE_HEADER..FILE_HEADER + f]);
    assert!(open_file(&k, "f", &swapped).unwrap_err().contains("fails authentication"));
    // A frame dropped from the middle: refused.
    let dropped = [&sealed[..FILE_HEADER + f], &sealed[FILE_HEADER + 2 * f..]].concat();
    assert!(open_file(&k, "f", &dropped).is_err());
    // Any flipped byte: refused.
    for i in (0..sealed.len()).step_by(1009).chain([0, 8, FILE_HEADER, sealed.len() - 1]) {
        let mut b = sealed.clone();
        b[i] ^= 4;
        assert!(open_file(&k, "f", &b).is_err(), "byte {i} flipped was accepted");
    }
    // Without a key the writer passes everything through as it is.
    let mut w = FileWriter::new(None, "f", Vec::new()).unwrap();
    w.write_all(&data).unwrap();
    assert_eq!(w.finish().unwrap(), data);
}

#[test]
fn key_files_are_32_bytes_or_64_hex_characters() {
    let hex = "00112233445566778899aabbccddeeff00112233445566778899AABBCCDDEEFF";
    let raw: Vec<u8> = (0..32).map(|i| u8::from_str_radix(&hex[2 * i..2 * i + 2], 16).unwrap()).collect();
    let id = ImageKey::parse(hex.as_bytes(), "k").unwrap().id();
    assert_eq!(ImageKey::parse(format!("{hex}\n").as_bytes(), "k").unwrap().id(), id);
    assert_eq!(ImageKey::parse(&raw, "k").unwrap().id(), id);
    let secret = "deadbeef".repeat(8);
    let (two_newlines, odd) = (format!("{hex}\n\n"), format!("{secret}x"));
    let bads: [&[u8]; 7] =
        [b"short", &[7; 31], &[7; 33], &hex.as_bytes()[..63], two_newlines.as_bytes(), &[b'g'; 64], odd.as_bytes()];
    for bad in bads {
        let e = ImageKey::parse(bad, "/keys/k").unwrap_err().to_string();
        assert!(e.starts_with("key file /keys/k must hold 32 raw bytes or 64 hexadecimal characters"), "{e}");
        assert!(!e.contains("deadbeef"), "a refusal shows the key: {e}");
    }
    // Read once, from a descriptor too (`--key /dev/fd/N`).
    let dir = std::env::temp_dir().join(format!("cryopod-key-test-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("key");
    std::fs::write(&path, format!("{hex}\n")).unwrap();
    let f = std::fs::File::open(&path).unwrap();
    let by_fd = format!("/dev/fd/{}", std::os::fd::AsRawFd::as_raw_fd(&f));
    assert_eq!(ImageKey::from_file(std::path::Path::new(&by_fd)).unwrap().id(), id);
    std::fs::write(&path, "x".repeat(1000)).unwrap();
    let e = ImageKey::from_file(&path).unwrap_err().to_string();
    assert!(e.contains("more than 65 bytes"), "{e}");
    let e = ImageKey::from_file(&dir.join("missing")).unwrap_err();
    assert!(e.to_string().starts_with("cannot read key file"), "{e}");
    let _ = std::fs::remove_dir_all(&dir);
    // Nothing of the key in its Debug form.
    let k = ImageKey::parse(hex.as_bytes(), "k").unwrap();
    assert!(format!("{k:?}").starts_with("ImageKey(id "));
    assert!(!format!("{k:?}").to_lowercase().contains("00112233"));
}

/// A scratch directory (removed when dropped).
struct Scratch(std::path::PathBuf);

impl Scratch {
    fn new(name: &str) -> Scratch {
        let d = std::path::PathBuf::from(format!("/tmp/cryopod-sealed-test-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir(&d).unwrap();
        std::fs::set_permissions(&d, std::os::unix::fs::PermissionsExt::from_mode(0o700)).unwrap();
        Scratch(d)
    }
    fn path(&self, f: &str) -> std::path::PathBuf {
        self.0.join(f)
    }
    fn write(&self, f: &str, data: &[u8]) {
        std::fs::write(self.path(f), data).unwrap();
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

#[test]
fn a_sealed_image_directory_verifies_and_streams_without_its_key() {
    let k = key(1);
    let s = Scratch::new("dir");
    let data = text(65536);
    let (c, stored) = seal_chunk(&k, &data);
    let m = sample(c);
    s.write("pages-0.pack", &stored);
    s.write("manifest", &encode_manifest_keyed(&m, Some(&*k)).unwrap());
    let img = ImageDir::open(&s.0).unwrap().with_key(Some(k.clone()));
    assert_eq!(img.manifest().unwrap(), m);
    let reader = img.packs(&m).unwrap();
    reader.verify_all(&m, 1).unwrap();
    let mut out = vec![0u8; 65536];
    reader.read_chunk(&m.chunks[0], &mut out).unwrap();
    assert_eq!(out, data);
    // Without the key: the header and outline only.
    let bare = ImageDir::open(&s.0).unwrap();
    assert!(bare.header().unwrap().sealed);
    assert!(bare.manifest().unwrap_err().to_string().contains("give its key"));
    // A stream carries it as it is, without the key.
    let mut bytes = Vec::new();
    stream::export(&bare, &mut bytes).unwrap();
    let dst = Scratch::new("dir-copy");
    let dir = dst.0.clone();
    let mut create = |n: &str| -> cryopod_image::Result<Box<dyn stream::Sink>> {
        Ok(Box::new(std::fs::File::create(dir.join(n)).unwrap()))
    };
    let got = stream::import(&mut &bytes[..], &mut create).unwrap();
    assert!(got.manifest.is_none());
    assert_eq!(got.manifest_bytes, std::fs::read(s.path("manifest")).unwrap());
    assert_eq!(std::fs::read(dst.path("pages-0.pack")).unwrap(), stored);
    // A flipped byte in the pack: the damage names the chunk.
    let mut bad = stored.clone();
    bad[100] ^= 1;
    s.write("pages-0.pack", &bad);
    let img = ImageDir::open(&s.0).unwrap().with_key(Some(k.clone()));
    let reader = img.packs(&m).unwrap();
    let e = reader.verify_all(&m, 1).unwrap_err().to_string();
    assert!(e.contains("page chunk 0") && e.contains("fails authentication"), "{e}");
}

#[test]
fn a_store_keeps_the_chunks_of_sealed_images_apart_and_its_gc_needs_no_key() {
    let root = Scratch::new("store");
    let store_path = root.path("store");
    let k = key(1);
    let data = text(65536);
    // One store pack holding a sealed chunk, and a plain one of the same data.
    let store = Store::open(&store_path, true, Lock::Shared).unwrap();
    let (c, stored) = seal_chunk(&k, &data);
    let plain_hash = *blake3::hash(&data).as_bytes();
    let (mut pack, _) = store.create_pack("aa-01.pack").unwrap();
    pack.write_all(&stored).unwrap();
    pack.write_all(&data).unwrap();
    let entries = vec![
        IndexEntry { hash: c.hash, offset: 0, len: c.len, codec: c.codec, stored: c.stored },
        IndexEntry { hash: plain_hash, offset: u64::from(c.stored), len: 65536, codec: Codec::Raw, stored: 65536 },
    ];
    let size = u64::from(c.stored) + 65536;
    store.write_index(&PackIndex { pack: "aa-01.pack".into(), size, entries }).unwrap();
    // A sealed image using the store's sealed chunk.
    let image = root.path("image");
    std::fs::create_dir(&image).unwrap();
    let image_id = [4; 16];
    store.add_root(&image_id, &image).unwrap();
    let mut m = sample(c.clone());
    m.packs = vec![Pack { name: "aa-01.pack".into(), size, home: PackHome::Store }];
    m.store = Some(StoreLink { path: store_path.display().to_string(), store_id: store.id(), image_id });
    std::fs::write(image.join("manifest"), encode_manifest_keyed(&m, Some(&*k)).unwrap()).unwrap();
    let (_, known) = store.known().unwrap();
    assert_eq!(known.len(), 2, "one sealed and one plain chunk of the same data never share a hash");
    drop(store);
    // A checkpoint with the key finds only the sealed chunk; one with
    // another key (or none) finds none of the sealed.
    let base = |key: Option<&Arc<ImageKey>>| {
        chain::Base::open(&root.path("next"), ImageOwner::Root, (None, Some(&store_path)), key).unwrap()
    };
    assert_eq!(base(Some(&k)).known.keys().collect::<Vec<_>>(), vec![&c.hash]);
    let other = key(2);
    assert!(!base(Some(&other)).known.contains_key(&other.hash(&data)));
    assert_eq!(base(None).known.keys().collect::<Vec<_>>(), vec![&plain_hash]);
    // The sealed image restores its chunk from the store.
    let img = ImageDir::open(&image).unwrap().with_key(Some(k.clone()));
    img.packs(&m).unwrap().verify_all(&m, 1).unwrap();
    // gc reads which chunks the sealed image uses from its outline: the
    // sealed chunk stays, the plain one (no image) goes.
    let r = Store::open(&store_path, false, Lock::Exclusive).unwrap().gc().unwrap();
    assert_eq!((r.live, r.chunks_kept, r.chunks_freed), (1, 1, 1), "{r:?}");
    let img = ImageDir::open(&image).unwrap().with_key(Some(k.clone()));
    img.packs(&m).unwrap().verify_all(&m, 1).unwrap();
    // The image gone: its chunks go too.
    std::fs::remove_dir_all(&image).unwrap();
    let r = Store::open(&store_path, false, Lock::Exclusive).unwrap().gc().unwrap();
    assert_eq!((r.live, r.chunks_freed, r.packs_removed), (0, 1, 1), "{r:?}");
}
