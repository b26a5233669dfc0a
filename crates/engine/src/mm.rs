//! Memory: which areas a process has and which pages must be saved
//! (collect), and how to rebuild the same address space inside a stub
//! (restore). Saved: present pages of private anonymous memory, CoW'd pages
//! of private file mappings, and the contents of shared anonymous objects.
//! Clean file pages are mapped again from the file; the shared zero page and
//! all-zero pages are recorded, not stored.

use crate::files::FileTable;
use crate::pages::{split_aligned, Piece, Src};
use crate::procfs::{self, MapEntry};
use crate::remote::{nr, Remote};
use crate::{EngineError, Result};
use cryopod_image::{vma_flags, Manifest, MemObject, ObjectOrigin, Process, Run, Vma, VmaKind, PAGE};
use cryopod_sys::pagemap::{self, Pagemap};
use std::collections::HashMap;
use std::os::unix::fs::MetadataExt;
use std::sync::Arc;

const REPORT: u64 =
    pagemap::PAGE_IS_PRESENT | pagemap::PAGE_IS_SWAPPED | pagemap::PAGE_IS_FILE | pagemap::PAGE_IS_PFNZERO;
/// Private anonymous areas hold no file pages: not asking spares the
/// kernel a look at every page's descriptor (a third of the scan's time).
/// Written: without the userfaultfd write-protect bit (see `written`).
const REPORT_ANON: u64 =
    pagemap::PAGE_IS_PRESENT | pagemap::PAGE_IS_SWAPPED | pagemap::PAGE_IS_PFNZERO | pagemap::PAGE_IS_WRITTEN;

/// Where the data of a piece belongs once stored.
#[derive(Clone, Copy)]
pub enum Dest {
    Vma { proc: usize, vma: usize, addr: u64 },
    Object { id: u32, off: u64 },
}

/// Collection state shared by all processes of one checkpoint.
#[derive(Default)]
pub struct MemCollector {
    /// Memory objects saved with their contents, by (device, inode).
    pub objects: Vec<MemObject>,
    object_ids: HashMap<(u64, u64), u32>,
    pub pieces: Vec<Piece>,
    pub dests: Vec<Dest>,
    /// Runs of zero pages: (where, pages).
    pub zero: Vec<(Dest, u32)>,
    pub vdso_hash: Option<[u8; 32]>,
    /// Whether the file of (device, inode) is a regular one (asked once:
    /// a library has several areas).
    regular: HashMap<(String, u64), bool>,
    /// SysV shared memory may be attached (a pod: its IPC namespace is
    /// saved with it).
    pub sysv: bool,
    /// Per process (manifest index): its private anonymous pages to save
    /// that are not write-protected by a userfaultfd (all of them, unless
    /// the process was armed before the freeze: see `crate::arm`).
    pub written: HashMap<usize, Vec<(u64, u64)>>,
}

