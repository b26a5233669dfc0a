//! The destination's side of a migration (`cryopod serve`): one peer at a
//! time; a peer without the key file is refused before anything else is
//! read; an offer is checked before any state moves; the pod is restored
//! held (frozen, not attached) and let go only on the source's `Commit`.
//! Any failure removes what was made here.

use crate::frame::{give_up, read_frame, send_frame, ImageHead, Kind};
use crate::link::Link;
use crate::offer::{Mode, Offer};
use crate::send::MAX_ROUNDS;
use crate::{fault, MigrateError, Result};
use cryopod_engine::outdir::TempImage;
use cryopod_engine::{lazy, CheckedImage, Progress};
use cryopod_image::shared::{Lock, Store};
use cryopod_image::store::KnownChunks;
use cryopod_image::stream::Carry;
use cryopod_image::ImageKey;
use cryopod_pod::snapshot::PodRestoreOptions;
use cryopod_pod::{PodError, StateDir};
use std::net::{TcpListener, TcpStream};
use std::time::Duration;

pub struct ServeOptions<'a> {
    pub key: &'a ImageKey,
    pub threads: usize,
    /// How long a peer may stay silent at any step.
    pub timeout: Duration,
    /// The bridge for the veths of pods that arrive (None: cryopod's own).
    pub bridge: Option<String>,
    /// A chunk store (`--store DIR`, absolute) whose chunks the source
    /// need not send (see [`crate::holds`]).
    pub store: Option<std::path::PathBuf>,
}

/// Serve migrations on `listener` until it fails; `report` hears one line
/// per peer (what arrived, or why not).
pub fn serve(listener: &TcpListener, state: &StateDir, o: &ServeOptions, report: &dyn Fn(&str)) -> Result<()> {
    loop {
        let (tcp, peer) = listener.accept().map_err(|e| MigrateError::io("accepting a connection", e))?;
        let peer = peer.to_string();
        match receive(tcp, &peer, state, o, &|_, _, _| {}) {
            Ok(line) => report(&line),
            Err(e) => report(&format!("from {peer}: {}", cryopod_engine::chain(&e))),
        }
    }
}

