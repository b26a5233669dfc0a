//! The source's side of a migration (`cryopod migrate`), stop mode: offer
//! the pod, hold it (frozen, network locked) once checkpointed, stream the
//! image, and end it here only once the destination runs it. Every
//! failure before the destination's `Ready` lets the pod run here again.

use crate::frame::{give_up, read_frame, send_frame, DataWriter, Kind};
use crate::link::Link;
use crate::offer::{Mode, Offer};
use crate::{fault, MigrateError, Result};
use cryopod_engine::outdir::TempImage;
use cryopod_engine::Progress;
use cryopod_image::ImageKey;
use cryopod_pod::snapshot::PodCheckpointOptions;
use cryopod_pod::StateDir;
use std::net::{TcpStream, ToSocketAddrs};
use std::time::{Duration, Instant};

pub struct SendOptions<'a> {
    pub pod: &'a str,
    /// The destination, ADDR:PORT.
    pub to: &'a str,
    pub key: &'a ImageKey,
    pub mode: Mode,
    pub threads: usize,
    pub compress: cryopod_image::Compression,
    /// How long the destination may stay silent at any step.
    pub timeout: Duration,
}

/// What a migration did.
#[derive(Debug)]
pub struct SendReport {
    /// Image stream bytes sent.
    pub bytes: u64,
    /// From the freeze until the destination said the pod runs there.
    pub stopped: Duration,
    pub total: Duration,
    /// The destination's own words.
    pub remote: String,
}

/// Move pod `o.pod` of `state` to the host at `o.to`.
pub fn migrate(state: &StateDir, o: &SendOptions, progress: Progress) -> Result<SendReport> {
    let t0 = Instant::now();
    if o.mode != Mode::Stop {
        return Err(MigrateError::Protocol(format!(
            "--mode {} is not implemented yet: use --mode stop",
            o.mode.name()
        )));
    }
    let rec = state.load(o.pod)?;
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
    };
    send_frame(&mut link, Kind::Offer, &offer.encode()?)?;
    let answer = read_frame(&mut link, "while waiting for an answer to the offer")?;
    match answer.kind {
        Kind::Accept => {}
        Kind::Refuse => return Err(MigrateError::Refused(o.to.to_string(), answer.text())),
        k => return Err(MigrateError::Protocol(format!("a {k:?} frame in answer to an offer"))),
    }
    if let Err(e) = fault("migrate-after-accept") {
        give_up(&mut link, "the source stopped the move");
        return Err(e);
    }
    // The image lives in memory (a tmpfs) only as long as the move.
    let tmp = TempImage::new_in(std::path::Path::new("/dev/shm"))?;
    let t_stop = Instant::now();
    let copts = PodCheckpointOptions {
        name: rec.name.clone(),
        dir: tmp.image(),
        leave_running: false,
        threads: o.threads,
        compress: o.compress,
        exclude_dontdump: false,
        base: None,
        tracker: None,
        key: None,
        hold: true,
    };
    let held = match cryopod_pod::snapshot::checkpoint_held(state, &copts, progress) {
        Ok((_, held)) => held,
        Err(e) => {
            give_up(&mut link, &format!("the checkpoint at the source failed: {e}"));
            return Err(e.into());
        }
    };
    // From here until Ready, any failure lets the pod run here again.
    let sent = (|| -> Result<u64> {
        fault("migrate-after-hold")?;
        let img = cryopod_image::ImageDir::open(&tmp.image())?;
        let mut w = DataWriter::new(&mut link);
        cryopod_image::stream::export(&img, &mut w)?;
        let bytes = w.finish()?;
        drop(tmp);
        fault("migrate-after-stream")?;
        let f = read_frame(&mut link, "while the destination restored the pod")?;
        match f.kind {
            Kind::Ready => fault("migrate-after-ready").map(|_| bytes),
            Kind::Abort => Err(MigrateError::Aborted(o.to.to_string(), f.text())),
            k => Err(MigrateError::Protocol(format!("a {k:?} frame in answer to the image"))),
        }
    })();
    let bytes = match sent {
        Ok(s) => s,
        Err(e) => {
            // The destination may have stopped first and said why: that is
            // the error to report (ours is only the broken pipe).
            let e = match &e {
                MigrateError::Io { .. } | MigrateError::Image(_) => {
                    match read_frame(&mut link, "after a failed send") {
                        Ok(f) if f.kind == Kind::Abort => MigrateError::Aborted(o.to.to_string(), f.text()),
                        _ => e,
                    }
                }
                _ => e,
            };
            give_up(&mut link, "the source stopped the move");
            held.resume()?;
            return Err(e);
        }
    };
    // The pod's address here answers nothing (locked): let the
    // destination's copy run.
    let done =
        send_frame(&mut link, Kind::Commit, &[]).and_then(|_| read_frame(&mut link, "after the pod was handed over"));
    match done {
        Ok(f) if f.kind == Kind::Done => {
            let stopped = t_stop.elapsed();
            held.end(state)?;
            if let Err(e) = state.note_departure(&rec.name, o.to) {
                tracing::warn!(pod = %rec.name, "{e}");
            }
            Ok(SendReport { bytes, stopped, total: t0.elapsed(), remote: f.text() })
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
                Err(e) => e.to_string(),
            };
            let name = held.name().to_string();
            held.abandon();
            Err(MigrateError::Protocol(format!(
                "after the pod was handed over, {} did not confirm it runs ({why}): pod {name} is kept here, frozen \
                 with its network locked, so that it never runs twice; check {} and then stop one of the two copies",
                o.to, o.to
            )))
        }
    }
}