impl MemCollector {
    /// Record the areas of process `pid` (index `proc` in the manifest) and
    /// queue the pages to save. The areas' flags (`madv`) are left empty:
    /// they are read beside the rest (see [`crate::vmflags`]).
    pub fn collect(&mut self, pid: i32, proc: usize, files: &mut FileTable) -> Result<Vec<Vma>> {
        let maps = procfs::maps(pid)?;
        let pm = Pagemap::open(pid)?;
        let mut vmas = Vec::new();
        for m in &maps {
            let name = m.path.clone();
            let kind = match name.as_str() {
                "[vvar]" => VmaKind::Vvar,
                "[vvar_vclock]" => VmaKind::VvarVclock,
                "[vdso]" => {
                    let mut code = vec![0u8; (m.end - m.start) as usize];
                    cryopod_sys::mem::read(pid, m.start, &mut code)?;
                    self.vdso_hash = Some(*blake3::hash(&code).as_bytes());
                    VmaKind::Vdso
                }
                "[vsyscall]" => VmaKind::Vsyscall,
                "" | "[heap]" | "[stack]" => {
                    if m.shared() {
                        return Err(unsupported(pid, m, "shared memory without a backing object"));
                    }
                    VmaKind::Anon
                }
                n if n.starts_with("[anon:") => VmaKind::Anon,
                n if n.starts_with('[') => return Err(unsupported(pid, m, "special mapping")),
                n if n.starts_with("/SYSV") => {
                    if !self.sysv || m.offset != 0 {
                        let why = if self.sysv {
                            "SysV shared memory attached in part"
                        } else {
                            "SysV shared memory outside a pod; run the program in a pod (`cryopod run`), whose SysV segments are saved with it"
                        };
                        return Err(unsupported(pid, m, why));
                    }
                    // The inode of a SysV segment's file is its id.
                    VmaKind::SysvShm { id: m.inode as i32 }
                }
                n if m.shared() && n.starts_with("/dev/zero") && m.dev.starts_with("00:") => {
                    let path = map_files(pid, m);
                    let id = self.object(&path, ObjectOrigin::SharedAnon)?;
                    VmaKind::Object { object: id, pgoff: m.offset / PAGE }
                }
                "/dev/zero" if !m.shared() => VmaKind::Anon,
                n if n.starts_with("/memfd:") || n.ends_with(" (deleted)") => {
                    let path = map_files(pid, m);
                    let origin = object_origin(n, &path)?;
                    VmaKind::Object { object: self.object(&path, origin)?, pgoff: m.offset / PAGE }
                }
                // A device is told by the file mapped, not by its path: a
                // file on the tmpfs at /dev/shm (shm_open) is a file.
                _ if !self.mapped_is_file(pid, m)? => return Err(unsupported(pid, m, "device mapping")),
                n => VmaKind::File { file: files.mapped_file(pid, n, m.inode)?, pgoff: m.offset / PAGE },
            };
            let vi = vmas.len();
            // Queue the pages to save.
            match kind {
                VmaKind::Anon => {
                    for r in
                        pm.scan(m.start, m.end, pagemap::PAGE_IS_PRESENT | pagemap::PAGE_IS_SWAPPED, REPORT_ANON)?
                    {
                        let zero = r.categories & pagemap::PAGE_IS_PFNZERO != 0;
                        if !zero && r.categories & pagemap::PAGE_IS_WRITTEN != 0 {
                            let w = self.written.entry(proc).or_default();
                            match w.last_mut() {
                                Some(last) if last.1 == r.start => last.1 = r.end,
                                _ => w.push((r.start, r.end)),
                            }
                        }
                        self.queue(pid, proc, vi, r.start, r.end, zero);
                    }
                }
                VmaKind::File { .. } | VmaKind::Object { .. } if !m.shared() => {
                    for r in pm.scan(m.start, m.end, pagemap::PAGE_IS_PRESENT | pagemap::PAGE_IS_SWAPPED, REPORT)? {
                        let anon = r.categories & pagemap::PAGE_IS_FILE == 0;
                        if anon && r.categories & pagemap::PAGE_IS_PFNZERO == 0 {
                            self.queue(pid, proc, vi, r.start, r.end, false);
                        }
                    }
                }
                _ => {}
            }
            vmas.push(Vma {
                start: m.start,
                end: m.end,
                prot: m.prot(),
                shared: m.shared(),
                kind,
                name,
                madv: 0,
                policy: None,
                runs: Vec::new(),
            });
        }
        Ok(vmas)
    }

    /// Whether what `m` maps is a regular file (not a device node).
    fn mapped_is_file(&mut self, pid: i32, m: &MapEntry) -> Result<bool> {
        let key = (m.dev.clone(), m.inode);
        if let Some(&r) = self.regular.get(&key) {
            return Ok(r);
        }
        let path = map_files(pid, m);
        let md = std::fs::metadata(&path).map_err(|e| EngineError::Proc { path, msg: e.to_string() })?;
        self.regular.insert(key, md.is_file());
        Ok(md.is_file())
    }

    fn queue(&mut self, pid: i32, proc: usize, vma: usize, start: u64, end: u64, zero: bool) {
        split_aligned(start, end, |a, n| {
            let d = Dest::Vma { proc, vma, addr: a };
            if zero {
                // The shared zero page: recorded, nothing to read or store.
                self.zero.push((d, n));
            } else {
                self.dests.push(d);
                self.pieces.push(Piece { src: Src::Mem { pid, addr: a }, pages: n });
            }
        });
    }