/// One migration from `peer`; returns what arrived, in words.
pub fn receive(tcp: TcpStream, peer: &str, state: &StateDir, o: &ServeOptions, progress: Progress) -> Result<String> {
    tcp.set_read_timeout(Some(o.timeout))
        .and_then(|_| tcp.set_write_timeout(Some(o.timeout)))
        .map_err(|e| MigrateError::io("setting the connection's timeouts", e))?;
    let _ = tcp.set_nodelay(true);
    let mut link = Link::accept(tcp, o.key, peer)?;
    let f = read_frame(&mut link, "while waiting for an offer")?;
    if f.kind != Kind::Offer {
        return Err(MigrateError::Protocol(format!("a {:?} frame where an offer was due", f.kind)));
    }
    let offer = Offer::decode(&f.body)?;
    if let Err(why) = preflight(state, &offer) {
        send_frame(&mut link, Kind::Refuse, why.as_bytes())?;
        return Err(MigrateError::Refused("this host".into(), why));
    }
    send_frame(&mut link, Kind::Accept, &[])?;
    // What the store holds, and its lock (shared) until the pod's memory is
    // all in: its gc frees nothing the source counts on.
    let store = match described(&mut link, o) {
        Ok(s) => s,
        Err(e) => {
            give_up(&mut link, &format!("the destination failed: {}", cryopod_engine::chain(&e)));
            return Err(e);
        }
    };
    let store_id = store.as_ref().map(|s| s.id());
    // The images live in memory (a tmpfs) only as long as the move.
    let tmp = TempImage::in_memory()?;
    // (Out here: dropping its tens of thousands of entries would cost the
    // pod's stop tens of milliseconds; it goes after the move.)
    let mut known = KnownChunks::new();
    let made = (|| -> Result<_> {
        fault("serve-after-accept")?;
        let (last, warmth) = receive_images(&mut link, &tmp, (&mut known, o.threads), store_id)?;
        // Lazy: what its last image left out, to fetch once it runs.
        let remote = match offer.mode {
            Mode::Lazy => {
                let f = read_frame(&mut link, "while waiting for the list of pages left at the source")?;
                if f.kind != Kind::Left {
                    return Err(MigrateError::Protocol(format!("a {:?} frame where Left was due", f.kind)));
                }
                let left = crate::postcopy::receive_left(&mut link)?;
                let (r, end) = lazy::remote::remote(&left)
                    .map_err(|e| MigrateError::io("making the channels of the page filler", e))?;
                Some((r, end))
            }
            _ => None,
        };
        let (remote, end) = remote.unzip();
        let img = CheckedImage::open(&last, None)?;
        if img.manifest().pod.as_ref().map(|p| p.name.as_str()) != Some(offer.pod.as_str()) {
            return Err(MigrateError::Protocol(format!("the image is not of the pod offered ({})", offer.pod)));
        }
        let ro = PodRestoreOptions {
            image: &img,
            name: None,
            ip: None,
            tcp_close: false,
            threads: o.threads,
            hold: true,
            bridge: o.bridge.clone(),
            // The pod runs again before its memory is all in; the pages
            // follow from the images here (and lazy, from the source).
            // Stop mode too, where this kernel can (else it is filled
            // first, as live and lazy moves are refused without it).
            lazy: offer.mode != Mode::Stop || lazy::probe().is_ok(),
            known: Some(&known),
        };
        tracing::debug!("images in; restoring");
        let held = cryopod_pod::snapshot::restore_held(state, &ro, remote, Some(warmth), progress)?;
        tracing::debug!("restored, held");
        if let Err(e) = fault("serve-after-restore") {
            held.0.undo(state)?;
            return Err(e);
        }
        Ok((held, end))
    })();
    let ((held, outcome), end) = match made {
        Ok(m) => m,
        Err(e) => {
            let why = cryopod_engine::chain(&e);
            give_up(&mut link, &format!("the destination failed: {why}"));
            linger(link);
            return Err(e);
        }
    };
    // Made now: closing packet sockets takes a while, so they close only
    // after the commit, aside (see `cryopod_sys::packet::Sender`).
    let rec = held.record();
    let bridge = rec.spec.bridge.as_deref().unwrap_or(cryopod_pod::net::BRIDGE);
    let senders = rec.veth.as_deref().map(|v| {
        let open = |name: &str| {
            cryopod_sys::packet::Sender::new(name)
                .map_err(|e| tracing::info!(pod = %rec.name, "the frames caught while the pod moved are lost: {e}"))
                .ok()
        };
        (open(v), open(bridge))
    });
    let ready = format!("restored {} processes, held", outcome.processes);
    let mut caught = cryopod_sys::packet::Caught::default();
    let go = send_frame(&mut link, Kind::Ready, ready.as_bytes()).and_then(|_| loop {
        let f = read_frame(&mut link, "while waiting for the source to let its copy go")?;
        match f.kind {
            Kind::Frames if caught.to.len() < MAX_FRAMES => crate::frame::unpack_frames(&f.body, &mut caught.to)?,
            Kind::FramesOut if caught.from.len() < MAX_FRAMES => {
                crate::frame::unpack_frames(&f.body, &mut caught.from)?
            }
            Kind::Frames | Kind::FramesOut => {}
            _ => break Ok(f),
        }
    });
    tracing::debug!("the source's word came");
    let go = go.and_then(|f| fault("serve-after-commit").map(|_| f));
    match go {
        Ok(f) if f.kind == Kind::Commit => {}
        other => {
            let why = match other {
                Ok(f) if f.kind == Kind::Abort => format!("the source gave up: {}", f.text()),
                Ok(f) => format!("a {:?} frame where Commit was due", f.kind),
                Err(e) => cryopod_engine::chain(&e),
            };
            held.undo(state)?;
            // (The source, if it still listens, lets its copy run again.)
            give_up(&mut link, &format!("the destination gave up: {why}"));
            return Err(MigrateError::Aborted(peer.to_string(), why));
        }
    }
    let name = held.record().name.clone();
    // What reached it at the source while it moved, and what it sent
    // there that a locked port dropped: on their way before it runs.
    let deliver = |rec: &cryopod_pod::PodRecord| {
        let (to, from) = match &senders {
            Some((Some(to), Some(from))) => (to, from),
            _ => return,
        };
        if let Err(e) = to.send_all(&caught.to).and_then(|_| from.send_all(&caught.from)) {
            tracing::info!(pod = %rec.name, "the frames caught while the pod moved are lost: {e}");
        }
    };
    let committed = held.commit(state, deliver);
    for s in senders.into_iter().flat_map(|(a, b)| [a, b]).flatten() {
        s.close_aside();
    }
    match committed {
        Ok(cryopod_pod::held::Committed { rec, fill, arp }) => {
            let line = format!(
                "pod {} arrived from {peer} and runs here (host pid {}; frames caught while it moved: {} to it, {} \
                 from it)",
                rec.name,
                rec.init_pid,
                caught.to.len(),
                caught.from.len()
            );
            let sent = send_frame(&mut link, Kind::Done, line.as_bytes());
            tracing::debug!("Done sent");
            // Again, for a switch that missed the first (aside: the
            // frames go 50 ms apart, and a lazy move's pages wait).
            if let Some(a) = arp {
                let r = rec.clone();
                let _ = std::thread::Builder::new().name("announce".into()).spawn(move || {
                    cryopod_pod::held::announce(&r, Some(&a), 2);
                    a.close_aside();
                });
            }
            // (Only now: removing them may take tens of milliseconds.)
            drop(tmp);
            // The pod runs; its memory comes in behind it (live: the
            // source's copy is gone, whatever happened to the link; lazy:
            // from the source too, which keeps its copy until then).
            let filled = match (fill, end) {
                (Some(fill), Some(end)) => fill_from_source(&mut link, fill, &end, o.timeout),
                (fill, _) => fill.map(|f| f.finish()).transpose().map_err(MigrateError::from),
            };
            let line = match filled {
                Ok(None) => line,
                Ok(Some(s)) => format!("{line}; {}", describe(&s)),
                Err(e) => {
                    // (Its processes missing pages were killed first.)
                    let _ = cryopod_pod::lifecycle::stop(state, &name, Duration::from_secs(5));
                    let why = format!(
                        "pod {name} was killed here: its memory could not all be filled ({})",
                        cryopod_engine::chain(&e)
                    );
                    give_up(&mut link, &why);
                    linger(link);
                    return Err(MigrateError::Unfinished(why));
                }
            };
            sent?;
            Ok(line)
        }
        Err(e) => {
            let why = cryopod_engine::chain(&e);
            let _ = cryopod_pod::lifecycle::stop(state, &name, Duration::from_secs(5));
            give_up(&mut link, &format!("letting the pod run failed: {why}"));
            Err(e.into())
        }
    }
}

