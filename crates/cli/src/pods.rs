//! The pod commands: run, ps, exec, stop, logs.

use anyhow::{Context, Result};
use cryopod_pod::create::RunOptions;
use cryopod_pod::lifecycle;
use cryopod_pod::state::IpConfig;
use cryopod_pod::{PodSpec, StateDir};
use std::path::PathBuf;
use std::time::Duration;

/// The pod's PID 1, built static by build.rs and run from a memfd.
pub static INIT_PROGRAM: &[u8] = include_bytes!(env!("CRYOPOD_INIT_BIN"));

#[derive(clap::Args)]
pub struct RunArgs {
    /// Name of the pod (default: pod-<pid of this command>).
    #[arg(long)]
    pub name: Option<String>,
    /// Detach: return once the pod runs; its output goes to `cryopod logs`.
    #[arg(short = 'd', long)]
    pub detach: bool,
    /// Root file system for the pod (pivot_root into it).
    #[arg(long)]
    pub rootfs: Option<PathBuf>,
    /// Host name inside the pod (default: the pod's name).
    #[arg(long)]
    pub hostname: Option<String>,
    /// The pod's one IPv4 address with prefix, e.g. 10.77.0.2/24.
    #[arg(long)]
    pub ip: Option<String>,
    /// Memory limit in bytes (suffixes K, M, G accepted).
    #[arg(long)]
    pub memory: Option<String>,
    /// Most processes and threads the pod may have.
    #[arg(long)]
    pub pids: Option<u64>,
    /// CPU time limit in CPUs (e.g. 0.5).
    #[arg(long)]
    pub cpus: Option<f64>,
    /// Map the pod's root to an unprivileged user on the host.
    #[arg(long)]
    pub userns: bool,
    /// An existing bridge for the pod's veth (e.g. one joined to the LAN,
    /// so that other machines reach the pod's address), used as it is.
    #[arg(long, value_name = "BR")]
    pub bridge: Option<String>,
    /// Command to run in the pod.
    #[arg(last = true, required = true)]
    pub cmd: Vec<String>,
}

pub fn parse_bytes(s: &str) -> Result<u64> {
    let (num, mult) = match s.char_indices().last() {
        Some((i, 'K' | 'k')) => (&s[..i], 1u64 << 10),
        Some((i, 'M' | 'm')) => (&s[..i], 1 << 20),
        Some((i, 'G' | 'g')) => (&s[..i], 1 << 30),
        _ => (s, 1),
    };
    let n: u64 = num.parse().with_context(|| format!("{s:?} is not a size in bytes (like 512M)"))?;
    n.checked_mul(mult).with_context(|| format!("{s} is too large"))
}

pub fn run(state: &StateDir, a: RunArgs) -> Result<i32> {
    let name = a.name.unwrap_or_else(|| format!("pod-{}", std::process::id()));
    let spec = PodSpec {
        hostname: a.hostname.unwrap_or_else(|| name.clone()),
        domainname: String::new(),
        rootfs: a.rootfs,
        ip: a.ip.as_deref().map(IpConfig::parse).transpose()?,
        memory: a.memory.as_deref().map(parse_bytes).transpose()?,
        pids: a.pids,
        cpus: a.cpus,
        userns: a.userns,
        bridge: a.bridge,
    };
    if let Some(c) = spec.cpus {
        anyhow::ensure!(c > 0.0 && c.is_finite(), "--cpus must be a positive number of CPUs");
    }
    let o = RunOptions { name: name.clone(), spec, cmd: a.cmd, detached: a.detach };
    // A --userns pod's PID 1 is forked by a go-between: it comes back to us.
    cryopod_sys::process::become_subreaper()?;
    let rec = cryopod_pod::create::run(state, &o, INIT_PROGRAM).with_context(|| format!("cannot start pod {name}"))?;
    if a.detach {
        println!("{name}");
        return Ok(0);
    }
    // In the foreground: wait for the pod's end, then remove it.
    wait_and_remove(state, &rec)
}