    /// A memory object (shared anonymous memory, memfd, deleted file) opened
    /// through `path` (a map_files or fd link in /proc), saved once however
    /// many areas and fds refer to it: its allocated pages are found with
    /// SEEK_DATA/SEEK_HOLE on the object itself.
    pub fn object(&mut self, path: &str, origin: ObjectOrigin) -> Result<u32> {
        let err = |e: std::io::Error| EngineError::Proc { path: path.to_string(), msg: e.to_string() };
        let f = std::fs::File::open(path).map_err(err)?;
        let md = f.metadata().map_err(err)?;
        let key = (md.dev(), md.ino());
        if let Some(&id) = self.object_ids.get(&key) {
            return Ok(id);
        }
        let size = md.len();
        let id = self.objects.len() as u32;
        let f = Arc::new(f);
        for (a, b) in crate::files::data_segments(&f, size) {
            split_aligned(a, b, |o, n| {
                self.dests.push(Dest::Object { id, off: o });
                self.pieces.push(Piece { src: Src::File { file: f.clone(), off: o }, pages: n });
            });
        }
        self.objects.push(MemObject { size, origin, runs: Vec::new() });
        self.object_ids.insert(key, id);
        Ok(id)
    }
}

fn map_files(pid: i32, m: &MapEntry) -> String {
    format!("/proc/{pid}/map_files/{:x}-{:x}", m.start, m.end)
}

/// What a memfd or deleted file is, from its name in maps or fd links and
/// the object itself (reached through `path`).
pub fn object_origin(name: &str, path: &str) -> Result<ObjectOrigin> {
    let base = name.strip_suffix(" (deleted)").unwrap_or(name);
    if let Some(n) = base.strip_prefix("/memfd:") {
        let f =
            std::fs::File::open(path).map_err(|e| EngineError::Proc { path: path.to_string(), msg: e.to_string() })?;
        let seals = cryopod_sys::events::memfd_seals(&f)?;
        return Ok(ObjectOrigin::Memfd { name: n.to_string(), seals });
    }
    let md = std::fs::metadata(path).map_err(|e| EngineError::Proc { path: path.to_string(), msg: e.to_string() })?;
    Ok(ObjectOrigin::Deleted { path: base.to_string(), mode: md.mode() & 0o7777 })
}

fn unsupported(pid: i32, m: &MapEntry, what: &str) -> EngineError {
    EngineError::Unsupported { pid, what: format!("memory area {:#x}-{:#x} {} ({what})", m.start, m.end, m.path) }
}

/// Attach stored chunks (and recorded zero pages) to their areas as runs,
/// sorted by address, adjacent zero runs merged.
pub fn attach_runs(
    m: &mut Manifest,
    mc: &MemCollector,
    segments: &[Vec<crate::pages::Segment>],
    reused: &[crate::pages::TakenRun],
) {
    let zero = mc.zero.iter().map(|(d, n)| (*d, 0, *n, None));
    let data = mc
        .dests
        .iter()
        .zip(segments)
        .flat_map(|(d, segs)| segs.iter().map(move |&(off, n, c)| (*d, off, n, c.map(|c| (c, 0)))));
    let taken = reused.iter().map(|(d, n, c)| (*d, 0, *n, *c));
    for (d, first, pages, chunk) in data.chain(zero).chain(taken) {
        let (runs, addr) = match d {
            Dest::Vma { proc, vma, addr } => (&mut m.processes[proc].vmas[vma].runs, addr),
            Dest::Object { id, off } => (&mut m.objects[id as usize].runs, off),
        };
        let (chunk, from) = match chunk {
            Some((c, f)) => (Some(c), f),
            None => (None, 0),
        };
        runs.push(Run { addr: addr + u64::from(first) * PAGE, pages, chunk, from });
    }
    let tidy = |runs: &mut Vec<Run>| {
        runs.sort_by_key(|r| r.addr);
        let mut out: Vec<Run> = Vec::with_capacity(runs.len());
        for r in runs.drain(..) {
            if let Some(last) = out.last_mut() {
                if r.chunk.is_none() && last.chunk.is_none() && last.addr + u64::from(last.pages) * PAGE == r.addr {
                    last.pages += r.pages;
                    continue;
                }
            }
            out.push(r);
        }
        *runs = out;
    };
    for p in &mut m.processes {
        for v in &mut p.vmas {
            tidy(&mut v.runs);
        }
    }
    for s in &mut m.objects {
        tidy(&mut s.runs);
    }
}

// ---------------------------------------------------------------- restore

const MAP_SHARED: u64 = 0x01;
const MAP_PRIVATE: u64 = 0x02;
const MAP_FIXED: u64 = 0x10;
const MAP_ANONYMOUS: u64 = 0x20;
const MAP_GROWSDOWN: u64 = 0x100;
const MAP_FIXED_NOREPLACE: u64 = 0x100000;
const MREMAP_MAYMOVE: u64 = 1;
const MREMAP_FIXED: u64 = 2;
const TASK_TOP: u64 = 0x7fff_ffff_f000;