/// What the filling of a pod's memory did, in words.
fn describe(s: &lazy::LazyStats) -> String {
    format!(
        "its memory filled in {:.0} ms ({} bytes ahead, {} on {} faults, the longest {:.2} ms; {} bytes filled \
         from what the source sent, {} faults waited for it)",
        s.elapsed.as_secs_f64() * 1e3,
        s.pushed,
        s.faulted,
        s.faults,
        s.worst_fault.as_secs_f64() * 1e3,
        s.fetched,
        s.fetch_faults
    )
}

/// A lazy move's memory: the filler fills from the images here and from
/// what the source sends, while this thread carries the link (see
/// `crate::postcopy`); the source hears `Filled` once every page is in.
fn fill_from_source(
    link: &mut Link<TcpStream>,
    fill: cryopod_pod::held::LazyFill,
    end: &lazy::RemoteEnd,
    timeout: Duration,
) -> Result<Option<lazy::LazyStats>> {
    let finished = lazy::Bell::new().map_err(|e| MigrateError::io("making the filler's bell", e))?;
    let outcome: std::sync::Mutex<Option<std::result::Result<lazy::LazyStats, String>>> = Default::default();
    std::thread::scope(|sc| {
        sc.spawn(|| {
            let r = fill.finish().map_err(|e| cryopod_engine::chain(&e));
            *outcome.lock().unwrap_or_else(|p| p.into_inner()) = Some(r);
            finished.ring();
        });
        let done = || {
            let o = outcome.lock().unwrap_or_else(|p| p.into_inner());
            o.as_ref().map(|r| r.as_ref().map(describe).map_err(Clone::clone))
        };
        let carried = crate::postcopy::fetch(link, end, (&finished, &done), timeout);
        if let Err(e) = &carried {
            // The filler kills what still misses pages, and stops.
            end.deliver(lazy::Arrival::Lost(cryopod_engine::chain(e)));
        }
        carried
    })?;
    let o = outcome.into_inner().unwrap_or_else(|p| p.into_inner());
    match o {
        Some(Ok(s)) => Ok(Some(s)),
        Some(Err(why)) => Err(MigrateError::Protocol(why)),
        None => Err(MigrateError::Protocol("the page filler ended without a word".into())),
    }
}

/// After an `Abort`: read and drop what the source still sends, until it
/// closes or for 2 s at most, so that our close does not reset the
/// connection (a reset can discard the `Abort` before the source reads
/// it, and with it the reason).
fn linger(mut link: Link<TcpStream>) {
    let _ = link.get_ref().shutdown(std::net::Shutdown::Write);
    let _ = link.get_ref().set_read_timeout(Some(Duration::from_millis(200)));
    let until = std::time::Instant::now() + Duration::from_secs(2);
    let mut buf = vec![0u8; 64 << 10];
    while std::time::Instant::now() < until {
        match std::io::Read::read(link.get_mut_io(), &mut buf) {
            Ok(0) => return,
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock || e.kind() == std::io::ErrorKind::TimedOut => {}
            Err(_) => return,
        }
    }
}

