//! The source's side of a migration (`cryopod migrate`): offer the pod;
//! in live mode, send pre-copy rounds while it runs (each round's image a
//! tracked child of the one before, holding only the pages written since);
//! then hold it (frozen, network locked) once checkpointed for the last
//! time, stream that last image, and end the pod here only once the
//! destination runs it. Every failure before the destination's `Ready`
//! lets the pod run here again.

use crate::frame::{give_up, read_frame, send_frame, ImageHead, Kind};
use crate::link::Link;
use crate::offer::{Mode, Offer};
use crate::{fault, MigrateError, Result};
use cryopod_engine::outdir::TempImage;
use cryopod_engine::track::Tracker;
use cryopod_engine::Progress;
use cryopod_image::chain::{Base, FarStore};
use cryopod_image::stream::Carry;
use cryopod_image::{ImageDir, ImageKey, ImageOwner};
use cryopod_pod::snapshot::PodCheckpointOptions;
use cryopod_pod::{PodRecord, StateDir};
use std::net::{TcpStream, ToSocketAddrs};
use std::path::Path;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Bytes of frames caught for the pod while it moves, at most.
const MAX_CAUGHT: usize = 4 << 20;

/// Pre-copy rounds at most, the last (frozen) one not counted.
pub const MAX_ROUNDS: u32 = 8;

pub struct SendOptions<'a> {
    pub pod: &'a str,
    /// The destination, ADDR:PORT.
    pub to: &'a str,
    pub key: &'a ImageKey,
    pub mode: Mode,
    /// Live mode: pre-copy ends once what is left should go in this long.
    pub max_downtime: Duration,
    /// Pre-copy rounds at most (None: the mode's own, `MAX_ROUNDS` live,
    /// none lazy; never more than `MAX_ROUNDS`; stop mode has none).
    pub rounds: Option<u32>,
    pub threads: usize,
    pub compress: cryopod_image::Compression,
    /// How long the destination may stay silent at any step.
    pub timeout: Duration,
}

/// One pre-copy round.
#[derive(Debug, Clone)]
pub struct RoundReport {
    /// Image stream bytes sent.
    pub bytes: u64,
    /// Bytes of memory read (all of it in round 0, then what was written).
    pub read: u64,
    /// How long the pod stopped for it (its state taken, tracking reset).
    pub frozen: Duration,
    pub took: Duration,
}

/// What a migration did.
#[derive(Debug)]
pub struct SendReport {
    /// Image stream bytes sent, pre-copy rounds included.
    pub bytes: u64,
    /// The memory of the pod (bytes), for the ratio.
    pub memory: u64,
    pub rounds: Vec<RoundReport>,
    /// From the start of the last checkpoint (the pod frozen a few ms
    /// into it) until the destination said the pod runs there.
    pub stopped: Duration,
    pub total: Duration,
    /// The destination's own words.
    pub remote: String,
    /// Lazy: what was sent after the commit (the pages left out).
    pub postcopy: Option<crate::postcopy::Served>,
    /// Bytes of the pod's memory (as its last image has it) that the
    /// destination's store held, so that they were not sent.
    pub held: u64,
}