/// Lowest free gap of `len` bytes above 1 MiB that overlaps none of `used`.
pub fn find_hole(used: &[(u64, u64)], len: u64) -> Option<u64> {
    let mut v = used.to_vec();
    v.sort_unstable();
    let mut cand = 1u64 << 20;
    for (s, e) in v {
        if e <= cand {
            continue;
        }
        if s >= cand + len {
            return Some(cand);
        }
        cand = cand.max(e.div_ceil(PAGE) * PAGE);
    }
    (cand + len <= TASK_TOP).then_some(cand)
}

/// Everything the stub has that must go before the target layout is built.
pub struct StubLayout {
    pub vdso_trio: Vec<(u64, u64)>,
    pub others: Vec<(u64, u64)>,
}

pub fn stub_layout(pid: i32) -> Result<StubLayout> {
    let mut vdso_trio = Vec::new();
    let mut others = Vec::new();
    for m in procfs::maps(pid)? {
        match m.path.as_str() {
            "[vvar]" | "[vvar_vclock]" | "[vdso]" => vdso_trio.push((m.start, m.end)),
            "[vsyscall]" => {}
            _ => others.push((m.start, m.end)),
        }
    }
    Ok(StubLayout { vdso_trio, others })
}

/// Map the scratch area (one code page holding `syscall`, then data) at a
/// hole that neither the stub nor the target layout uses; returns its start.
pub fn map_scratch(r: &mut Remote, stub: &StubLayout, p: &Process) -> Result<u64> {
    let mut used: Vec<(u64, u64)> = stub.others.iter().chain(stub.vdso_trio.iter()).copied().collect();
    used.extend(p.vmas.iter().map(|v| (v.start, v.end)));
    let len = PAGE + crate::remote::SCRATCH_DATA;
    let at = find_hole(&used, len).ok_or_else(|| EngineError::Other("no room for the scratch area".into()))?;
    let rw = (libc::PROT_READ | libc::PROT_WRITE) as u64;
    let got = r.call(
        "mmap(scratch)",
        nr::MMAP,
        &[at, len, rw, MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED_NOREPLACE, u64::MAX, 0],
    )?;
    // syscall; int3 (the injection gadget)
    cryopod_sys::mem::write(r.pid, got, &[0x0f, 0x05, 0xcc])?;
    r.call("mprotect(scratch code)", nr::MPROTECT, &[got, PAGE, (libc::PROT_READ | libc::PROT_EXEC) as u64])?;
    r.inj.site = got;
    r.data = got + PAGE;
    Ok(got)
}

/// Remove the stub's own memory (all but scratch, the vDSO and the
/// `templates` the process takes) and move the vDSO trio to where the
/// image had it.
pub fn clear_stub(
    r: &mut Remote,
    stub: &StubLayout,
    scratch: (u64, u64),
    p: &Process,
    used_target: &[(u64, u64)],
    templates: &[(u64, u64)],
) -> Result<()> {
    let mut keep: Vec<(u64, u64)> = vec![scratch];
    keep.extend(templates.iter().copied());
    keep.extend(stub.vdso_trio.iter().copied());
    keep.sort_unstable();
    let mut lo = 0u64;
    for (s, e) in keep.iter().copied().chain(std::iter::once((TASK_TOP, TASK_TOP))) {
        if s > lo {
            r.call("munmap(stub memory)", nr::MUNMAP, &[lo, s - lo])?;
        }
        lo = lo.max(e);
    }
    // vDSO: the three areas move together, one by one, by the same delta.
    let want: Vec<(u64, u64)> = p
        .vmas
        .iter()
        .filter(|v| matches!(v.kind, VmaKind::Vvar | VmaKind::VvarVclock | VmaKind::Vdso))
        .map(|v| (v.start, v.end))
        .collect();
    if want.is_empty() {
        return Ok(());
    }
    let sizes = |v: &[(u64, u64)]| v.iter().map(|(a, b)| b - a).collect::<Vec<_>>();
    if sizes(&want) != sizes(&stub.vdso_trio) {
        return Err(EngineError::Other(format!(
            "the vDSO of this kernel has a different layout ({:?}) than the image's ({:?})",
            sizes(&stub.vdso_trio),
            sizes(&want)
        )));
    }
    let (cur_lo, cur_hi) = (stub.vdso_trio[0].0, stub.vdso_trio[stub.vdso_trio.len() - 1].1);
    let (want_lo, want_hi) = (want[0].0, want[want.len() - 1].1);
    if cur_lo == want_lo {
        return Ok(());
    }
    let mut cur = stub.vdso_trio.clone();
    if want_lo < cur_hi && cur_lo < want_hi {
        // Overlap: move to a temporary hole first.
        let mut used = used_target.to_vec();
        used.extend(keep.iter().copied());
        let tmp =
            find_hole(&used, cur_hi - cur_lo).ok_or_else(|| EngineError::Other("no room to move the vDSO".into()))?;
        cur = move_trio(r, &cur, tmp)?;
    }
    move_trio(r, &cur, want_lo)?;
    Ok(())
}