/// A pod in the foreground: wait for its PID 1 (our child), passing on the
/// signals sent to us, then remove the pod, and return its exit code.
fn wait_and_remove(state: &StateDir, rec: &cryopod_pod::PodRecord) -> Result<i32> {
    cryopod_sys::signal::forward_signals(
        rec.init_pid,
        &[libc::SIGTERM, libc::SIGINT, libc::SIGHUP, libc::SIGQUIT, libc::SIGUSR1, libc::SIGUSR2],
    )?;
    let (_, st) = cryopod_sys::process::waitpid(rec.init_pid, 0)?;
    let code = cryopod_sys::process::exit_code(st);
    // A checkpoint may have ended the pod and a restore made a new one of
    // that name meanwhile: only remove what is still ours.
    if let Ok(now) = state.load(&rec.name) {
        if now.init_pid == rec.init_pid && now.init_start == rec.init_start {
            lifecycle::cleanup(state, &now)?;
        }
    }
    Ok(code)
}

/// Where and how a pod comes back (`restore`'s pod options).
pub struct RestoreAs {
    pub name: Option<String>,
    pub ip: Option<String>,
    pub tcp_close: bool,
    pub bridge: Option<String>,
}

pub fn restore(
    state: &StateDir,
    img: &cryopod_engine::CheckedImage,
    RestoreAs { name, ip, tcp_close, bridge }: RestoreAs,
    detach: bool,
    print_pid: bool,
) -> Result<i32> {
    let dir = img.dir().path();
    let o = cryopod_pod::snapshot::PodRestoreOptions {
        image: img,
        name,
        ip: ip.as_deref().map(IpConfig::parse).transpose()?,
        tcp_close,
        threads: crate::cpus(),
        hold: false,
        bridge,
        lazy: false,
        known: None,
    };
    let bar = crate::progress::Bar::new("restore");
    let (rec, o) = cryopod_pod::snapshot::restore(state, &o, &|phase, d, t| bar.update(phase, d, t))
        .with_context(|| format!("restore of {} failed; nothing was left running", dir.display()))?;
    bar.finish();
    eprintln!(
        "restored pod {} ({} processes, {} threads, {} of memory) in {:.1} ms; its PID 1 is host pid {}",
        rec.name,
        o.processes,
        o.threads,
        crate::human(o.memory_bytes),
        o.elapsed.as_secs_f64() * 1e3,
        rec.init_pid
    );
    if print_pid {
        println!("{}", rec.init_pid);
    }
    if detach {
        return Ok(0);
    }
    wait_and_remove(state, &rec)
}

pub fn ps(state: &StateDir, json: bool) -> Result<i32> {
    let all: Vec<_> = state.list()?.iter().map(|r| lifecycle::status(state, r)).collect();
    let gone = state.departures();
    if json {
        let mut v = serde_json::to_value(&all)?;
        if let Some(list) = v.as_array_mut() {
            for d in &gone {
                list.push(
                    serde_json::json!({"name": d.name, "state": "moved", "moved_to": d.to, "moved_unix": d.unix}),
                );
            }
        }
        println!("{}", serde_json::to_string_pretty(&v)?);
        return Ok(0);
    }
    println!("{:<20} {:<8} {:>8} {:<18} {:>10} {:>8}  COMMAND", "NAME", "STATE", "PID", "IP", "MEMORY", "UPTIME");
    for s in all {
        println!(
            "{:<20} {:<8} {:>8} {:<18} {:>10} {:>7}s  {}",
            s.name,
            s.state,
            s.init_pid,
            s.ip.unwrap_or_else(|| "-".into()),
            s.memory_bytes.map(crate::human).unwrap_or_else(|| "-".into()),
            s.uptime_s,
            s.cmd.join(" ")
        );
    }
    let now = cryopod_pod::state::now_unix();
    for d in gone {
        let ago = now.saturating_sub(d.unix);
        println!("{:<20} {:<8} {:>8} moved to {} {ago}s ago", d.name, "moved", "-", d.to);
    }
    Ok(0)
}

pub fn exec(state: &StateDir, name: &str, cmd: &[String]) -> Result<i32> {
    Ok(lifecycle::exec(state, name, cmd)?)
}

pub fn stop(state: &StateDir, name: &str, timeout: u64) -> Result<i32> {
    lifecycle::stop(state, name, Duration::from_secs(timeout)).with_context(|| format!("stopping pod {name}"))?;
    Ok(0)
}

pub fn logs(state: &StateDir, name: &str) -> Result<i32> {
    let rec = state.load(name)?;
    anyhow::ensure!(rec.detached, "pod {name} runs in the foreground: its output goes to the terminal that started it");
    let p = state.log_path(name);
    let text = std::fs::read(&p).with_context(|| format!("reading {}", p.display()))?;
    use std::io::Write;
    std::io::stdout().write_all(&text)?;
    Ok(0)
}