/// Frames delivered to a pod that reached it at the source while it
/// moved, at most (each at most 64 KiB).
const MAX_FRAMES: usize = 4096;

/// Take the images of a move into `tmp` up to the last one (a live move's
/// rounds first, each a child of the one before); returns its path, and
/// cheap cgroup moves from its head on (the source sends it as the pod
/// stops: see [`cryopod_pod::cgroup::Warmth`]) until the restore. Each
/// round's chunks are checked as it arrives (`known`: while the pod still
/// runs at the source), so that the last image's restore checks only its
/// own.
fn receive_images(
    link: &mut Link<TcpStream>,
    tmp: &TempImage,
    (known, threads): (&mut KnownChunks, usize),
    store: Option<[u8; 16]>,
) -> Result<(std::path::PathBuf, cryopod_pod::cgroup::Warmth)> {
    for round in 0..=MAX_ROUNDS {
        let f = read_frame(link, "while waiting for an image")?;
        let head = match f.kind {
            Kind::Image => ImageHead::decode(&f.body)?,
            Kind::Abort => return Err(MigrateError::Aborted("the source".into(), f.text())),
            k => return Err(MigrateError::Protocol(format!("a {k:?} frame where an image was due"))),
        };
        if head.round != round {
            return Err(MigrateError::Protocol(format!("image {} came where {round} was due", head.name())));
        }
        let dir = tmp.named(&head.name());
        let warmth = head.last.then(cryopod_pod::Cgroup::keep_warm);
        crate::pipe::receive_stream(&mut *link, |r| {
            cryopod_engine::outdir::import_stream_as(&dir, r, Carry::OwnFiles { store })?;
            Ok(())
        })?;
        if let Some(w) = warmth {
            return Ok((dir, w));
        }
        let img = CheckedImage::open(&dir, None)?;
        let m = img.manifest();
        let packs = img.dir().packs(m)?;
        packs.verify_unknown(m, threads, known)?;
        known.add_all(&packs, m);
    }
    Err(MigrateError::Protocol(format!("more than {MAX_ROUNDS} pre-copy rounds")))
}

/// Describe this host's store to the source, if it has one (opened, and
/// returned, holding its lock shared).
fn described(link: &mut Link<TcpStream>, o: &ServeOptions) -> Result<Option<Store>> {
    let store = match &o.store {
        Some(p) => Some(Store::open(p, true, Lock::Shared)?),
        None => None,
    };
    let n = crate::holds::send_holds(link, store.as_ref())?;
    if let Some(s) = &store {
        tracing::debug!(chunks = n, store = %s.path().display(), "store described");
    }
    Ok(store)
}

/// Can this host take the pod? One sentence if not.
fn preflight(state: &StateDir, offer: &Offer) -> std::result::Result<(), String> {
    cryopod_pod::state::check_name(&offer.pod).map_err(|e| e.to_string())?;
    match state.load(&offer.pod) {
        Err(PodError::Unknown(_)) => {}
        Ok(_) => return Err(format!("a pod named {} exists here", offer.pod)),
        Err(e) => return Err(e.to_string()),
    }
    if let Some(ip) = &offer.ip {
        let taken = state
            .list()
            .map_err(|e| e.to_string())?
            .into_iter()
            .find(|r| r.spec.ip.is_some_and(|i| format!("{}/{}", i.addr, i.prefix) == *ip));
        if let Some(r) = taken {
            return Err(format!("address {ip} is pod {}'s here", r.name));
        }
    }
    if let Some(root) = &offer.rootfs {
        if !std::path::Path::new(root).is_dir() {
            return Err(format!("the pod's root file system {root} is not here"));
        }
    }
    // The files it maps, as it maps them, under its root here.
    let root = offer.rootfs.as_deref().unwrap_or("/");
    crate::files::check(std::path::Path::new(root), &offer.files)?;
    // What the pod's code may use of the source's CPU must be here too.
    cryopod_engine::cpu::check_image(&offer.cpu).map_err(|e| format!("this host's CPU cannot run it: {e}"))?;
    // Live and lazy: its memory is filled after it runs, through
    // userfaultfd.
    if offer.mode != Mode::Stop {
        cryopod_engine::lazy::probe().map_err(|e| {
            format!("this kernel cannot fill memory behind a running pod ({} mode): {e}", offer.mode.name())
        })?;
    }
    Ok(())
}