fn move_trio(r: &mut Remote, cur: &[(u64, u64)], to: u64) -> Result<Vec<(u64, u64)>> {
    let base = cur[0].0;
    let mut out = Vec::new();
    for &(s, e) in cur {
        let dst = to + (s - base);
        r.call("mremap(vDSO)", nr::MREMAP, &[s, e - s, e - s, MREMAP_MAYMOVE | MREMAP_FIXED, dst])?;
        out.push((dst, dst + (e - s)));
    }
    Ok(out)
}

/// Restore context for areas: the pack reader, the worker count for
/// filling, and where shared objects were first mapped (pid, start, end).
pub struct AreaCtx<'a> {
    pub m: &'a Manifest,
    pub reader: &'a cryopod_image::store::PackReader,
    pub threads: usize,
    /// Where shared anonymous objects were first mapped (pid as the
    /// restored tasks see it, start, end).
    pub shmem_home: &'a mut HashMap<u32, (i32, u64, u64)>,
    /// memfds and deleted files, by object: fd numbers every stub inherited.
    pub object_fds: &'a HashMap<u32, cryopod_sys::TargetFd>,
    /// Private anonymous memory is filled after the process runs, by this
    /// (see [`crate::lazy`]).
    pub lazy: Option<&'a crate::lazy::LazyPages>,
    /// Areas that forked processes share, inherited by every stub (see
    /// [`crate::forked_memory`]).
    pub templates: &'a crate::forked_memory::Templates,
}

/// Files opened in the task for mappings, reused across its areas: by
/// (path, mode) the fd and where its last mapping ended (address, offset).
#[derive(Default)]
struct OpenFiles {
    by_path: HashMap<(String, i32), (u64, u64, u64)>,
    all: Vec<u64>,
}

/// Work left after the areas are mapped: pages to copy in (address, chunk),
/// CoW'd pages of file mappings to write in by force, and protections to
/// set once they are filled.
#[derive(Default)]
struct Pending {
    forced: Vec<crate::pages::FillJob>,
    fill: Vec<crate::pages::FillJob>,
    protect: Vec<(u64, u64, u64)>,
    /// Left to the lazy filler: its runs, and the areas to register.
    lazy: Vec<crate::pages::FillJob>,
    lazy_areas: Vec<(u64, u64)>,
}

