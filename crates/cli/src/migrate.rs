//! `cryopod migrate` and `cryopod serve`: a pod moves to another host over
//! an authenticated, encrypted link (see the migrate crate and
//! docs/MIGRATION.md).

use anyhow::{Context, Result};
use clap::Args;
use cryopod_migrate::offer::Mode;
use std::path::PathBuf;
use std::time::Duration;

#[derive(Args)]
pub struct MigrateArgs {
    /// The pod to move.
    pub name: String,
    /// The destination host, where `cryopod serve` listens: ADDR:PORT.
    #[arg(long, value_name = "ADDR:PORT")]
    pub to: String,
    /// The key file both hosts hold (32 bytes, or 64 hexadecimal digits).
    #[arg(long, value_name = "FILE")]
    pub key: PathBuf,
    /// live: send memory while the pod runs, in rounds of what it wrote
    /// since, then stop it briefly for the rest; lazy: stop it briefly,
    /// let it run at once at the destination and send its memory after
    /// (what it touches first, first); stop: freeze, send, restore.
    #[arg(long, default_value = "live", value_parser = ["stop", "live", "lazy"])]
    pub mode: String,
    /// Live mode: pre-copy rounds go on until what is left should take at
    /// most this long to send (milliseconds).
    #[arg(long, value_name = "MS", default_value_t = 100)]
    pub max_downtime: u64,
    /// Pre-copy rounds at most (default: up to 8 in live mode, none in
    /// lazy mode, where pages sent in rounds need not follow later).
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(0..=8))]
    pub rounds: Option<u32>,
    /// Seconds the other host may stay silent at any step.
    #[arg(long, default_value_t = 120)]
    pub timeout: u64,
}

#[derive(Args)]
pub struct ServeArgs {
    /// Where to accept migrations: ADDR:PORT.
    #[arg(long, value_name = "ADDR:PORT")]
    pub listen: String,
    /// The key file both hosts hold.
    #[arg(long, value_name = "FILE")]
    pub key: PathBuf,
    /// Seconds a peer may stay silent at any step.
    #[arg(long, default_value_t = 120)]
    pub timeout: u64,
    /// An existing bridge for the veths of the pods that arrive (see
    /// `run --bridge`); default: cryopod's own.
    #[arg(long, value_name = "BR")]
    pub bridge: Option<String>,
    /// A chunk store of this host (see `checkpoint --store`; made if
    /// missing): the chunks of a pod's memory it holds already are not
    /// sent by the source, but read from it here.
    #[arg(long, value_name = "DIR")]
    pub store: Option<PathBuf>,
}

fn mode(name: &str) -> Mode {
    match name {
        "live" => Mode::Live,
        "lazy" => Mode::Lazy,
        _ => Mode::Stop,
    }
}

pub fn migrate(state: &cryopod_pod::StateDir, a: MigrateArgs) -> Result<i32> {
    let key = cryopod_image::ImageKey::from_file(&a.key)?;
    let o = cryopod_migrate::send::SendOptions {
        pod: &a.name,
        to: &a.to,
        key: &key,
        mode: mode(&a.mode),
        max_downtime: Duration::from_millis(a.max_downtime),
        rounds: a.rounds,
        threads: crate::cpus(),
        compress: cryopod_image::Compression::default(),
        timeout: Duration::from_secs(a.timeout.max(1)),
    };
    let bar = crate::progress::Bar::new("migrate");
    let r = cryopod_migrate::send::migrate(state, &o, &|phase, d, t| bar.update(phase, d, t))
        .with_context(|| format!("migration of pod {} to {} failed", a.name, a.to))?;
    bar.finish();
    for (k, round) in r.rounds.iter().enumerate() {
        eprintln!(
            "pre-copy round {k}: {} read, {} sent in {:.1} ms (pod stopped {:.1} ms)",
            crate::human(round.read),
            crate::human(round.bytes),
            round.took.as_secs_f64() * 1e3,
            round.frozen.as_secs_f64() * 1e3
        );
    }
    eprintln!(
        "migrated pod {} to {} in {:.1} ms (stopped {:.1} ms, {} sent for {} of memory, {} pre-copy rounds): {}",
        a.name,
        a.to,
        r.total.as_secs_f64() * 1e3,
        r.stopped.as_secs_f64() * 1e3,
        crate::human(r.bytes),
        crate::human(r.memory),
        r.rounds.len(),
        r.remote
    );
    if r.held > 0 {
        eprintln!("{} of its memory was in the destination's store already: not sent", crate::human(r.held));
    }
    if let Some(p) = &r.postcopy {
        eprintln!(
            "after it ran there: {} pushed, {} sent again or first for {} faults",
            crate::human(p.pushed),
            crate::human(p.wanted),
            p.wants
        );
    }
    Ok(0)
}

#[derive(Args)]
pub struct DrainArgs {
    /// The destination host, where `cryopod serve` listens: ADDR:PORT.
    #[arg(long, value_name = "ADDR:PORT")]
    pub to: String,
    /// The key file both hosts hold.
    #[arg(long, value_name = "FILE")]
    pub key: PathBuf,
    /// Seconds the other host may stay silent at any step.
    #[arg(long, default_value_t = 120)]
    pub timeout: u64,
    /// How each pod moves (see `migrate --mode`).
    #[arg(long, default_value = "live", value_parser = ["stop", "live", "lazy"])]
    pub mode: String,
}

/// Move every running pod of this host to `a.to`, one after the other;
/// one line per pod; exit status 1 if any stayed.
pub fn drain(state: &cryopod_pod::StateDir, a: DrainArgs) -> Result<i32> {
    let pods: Vec<String> = state.list()?.into_iter().filter(|r| r.alive()).map(|r| r.name).collect();
    let mut failed = 0;
    for name in &pods {
        let m = MigrateArgs {
            name: name.clone(),
            to: a.to.clone(),
            key: a.key.clone(),
            mode: a.mode.clone(),
            max_downtime: 100,
            rounds: None,
            timeout: a.timeout,
        };
        if let Err(e) = migrate(state, m) {
            eprintln!("cryopod: pod {name} stays here: {e:#}");
            failed += 1;
        }
    }
    eprintln!("drained {} of {} pods to {}", pods.len() - failed, pods.len(), a.to);
    Ok(if failed > 0 { 1 } else { 0 })
}

pub fn serve(state: &cryopod_pod::StateDir, a: ServeArgs) -> Result<i32> {
    let key = cryopod_image::ImageKey::from_file(&a.key)?;
    let listener = std::net::TcpListener::bind(&a.listen).with_context(|| format!("cannot listen on {}", a.listen))?;
    eprintln!("serving migrations on {}", a.listen);
    let o = cryopod_migrate::receive::ServeOptions {
        key: &key,
        threads: crate::cpus(),
        timeout: Duration::from_secs(a.timeout.max(1)),
        bridge: a.bridge,
        store: a.store.as_deref().map(std::path::absolute).transpose().context("the store's path")?,
    };
    cryopod_migrate::receive::serve(&listener, state, &o, &|line| eprintln!("{line}"))?;
    Ok(0)
}