/// Move pod `o.pod` of `state` to the host at `o.to`.
pub fn migrate(state: &StateDir, o: &SendOptions, progress: Progress) -> Result<SendReport> {
    let t0 = Instant::now();
    let max_rounds = match o.mode {
        Mode::Stop => 0,
        Mode::Live => o.rounds.unwrap_or(MAX_ROUNDS),
        Mode::Lazy => o.rounds.unwrap_or(0),
    }
    .min(MAX_ROUNDS);
    let rec = state.load(o.pod)?;
    // Its processes could not take a userfaultfd for what stays here.
    if o.mode == Mode::Lazy && rec.spec.userns {
        return Err(MigrateError::Pod(cryopod_pod::PodError::Invalid(format!(
            "pod {} has a user namespace of its own (--userns), whose processes may not get the userfaultfd a lazy \
             move fills their memory through: move it with --mode live or stop",
            rec.name
        ))));
    }
    let addr =
        o.to.to_socket_addrs()
            .map_err(|e| MigrateError::io(format!("resolving {}", o.to), e))?
            .next()
            .ok_or_else(|| MigrateError::Protocol(format!("{} names no address", o.to)))?;
    let tcp = TcpStream::connect_timeout(&addr, o.timeout)
        .map_err(|e| MigrateError::io(format!("connecting to {}", o.to), e))?;
    tcp.set_read_timeout(Some(o.timeout))
        .and_then(|_| tcp.set_write_timeout(Some(o.timeout)))
        .map_err(|e| MigrateError::io("setting the connection's timeouts", e))?;
    let _ = tcp.set_nodelay(true);
    let mut link = Link::connect(tcp, o.key, o.to)?;
    let offer = Offer {
        pod: rec.name.clone(),
        mode: o.mode,
        ip: rec.spec.ip.map(|i| format!("{}/{}", i.addr, i.prefix)),
        rootfs: rec.spec.rootfs.as_ref().map(|p| p.display().to_string()),
        cpu: cryopod_engine::cpu::record(),
        kernel: cryopod_sys::ns::kernel_release(),
        files: crate::files::mapped(&cryopod_pod::Cgroup::of(state, &rec.name).procs()?)
            .map_err(|e| MigrateError::Protocol(format!("cannot list the files pod {} maps: {e}", rec.name)))?,
    };
    send_frame(&mut link, Kind::Offer, &offer.encode()?)?;
    let answer = read_frame(&mut link, "while waiting for an answer to the offer")?;
    match answer.kind {
        Kind::Accept => {}
        Kind::Refuse => return Err(MigrateError::Refused(o.to.to_string(), answer.text())),
        k => return Err(MigrateError::Protocol(format!("a {k:?} frame in answer to an offer"))),
    }
    // What the destination holds already: named, not sent.
    let far = match fault("migrate-after-accept").and_then(|_| crate::holds::receive_holds(&mut link)) {
        Ok(f) => f,
        Err(e) => {
            give_up(&mut link, &format!("the source stopped the move: {e}"));
            return Err(e);
        }
    };
    let far = far.as_ref();
    // The images live in memory (a tmpfs) only as long as the move.
    let tmp = TempImage::in_memory()?;
    // Live: rounds while the pod runs, each reading what was written since
    // the one before; their bytes are what the last one need not send.
    let mut rounds = Vec::new();
    let tracker = match max_rounds {
        1.. => {
            let armed = Tracker::arm(rec.init_pid).map(Mutex::new).map_err(MigrateError::from);
            let sent = |t: Mutex<Tracker>| {
                precopy(&mut link, state, &rec, (o, max_rounds), (&t, &tmp, far), &mut rounds, progress).map(|_| t)
            };
            match armed.and_then(sent) {
                Ok(t) => Some(t),
                Err(e) => {
                    let e = their_reason(&mut link, o.to, e);
                    give_up(&mut link, &format!("the source stopped the move: {e}"));
                    return Err(e);
                }
            }
        }
        0 => None,
    };
    let head = ImageHead { round: rounds.len() as u32, last: true };
    let dir = tmp.named(&head.name());
    let base = match base_on(&tmp, rounds.len() as u32, far) {
        Ok(b) => b,
        Err(e) => {
            give_up(&mut link, &format!("the source stopped the move: {e}"));
            return Err(e);
        }
    };
    let copts = PodCheckpointOptions {
        name: rec.name.clone(),
        dir: dir.clone(),
        leave_running: false,
        threads: o.threads,
        compress: o.compress,
        exclude_dontdump: false,
        external_unix: false,
        base: base.as_ref(),
        tracker: tracker.as_ref(),
        key: None,
        hold: true,
        precopy: false,
        leave_private: o.mode == Mode::Lazy,
    };
    // What reaches the pod here from now until the destination has it is
    // caught, to be delivered there (its peers then need not wait for
    // their retransmission timeouts).
    let catcher = cryopod_pod::held::hw_addr(&rec)
        .map_err(|e| e.to_string())
        .and_then(|mac| cryopod_sys::packet::Catcher::new(mac).map_err(|e| e.to_string()))
        .map_err(|e| tracing::info!("frames that reach the pod while it moves are lost: {e}"))
        .ok();
    // (Those caught until now reached it: only what comes from about its
    // lock on is kept. The few that may still come in between reach it
    // twice, which TCP ignores and UDP allows.)
    if let Some(c) = &catcher {
        let _ = c.take(&mut Default::default(), 0);
    }
    // (What came before ran beside the pod: the base opened, the catcher
    // set; the pod stops inside this call.) The last image's head goes
    // first: the destination readies itself while the pod is checkpointed.
    let t_stop = Instant::now();
    if let Err(e) = send_frame(&mut link, Kind::Image, &head.encode()) {
        give_up(&mut link, &format!("the source stopped the move: {e}"));
        return Err(e);
    }
    let (summary, held) = match cryopod_pod::snapshot::checkpoint_held(state, &copts, progress) {
        Ok(h) => h,
        Err(e) => {
            give_up(&mut link, &format!("the checkpoint at the source failed: {e}"));
            return Err(e.into());
        }
    };
    // (Frozen now: tracking has nothing more to tell.)
    drop(tracker);
    drop(base);
    // From here until Ready, any failure lets the pod run here again.
    let sent = (|| -> Result<u64> {
        fault("migrate-after-hold")?;
        let mut bytes = send_image_files(&mut link, &dir, far)?;
        tracing::debug!(ms = t_stop.elapsed().as_secs_f64() * 1e3, bytes, "last image sent");
        if o.mode == Mode::Lazy {
            bytes += crate::postcopy::send_left(&mut link, &summary.left)?;
        }
        // (The images here go only at the end: freeing a gigabyte of
        // tmpfs takes tens of milliseconds, which the pod would wait.)
        fault("migrate-after-stream")?;
        let f = read_frame(&mut link, "while the destination restored the pod")?;
        match f.kind {
            Kind::Ready => {
                tracing::debug!(ms = t_stop.elapsed().as_secs_f64() * 1e3, "the destination holds the pod");
                fault("migrate-after-ready").map(|_| bytes)
            }
            Kind::Abort => Err(MigrateError::Aborted(o.to.to_string(), f.text())),
            k => Err(MigrateError::Protocol(format!("a {k:?} frame in answer to the image"))),
        }
    })();
    let bytes = match sent {
        Ok(s) => s,
        Err(e) => {
            let e = their_reason(&mut link, o.to, e);
            give_up(&mut link, "the source stopped the move");
            held.resume()?;
            return Err(e);
        }
    };
    // The pod's address here answers nothing (locked): let the
    // destination's copy run, with what reached it here meanwhile.
    let mut caught = cryopod_sys::packet::Caught::default();
    if let Some(c) = &catcher {
        if let Err(e) = c.take(&mut caught, MAX_CAUGHT) {
            tracing::info!("frames that reached the pod while it moved are lost: {e}");
        }
    }
    let bodies: Vec<(Kind, Vec<u8>)> = (crate::frame::pack_frames(&caught.to).into_iter().map(|b| (Kind::Frames, b)))
        .chain(crate::frame::pack_frames(&caught.from).into_iter().map(|b| (Kind::FramesOut, b)))
        .collect();
    let done = bodies
        .iter()
        .try_for_each(|(k, b)| crate::frame::write_frame(&mut link, *k, b))
        .and_then(|_| send_frame(&mut link, Kind::Commit, &[]))
        .and_then(|_| read_frame(&mut link, "after the pod was handed over"));
    match done {
        Ok(f) if f.kind == Kind::Done => {
            let stopped = t_stop.elapsed();
            // Lazy: it runs there; its pages left out go from here, until
            // every one is in.
            let postcopy = match o.mode {
                Mode::Lazy => match crate::postcopy::serve(&mut link, &summary.left, o.timeout) {
                    Ok(s) => Some(s),
                    Err(e) => {
                        let why = cryopod_engine::chain(&their_reason(&mut link, o.to, e));
                        let what = format!(
                            "pod {} runs at {}, but its memory could not all be sent there ({why}); {} kills it if \
                             it missed pages",
                            held.name(),
                            o.to,
                            o.to
                        );
                        return Err(kept_frozen(held, o.to, &what));
                    }
                },
                _ => None,
            };
            held.end(state)?;
            if let Err(e) = state.note_departure(&rec.name, o.to) {
                tracing::warn!(pod = %rec.name, "{e}");
            }
            let after = postcopy.as_ref().map_or(0, |p| p.pushed + p.wanted);
            let held_bytes = match far {
                Some(_) => in_store(&dir).unwrap_or_else(|e| {
                    tracing::info!("cannot tell what the destination held: {e}");
                    0
                }),
                None => 0,
            };
            Ok(SendReport {
                bytes: bytes + after + rounds.iter().map(|r| r.bytes).sum::<u64>(),
                memory: summary.memory_bytes,
                rounds,
                stopped,
                total: t0.elapsed(),
                remote: postcopy.as_ref().map_or_else(|| f.text(), |p| format!("{}; {}", f.text(), p.report)),
                postcopy,
                held: held_bytes,
            })
        }
        Ok(f) if f.kind == Kind::Abort => {
            held.resume()?;
            Err(MigrateError::Aborted(o.to.to_string(), f.text()))
        }
        // Handed over, then silence: it may run there. Not run twice: it
        // stays frozen here, said so.
        other => {
            let why = match other {
                Ok(f) => format!("a {:?} frame", f.kind),
                Err(e) => cryopod_engine::chain(&e),
            };
            let what = format!("after the pod was handed over, {} did not confirm it runs ({why})", o.to);
            Err(kept_frozen(held, o.to, &what))
        }
    }
}