/// Map every area of `p` into the stub, then fill all their pages at once
/// (in parallel, from the restorer), then set final protections.
pub fn restore_areas(r: &mut Remote, p: &Process, cx: &mut AreaCtx) -> Result<()> {
    let mut files = OpenFiles::default();
    let mut pending = Pending::default();
    let mut res = Ok(());
    for v in &p.vmas {
        res = restore_area(r, v, cx, &mut files, &mut pending)
            .map_err(EngineError::during(format!("pid {} memory area {:#x}-{:#x} {}", p.pid, v.start, v.end, v.name)));
        if res.is_err() {
            break;
        }
    }
    for fd in files.all {
        r.call("close", nr::CLOSE, &[fd])?;
    }
    res?;
    // Their own memory policies, before their pages come in.
    for v in &p.vmas {
        if let Some((mode, nodes)) = v.policy {
            let (mask, maxnode) = match nodes {
                0 => (0, 0),
                // (mbind reads maxnode - 1 bits.)
                n => (r.put(0, &n.to_ne_bytes())?, 65),
            };
            r.call(
                &format!("mbind({:#x}, {mode:#x}, {nodes:#x})", v.start),
                nr::MBIND,
                &[v.start, v.end - v.start, mode as u32 as u64, mask, maxnode, 0],
            )?;
        }
    }
    if let Some(lazy) = cx.lazy.filter(|_| !pending.lazy_areas.is_empty()) {
        match lazy_uffd(r, &pending.lazy_areas) {
            Ok(u) => lazy.add(r.pid, p.pid, u, std::mem::take(&mut pending.lazy))?,
            // Its pages at the source come only through a uffd.
            Err(e) if lazy.fetches(p.pid) => {
                return Err(EngineError::Other(format!(
                    "pid {}: its memory cannot come from the source after it runs (no userfaultfd: {e})",
                    p.pid
                )))
            }
            // (A pod in its own user namespace may not make one.)
            Err(e) => {
                tracing::info!(pid = r.pid, "memory filled before the process runs: no userfaultfd ({e})");
                pending.fill.append(&mut pending.lazy);
                pending.fill.sort_unstable_by_key(|j| j.addr);
            }
        }
    }
    let t = std::time::Instant::now();
    crate::pages::fill(r.pid, &pending.fill, cx.m, cx.reader, cx.threads)
        .map_err(EngineError::during(format!("pid {} memory contents", p.pid)))?;
    tracing::debug!(us = t.elapsed().as_micros() as u64, runs = pending.fill.len(), "filled");
    let t = std::time::Instant::now();
    if !pending.forced.is_empty() {
        // CoW'd pages of file mappings, which may be read-only: forced writes.
        let mem = cryopod_sys::mem::ProcMem::open(r.pid)?;
        let mut buf = vec![0u8; (cryopod_image::CHUNK_PAGES * PAGE) as usize];
        for j in &pending.forced {
            let ch = &cx.m.chunks[j.chunk as usize];
            cx.reader.read_chunk(ch, &mut buf)?;
            mem.write_forced(j.addr, &buf[j.range()])?;
        }
    }
    tracing::debug!(us = t.elapsed().as_micros() as u64, runs = pending.forced.len(), "forced writes");
    for (start, len, prot) in pending.protect {
        r.call("mprotect", nr::MPROTECT, &[start, len, prot])?;
    }
    Ok(())
}

/// A userfaultfd of the task's, taken, with `areas` registered for
/// missing pages (see [`crate::lazy`]).
fn lazy_uffd(r: &mut Remote, areas: &[(u64, u64)]) -> Result<cryopod_sys::uffd::Uffd> {
    use cryopod_sys::uffd;
    let flags = (libc::O_CLOEXEC | libc::O_NONBLOCK) as u64;
    let fd = r.call("userfaultfd", uffd::NR_USERFAULTFD, &[flags])?;
    let taken = cryopod_sys::pidfd::pidfd_open(r.pid)
        .and_then(|p| cryopod_sys::pidfd::pidfd_getfd(&p, r.pid, cryopod_sys::TargetFd(fd as i32)));
    r.call("close(userfaultfd)", nr::CLOSE, &[fd])?;
    let u = uffd::Uffd::from_fd(taken?);
    let got = u.api(crate::lazy::FEATURES)?;
    if got & crate::lazy::FEATURES != crate::lazy::FEATURES {
        return Err(EngineError::Other(format!("userfaultfd features {got:#x} lack some of the events needed")));
    }
    for &(start, len) in areas {
        u.register_missing(start, len)?;
    }
    Ok(u)
}

