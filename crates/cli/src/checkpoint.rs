//! `cryopod checkpoint`: its arguments, and the steps a pod's and a
//! tree's checkpoints share (the key, the tracking taken over, the base,
//! the stream, the summary, the tracking handed on).

use crate::{cpus, human, load_key, progress, store, streams};
use anyhow::{Context, Result};
use std::path::PathBuf;

#[derive(clap::Args)]
pub struct CheckpointArgs {
    /// The pod to checkpoint.
    #[arg(required_unless_present = "pid", conflicts_with = "pid")]
    pub name: Option<String>,
    /// Root of a process tree (all descendants and threads are included).
    #[arg(long)]
    pub pid: Option<i32>,
    /// Image directory (created; must not already hold an image), or
    /// `-` for one stream on stdout.
    #[arg(short, long)]
    pub output: PathBuf,
    /// Resume the tree afterwards instead of killing it.
    #[arg(long)]
    pub leave_running: bool,
    /// Worker threads for page data (default: number of CPUs).
    #[arg(long)]
    pub threads: Option<usize>,
    /// Compression of page data: a zstd level (1-19) or "none". Chunks
    /// that do not shrink by a page are stored raw.
    #[arg(long, default_value = "1", value_name = "LEVEL|none")]
    pub compress: cryopod_image::Compression,
    /// Leave out the pages of areas the program marked MADV_DONTDUMP:
    /// they come back zero-filled. Off by default: the mark says the
    /// data need not be in a core dump, not that it is dead.
    #[arg(long)]
    pub exclude_dontdump: bool,
    /// Keep unix sockets connected to peers outside the checkpoint (a
    /// daemon's /dev/log, a service's socket): recorded by the peer's name
    /// and connected to it again at restore, which needs the peer there.
    /// A stream comes back as a new connection, so the peer sees a new
    /// client: only for peers that take that (logging, stateless
    /// services). Refused otherwise.
    #[arg(long)]
    pub external_unix: bool,
    /// Incremental: store only the chunks the image PREV (and its own
    /// parents) does not hold; the new image needs PREV to restore.
    #[arg(long, value_name = "PREV")]
    pub parent: Option<PathBuf>,
    /// Keep the chunks in the shared store DIR (made if missing), each
    /// chunk once for every image there (see `cryopod gc`).
    #[arg(long, value_name = "DIR")]
    pub store: Option<PathBuf>,
    /// Keep tracking the tree's writes after this checkpoint (with
    /// --leave-running), so that the next checkpoint with `--parent` on
    /// this image reads only the pages written since. With --parent: take
    /// over the tracking the parent's checkpoint left.
    #[arg(long)]
    pub track: bool,
    /// Seal the image with the key in FILE: 32 raw bytes, or 64
    /// hexadecimal characters. Read once, so `/dev/fd/N` passes it by
    /// descriptor; the key itself is never written anywhere.
    #[arg(long, value_name = "FILE")]
    pub key: Option<PathBuf>,
}