/// A move that failed once the destination may run the pod (`what`
/// happened): the copy here is kept frozen and locked, never resumed on
/// our own, and the error says so.
fn kept_frozen(held: cryopod_pod::held::HeldPod, to: &str, what: &str) -> MigrateError {
    let name = held.name().to_string();
    held.abandon();
    MigrateError::Unfinished(format!(
        "{what}: pod {name} is kept here, frozen with its network locked, so that it never runs twice; check {to} \
         and then stop one of the two copies"
    ))
}

/// Pre-copy rounds while the pod runs, until what is left should go
/// within `o.max_downtime`, stops shrinking, or `max_rounds` were sent.
fn precopy(
    link: &mut Link<TcpStream>,
    state: &StateDir,
    rec: &PodRecord,
    (o, max_rounds): (&SendOptions, u32),
    (tracker, tmp, far): (&Mutex<Tracker>, &TempImage, Option<&FarStore>),
    rounds: &mut Vec<RoundReport>,
    progress: Progress,
) -> Result<()> {
    for k in 0..max_rounds {
        let t = Instant::now();
        let head = ImageHead { round: k, last: false };
        let dir = tmp.named(&head.name());
        let base = base_on(tmp, k, far)?;
        let copts = PodCheckpointOptions {
            name: rec.name.clone(),
            dir: dir.clone(),
            leave_running: true,
            threads: o.threads,
            compress: o.compress,
            exclude_dontdump: false,
            external_unix: false,
            base: base.as_ref(),
            tracker: Some(tracker),
            key: None,
            hold: false,
            precopy: true,
            leave_private: false,
        };
        let s = cryopod_pod::snapshot::checkpoint(state, &copts, progress)?;
        {
            let mut t = tracker.lock().unwrap_or_else(|p| p.into_inner());
            // Processes new since the last round are tracked from now on
            // (the next round reads them whole).
            t.arm_pending()?;
            t.set_since(ImageDir::open(&dir)?.manifest_hash());
        }
        let t_send = Instant::now();
        send_frame(link, Kind::Image, &head.encode())?;
        let bytes = send_image_files(link, &dir, far)?;
        let sending = t_send.elapsed();
        // The destination says nothing during the rounds unless it gives up.
        if link.pending() {
            let f = read_frame(link, "between pre-copy rounds")?;
            return Err(match f.kind {
                Kind::Abort => MigrateError::Aborted(o.to.to_string(), f.text()),
                k => MigrateError::Protocol(format!("a {k:?} frame between pre-copy rounds")),
            });
        }
        let read = s.chunks.tracked.map_or(s.memory_bytes, |(read, _)| read);
        rounds.push(RoundReport { bytes, read, frozen: s.frozen, took: t.elapsed() });
        tracing::info!(round = k, bytes, read, frozen_ms = s.frozen.as_secs_f64() * 1e3, "pre-copy round sent");
        fault("migrate-after-round")?;
        // What the next round would read was written while this one ran;
        // the last round reads it with the pod stopped.
        let rate = bytes as f64 / sending.as_secs_f64().max(1e-6);
        let fits = read as f64 <= rate * o.max_downtime.as_secs_f64() / 2.0;
        let shrinking = match rounds.len() {
            1 => true,
            n => read * 10 < rounds[n - 2].read * 9,
        };
        if k > 0 && (fits || !shrinking) {
            break;
        }
    }
    Ok(())
}