fn restore_area(r: &mut Remote, v: &Vma, cx: &mut AreaCtx, files: &mut OpenFiles, pending: &mut Pending) -> Result<()> {
    let len = v.end - v.start;
    let prot = u64::from(v.prot);
    let w = libc::PROT_WRITE as u64;
    let queue = |pending: &mut Pending, runs: &[Run], base: u64| {
        pending.fill.extend(runs.iter().filter_map(|run| crate::pages::FillJob::of(run, base)));
    };
    match v.kind {
        VmaKind::Vvar | VmaKind::VvarVclock | VmaKind::Vdso | VmaKind::Vsyscall => return Ok(()),
        VmaKind::SysvShm { id } => {
            const SHM_RDONLY: u64 = 0o10000;
            const SHM_REMAP: u64 = 0o40000;
            const SHM_EXEC: u64 = 0o100000;
            let mut flags = SHM_REMAP;
            if prot & w == 0 {
                flags |= SHM_RDONLY;
            }
            if prot & libc::PROT_EXEC as u64 != 0 {
                flags |= SHM_EXEC;
            }
            let got = r.call("shmat", nr::SHMAT, &[id as u64, v.start, flags])?;
            if got != v.start {
                return Err(EngineError::Other(format!("SysV segment {id} attached at {got:#x}, not {:#x}", v.start)));
            }
            // Attached in part before (the rest unmapped): again.
            if let Some(m) = procfs::maps(r.pid)?.iter().find(|m| m.start == v.start) {
                if m.end > v.end {
                    r.call("munmap(rest of segment)", nr::MUNMAP, &[v.end, m.end - v.end])?;
                }
            }
            apply_madvise(r, v)?;
            return Ok(());
        }
        VmaKind::Anon if cx.templates.of(v).is_some() && cx.lazy.is_none() => {
            let t = cx.templates.of(v).ok_or_else(|| EngineError::Other("a template lost".into()))?;
            r.call("mremap(template)", nr::MREMAP, &[t.at, len, len, MREMAP_MAYMOVE | MREMAP_FIXED, v.start])?;
            if prot | w != (libc::PROT_READ | libc::PROT_WRITE) as u64 {
                r.call("mprotect(template)", nr::MPROTECT, &[v.start, len, prot | w])?;
            }
            apply_madvise(r, v)?;
            let (writes, drops) = t.differences(&v.runs);
            for (start, len) in drops {
                r.call("madvise(DONTNEED)", nr::MADVISE, &[start, len, libc::MADV_DONTNEED as u64])?;
            }
            pending.fill.extend(writes);
        }
        VmaKind::Anon => {
            let mut flags = MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED;
            if v.madv & vma_flags::GROWSDOWN != 0 {
                flags |= MAP_GROWSDOWN;
            }
            r.call("mmap", nr::MMAP, &[v.start, len, prot | w, flags, u64::MAX, 0])?;
            apply_madvise(r, v)?;
            match cx.lazy.is_some() && !v.shared {
                true => {
                    pending.lazy.extend(v.runs.iter().filter_map(|run| crate::pages::FillJob::of(run, 0)));
                    pending.lazy_areas.push((v.start, len));
                }
                false => queue(pending, &v.runs, 0),
            }
        }
        VmaKind::Object { object, pgoff } if cx.object_fds.contains_key(&object) => {
            // A memfd or deleted file, re-created by the restorer.
            let fd = cx.object_fds[&object].raw() as u64;
            let share = if v.shared { MAP_SHARED } else { MAP_PRIVATE };
            r.call("mmap(object)", nr::MMAP, &[v.start, len, prot, share | MAP_FIXED, fd, pgoff * PAGE])?;
            apply_madvise(r, v)?;
            // A private mapping's CoW'd pages: forced writes (may be read-only).
            pending.forced.extend(v.runs.iter().filter_map(|run| crate::pages::FillJob::of(run, 0)));
            return Ok(());
        }
        VmaKind::Object { object: shmem, pgoff } => {
            if let Some(&(hp, hs, he)) = cx.shmem_home.get(&shmem) {
                let path = format!("/proc/{hp}/map_files/{hs:x}-{he:x}");
                let mode = if v.prot & libc::PROT_WRITE as u32 != 0 { libc::O_RDWR } else { libc::O_RDONLY };
                let fd = open_in_task(r, &path, mode)?;
                let res =
                    r.call("mmap(shared)", nr::MMAP, &[v.start, len, prot, MAP_SHARED | MAP_FIXED, fd, pgoff * PAGE]);
                r.call("close", nr::CLOSE, &[fd])?;
                res?;
                apply_madvise(r, v)?;
                return Ok(());
            }
            let obj = &cx.m.objects[shmem as usize];
            if pgoff != 0 || len != obj.size {
                return Err(EngineError::Unsupported {
                    pid: r.pid,
                    what: "a shared anonymous object first mapped only in part".into(),
                });
            }
            let flags = MAP_SHARED | MAP_ANONYMOUS | MAP_FIXED;
            r.call("mmap(shared)", nr::MMAP, &[v.start, len, prot | w, flags, u64::MAX, 0])?;
            apply_madvise(r, v)?;
            queue(pending, &obj.runs, v.start);
            // Others open it through /proc as they see it: in a pod, the
            // pod's own procfs, where this process has its pod PID.
            let seen_as = crate::pidns::ns_pid(r.pid, r.pid)?;
            cx.shmem_home.insert(shmem, (seen_as, v.start, v.end));
        }
        VmaKind::File { file, pgoff } => {
            let path = crate::files::mapping_path(&cx.m.files[file as usize]);
            let mode = if v.shared && v.prot & libc::PROT_WRITE as u32 != 0 { libc::O_RDWR } else { libc::O_RDONLY };
            // Reuse the fd, unless this area directly continues the last one
            // mapped through it: the kernel would merge the two areas (one
            // file, contiguous offsets), which the original did not have.
            let key = (path.clone(), mode);
            let fd = match files.by_path.get(&key) {
                Some(&(fd, end, end_off)) if !(end == v.start && end_off == pgoff * PAGE) => fd,
                _ => {
                    let fd = open_in_task(r, &path, mode)?;
                    files.all.push(fd);
                    fd
                }
            };
            files.by_path.insert(key, (fd, v.end, pgoff * PAGE + len));
            let share = if v.shared { MAP_SHARED } else { MAP_PRIVATE };
            r.call("mmap(file)", nr::MMAP, &[v.start, len, prot, share | MAP_FIXED, fd, pgoff * PAGE])?;
            apply_madvise(r, v)?;
            pending.forced.extend(v.runs.iter().filter_map(|run| crate::pages::FillJob::of(run, 0)));
            return Ok(());
        }
    }
    if prot & w == 0 {
        pending.protect.push((v.start, len, prot));
    }
    Ok(())
}