pub fn run(state: &cryopod_pod::StateDir, a: CheckpointArgs) -> Result<i32> {
    let root = match (&a.name, a.pid) {
        // Only tracking needs the pod's first process here.
        (Some(name), _) if a.track => state.load(name).with_context(|| format!("no pod {name}"))?.init_pid,
        (Some(_), _) => 0,
        (None, pid) => pid.context("give a pod name or --pid")?,
    };
    let key = load_key(a.key.as_deref())?;
    let tracker = store::take_tracking(state, root, a.parent.as_deref(), a.track, a.leave_running)?;
    let stdio = streams::is_stdio(&a.output);
    let base = store::open_base(&a.output, (a.parent.as_deref(), a.store.as_deref()), stdio, key.as_ref())?;
    let (stream, output) = stream_target(a.output.clone())?;
    let threads = a.threads.unwrap_or_else(cpus);
    let bar = progress::Bar::new("checkpoint");
    let progress = |phase: &str, d: u64, t: u64| bar.update(phase, d, t);
    let s = match &a.name {
        Some(name) => {
            let opts = cryopod_pod::snapshot::PodCheckpointOptions {
                name: name.clone(),
                dir: output.clone(),
                leave_running: a.leave_running,
                threads,
                compress: a.compress,
                exclude_dontdump: a.exclude_dontdump,
                external_unix: a.external_unix,
                base: base.as_ref(),
                tracker: tracker.as_ref(),
                key: key.as_deref(),
                hold: false,
                precopy: false,
                leave_private: false,
            };
            cryopod_pod::snapshot::checkpoint(state, &opts, &progress)
                .with_context(|| format!("checkpoint of pod {name} failed"))?
        }
        None => {
            let opts = cryopod_engine::CheckpointOptions {
                pid: root,
                dir: output.clone(),
                leave_running: a.leave_running,
                cow: true,
                threads,
                compress: a.compress,
                key: key.as_deref(),
                exclude_dontdump: a.exclude_dontdump,
                external_unix: a.external_unix,
                pod: None,
                guard: None,
                armed: None,
                base: base.as_ref(),
                tracker: tracker.as_ref(),
                precopy: false,
                leave_private: false,
            };
            cryopod_engine::checkpoint(&opts, &progress).with_context(|| format!("checkpoint of pid {root} failed"))?
        }
    };
    bar.finish();
    print_checkpoint(&s, a.leave_running, &output);
    if let Some(t) = tracker {
        store::hold_tracking(state, t, &output)?;
    }
    to_stdout(stream, &output)
}

fn print_checkpoint(s: &cryopod_engine::CheckpointSummary, leave_running: bool, output: &std::path::Path) {
    let ms = |d: std::time::Duration| d.as_secs_f64() * 1e3;
    let frozen = match (leave_running, s.arm_stop) {
        (false, _) => String::new(),
        (true, None) => format!(", frozen {:.1} ms", ms(s.frozen)),
        (true, Some(a)) => format!(", frozen {:.1} ms ({:.1} ms of it arming)", ms(s.frozen), ms(a)),
    };
    eprintln!(
        "checkpointed {} processes ({} threads), {} of memory, image {} in {:.1} ms{} → {}",
        s.processes,
        s.threads,
        human(s.memory_bytes),
        human(s.image_bytes),
        s.elapsed.as_secs_f64() * 1e3,
        frozen,
        output.display()
    );
    if let Some(why) = &s.fallback {
        eprintln!("note: {why}; the checkpoint was taken again with the tree frozen throughout");
    }
    if let Some(base) = &s.base {
        eprintln!(
            "incremental {base}: {} new ({} stored), {} not written again",
            human(s.chunks.new_bytes),
            human(s.chunks.stored_bytes),
            human(s.chunks.reused_bytes)
        );
    }
}

/// For `-o -`: a private directory the image goes to first (kept until
/// it is streamed), and the path to write it to.
fn stream_target(output: PathBuf) -> Result<(Option<streams::TempImage>, PathBuf)> {
    if !streams::is_stdio(&output) {
        return Ok((None, output));
    }
    anyhow::ensure!(
        !std::io::IsTerminal::is_terminal(&std::io::stdout()),
        "-o - writes the image to stdout, which is a terminal: redirect it"
    );
    let t = streams::TempImage::new()?;
    let path = t.image();
    Ok((Some(t), path))
}

/// Stream the image made in `dir` for `-o -`, then remove it.
fn to_stdout(stream: Option<streams::TempImage>, dir: &std::path::Path) -> Result<i32> {
    if let Some(t) = stream {
        match streams::export(dir, std::path::Path::new("-")) {
            Ok(n) => eprintln!("streamed the image to stdout ({})", human(n)),
            // The tree may be gone: the image must not be.
            Err(e) => return Err(e.context(format!("the image is kept in {}", t.keep().display()))),
        }
    }
    Ok(0)
}