/// The destination may have stopped first and said why: that is the
/// error to report, when ours is only the broken pipe. (Waited for
/// briefly: a destination that said nothing has nothing to say.)
fn their_reason(link: &mut Link<TcpStream>, to: &str, e: MigrateError) -> MigrateError {
    match &e {
        MigrateError::Io { .. } | MigrateError::Image(_) => {
            let _ = link.get_ref().set_read_timeout(Some(Duration::from_secs(2)));
            // (Behind what it said before: a lazy move's wants.)
            let until = Instant::now() + Duration::from_secs(2);
            while Instant::now() < until {
                match read_frame(link, "after a failed send") {
                    Ok(f) if f.kind == Kind::Abort => return MigrateError::Aborted(to.to_string(), f.text()),
                    Ok(_) => {}
                    Err(_) => break,
                }
            }
            e
        }
        _ => e,
    }
}

/// The base of round `k`'s image: round `k - 1`'s, its sibling (none for
/// the first), and what the destination's store holds (`far`).
fn base_on(tmp: &TempImage, k: u32, far: Option<&FarStore>) -> Result<Option<Base>> {
    let dir = tmp.named(&ImageHead { round: k, last: false }.name());
    let parent = k.checked_sub(1).map(|p| tmp.named(&ImageHead { round: p, last: false }.name()));
    let mut base = match (far, &parent) {
        (Some(f), parent) => Base::far(ImageOwner::current(), parent.as_deref(), f)?,
        (None, Some(parent)) => Base::open(&dir, ImageOwner::current(), (Some(parent), None), None)?,
        (None, None) => return Ok(None),
    };
    base.link_as_sibling(&dir)?;
    Ok(Some(base))
}

/// Bytes of memory the image at `dir` names in its store.
fn in_store(dir: &Path) -> Result<u64> {
    let m = ImageDir::open(dir)?.manifest()?;
    let homed = |c: &&cryopod_image::Chunk| {
        m.packs.get(c.pack as usize).is_some_and(|p| p.home == cryopod_image::PackHome::Store)
    };
    Ok(m.chunks.iter().filter(homed).map(|c| u64::from(c.len)).sum())
}

/// Send the image at `dir` (its own files: its parents went before, and
/// the chunks it names in the destination's store `far` are there), its
/// `Image` head sent already.
fn send_image_files(link: &mut Link<TcpStream>, dir: &Path, far: Option<&FarStore>) -> Result<u64> {
    let img = ImageDir::open(dir)?;
    let carry = Carry::OwnFiles { store: far.map(|f| f.store_id) };
    crate::pipe::send_stream(link, |w| {
        cryopod_image::stream::export_as(&img, &mut { w }, carry)?;
        Ok(())
    })
}