fn apply_madvise(r: &mut Remote, v: &Vma) -> Result<()> {
    for (bit, advice) in [
        (vma_flags::HUGEPAGE, libc::MADV_HUGEPAGE),
        (vma_flags::NOHUGEPAGE, libc::MADV_NOHUGEPAGE),
        (vma_flags::DONTFORK, libc::MADV_DONTFORK),
        (vma_flags::WIPEONFORK, libc::MADV_WIPEONFORK),
        (vma_flags::DONTDUMP, libc::MADV_DONTDUMP),
        (vma_flags::SEQUENTIAL, libc::MADV_SEQUENTIAL),
        (vma_flags::RANDOM, libc::MADV_RANDOM),
        (vma_flags::MERGEABLE, libc::MADV_MERGEABLE),
    ] {
        if v.madv & bit != 0 {
            r.call("madvise", nr::MADVISE, &[v.start, v.end - v.start, advice as u64])?;
        }
    }
    Ok(())
}

/// Lock the areas the process had locked (mlock, or mlock2 with
/// MLOCK_ONFAULT), once their memory is there: locking populates them. A
/// lazily restored process has its pages still to come: locked as they
/// arrive (on fault), not fetched all at once here.
pub fn lock_areas(r: &mut Remote, p: &Process, lazy: bool) -> Result<()> {
    const MLOCK2: i64 = 325;
    const MLOCK_ONFAULT: u64 = 1;
    for v in p.vmas.iter().filter(|v| v.madv & vma_flags::LOCKED != 0) {
        let onfault = v.madv & vma_flags::LOCKONFAULT != 0 || lazy;
        let flags = if onfault { MLOCK_ONFAULT } else { 0 };
        r.call(&format!("mlock2({:#x})", v.start), MLOCK2, &[v.start, v.end - v.start, flags])?;
    }
    Ok(())
}

/// Open `path` inside the task; returns the fd number there.
pub fn open_in_task(r: &mut Remote, path: &str, flags: i32) -> Result<u64> {
    let a = r.put_str(0, path)?;
    let at_fdcwd = libc::AT_FDCWD as i64 as u64;
    r.call(&format!("open({path})"), nr::OPENAT, &[at_fdcwd, a, (flags | libc::O_CLOEXEC) as u64, 0])
}

/// Address of a `syscall` instruction in the vDSO of task `pid` (whose
/// areas are `vmas`): where the last syscalls (seccomp) are injected into
/// a restored task.
pub fn vdso_syscall_site(pid: i32, vmas: &[Vma]) -> Result<u64> {
    let v = vmas.iter().find(|v| v.kind == VmaKind::Vdso);
    let (start, code) = vdso_code(pid, v.map(|v| (v.start, v.end)))?;
    syscall_in(start, &code)
}

/// The code of `pid`'s vDSO, mapped at `range` (None: it has none), with
/// its start address.
pub fn vdso_code(pid: i32, range: Option<(u64, u64)>) -> Result<(u64, Vec<u8>)> {
    let (start, end) =
        range.ok_or_else(|| EngineError::Unsupported { pid, what: "a process without a vDSO".into() })?;
    let mut code = vec![0u8; (end - start) as usize];
    cryopod_sys::mem::read(pid, start, &mut code)?;
    Ok((start, code))
}

/// The address of a `syscall` instruction in vDSO `code` mapped at `start`.
pub fn syscall_in(start: u64, code: &[u8]) -> Result<u64> {
    let off = cryopod_sys::inject::find_syscall_insn(code)
        .ok_or_else(|| EngineError::Other("no syscall instruction in the vDSO".into()))?;
    Ok(start + off as u64)
}
