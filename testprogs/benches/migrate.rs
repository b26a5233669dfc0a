//! Issue 10's benchmark: a pod with 1 GiB of memory that rewrites 50 MB/s
//! (`tp-migrant`), answering a client in a third namespace that sends a
//! request every millisecond over one TCP connection (`tp-pinger`), is
//! migrated from host A to host B (two network namespaces on one segment,
//! pods on each host's uplink bridge, see tests/common/hosts.rs). Per mode
//! and run: the downtime as the client sees it (the longest gap between
//! two answers, the 1 ms pace included), the migration's total time and
//! its stop, and the bytes on the wire against the pod's memory. After
//! each move the pod checks every page of its memory (PASS), and the
//! client saw no error.
//!
//! `CRYOPOD_BENCH_ROUNDS` (default 3) runs per mode; `CRYOPOD_BENCH_MIB`
//! (default 1024) and `CRYOPOD_BENCH_MBPS` (default 50) the pod;
//! `CRYOPOD_BENCH_MODES` (default stop,live,lazy) the modes;
//! `CRYOPOD_BENCH_VERBOSE` set prints each move's report (with
//! `RUST_LOG=debug`, where its time went).
//!
//!     cargo build --release --workspace    # the cryopod it runs
//!     cargo bench -p cryopod-testprogs --bench migrate

#[path = "../tests/common/mod.rs"]
mod common;

use common::hosts::{Node, TwoHosts};
use std::io::BufRead;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// One move, measured.
struct Run {
    gap_ms: f64,
    total_ms: f64,
    stopped_ms: f64,
    bytes_ratio: f64,
    rounds: usize,
}

fn env_or(name: &str, d: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| d.to_string())
}

/// The number after `word` in `text` (e.g. "in 123.4 ms").
fn after(text: &str, word: &str) -> Option<f64> {
    let i = text.find(word)? + word.len();
    text[i..].split_whitespace().next()?.trim_matches(|c: char| !c.is_ascii_digit() && c != '.').parse().ok()
}

/// Bytes of "12.3 MiB"-style sizes after `word`.
fn size_after(text: &str, word: &str) -> Option<f64> {
    let i = text.find(word)? + word.len();
    let mut w = text[i..].split_whitespace();
    let n: f64 = w.next()?.parse().ok()?;
    let unit = w.next()?;
    Some(n * common::unit_bytes(unit.trim_end_matches([',', ')']))?)
}

fn one(h: &TwoHosts, mode: &str, (mib, mbps): (&str, &str), key: &str, dest: &str, k: usize) -> Result<Run, String> {
    let work = h.state(Node::A).join(format!("work-{k}"));
    std::fs::create_dir_all(&work).map_err(|e| e.to_string())?;
    let bin = env!("CARGO_BIN_EXE_tp-migrant");
    // An address of its own per run: the client's neighbour cache and the
    // segment's bridge would still know the last pod's hardware address.
    let ip = format!("{}.{}", h.network().trim_end_matches(".0/24"), 10 + k);
    let o = h.cryopod(
        Node::A,
        &[
            "run",
            "-d",
            "--name",
            "migrant",
            "--ip",
            &format!("{ip}/24"),
            "--bridge",
            "br0",
            "--",
            bin,
            work.to_str().unwrap(),
            mib,
            mbps,
            "9000",
        ],
    );
    if !o.status.success() {
        return Err(format!("run: {}", String::from_utf8_lossy(&o.stderr)));
    }
    let t = Instant::now();
    while !String::from_utf8_lossy(&h.cryopod(Node::A, &["logs", "migrant"]).stdout).contains("READY") {
        if t.elapsed() > Duration::from_secs(60) {
            return Err("the pod never said READY".into());
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let stop = work.join("stop-pinger");
    let pinger = env!("CARGO_BIN_EXE_tp-pinger");
    let mut client = h.spawn_in(
        Node::Client,
        Command::new(pinger).args([&format!("{ip}:9000"), stop.to_str().unwrap()]).stdout(Stdio::piped()),
    );
    // (Waited for on every path: the closure's result comes after.)
    let talked = (|| -> Result<(std::process::Output, String, String), String> {
        let mut out = std::io::BufReader::new(client.stdout.take().ok_or("no client stdout")?);
        let mut line = String::new();
        out.read_line(&mut line).map_err(|e| e.to_string())?;
        if line.trim() != "CONNECTED" {
            return Err(format!("the client: {line}"));
        }
        // The pod runs and answers for a while before it moves, and after.
        std::thread::sleep(Duration::from_secs(2));
        let args = ["migrate", "migrant", "--to", dest, "--key", key, "--mode", mode];
        let o = h.cryopod(Node::A, &args);
        let report = String::from_utf8_lossy(&o.stderr).into_owned();
        if std::env::var_os("CRYOPOD_BENCH_VERBOSE").is_some() {
            println!("{report}");
        }
        std::thread::sleep(Duration::from_secs(2));
        std::fs::write(&stop, b"").map_err(|e| e.to_string())?;
        let mut rest = String::new();
        std::io::Read::read_to_string(&mut out, &mut rest).map_err(|e| e.to_string())?;
        Ok((o, report, rest))
    })();
    if talked.is_err() {
        let _ = client.kill();
    }
    let _ = client.wait();
    let (o, report, rest) = talked?;
    // The pod checks its memory where it is now.
    let at = if o.status.success() { Node::B } else { Node::A };
    std::fs::write(work.join("go"), b"go").map_err(|e| e.to_string())?;
    let t = Instant::now();
    let log = loop {
        let log = String::from_utf8_lossy(&h.cryopod(at, &["logs", "migrant"]).stdout).into_owned();
        if log.lines().any(|l| l.starts_with("PASS") || l.starts_with("FAIL ("))
            || t.elapsed() > Duration::from_secs(60)
        {
            break log;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    let _ = h.cryopod(at, &["stop", "migrant"]);
    if !o.status.success() {
        return Err(format!("migrate: {report}"));
    }
    if !log.contains("PASS") {
        return Err(format!("the pod's memory after the move: {log}"));
    }
    if !rest.contains("PASS") {
        return Err(format!("the client: {rest}"));
    }
    let migrated = report.lines().find(|l| l.starts_with("migrated pod")).ok_or("no report")?;
    let memory = size_after(migrated, "sent for ").ok_or("no memory size")?;
    Ok(Run {
        gap_ms: after(&rest, "longest_gap_ms").ok_or("no gap")?,
        total_ms: after(migrated, " in ").ok_or("no total")?,
        stopped_ms: after(migrated, "stopped ").ok_or("no stop")?,
        bytes_ratio: size_after(migrated, "ms, ").ok_or("no bytes")? / memory,
        rounds: report.lines().filter(|l| l.starts_with("pre-copy round")).count(),
    })
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

fn main() {
    // (The hosts are removed before the exit status is given.)
    let ok = bench();
    std::process::exit(if ok { 0 } else { 1 });
}

fn bench() -> bool {
    let rounds: usize = env_or("CRYOPOD_BENCH_ROUNDS", "3").parse().unwrap_or(3).max(1);
    let (mib, mbps) = (env_or("CRYOPOD_BENCH_MIB", "1024"), env_or("CRYOPOD_BENCH_MBPS", "50"));
    let modes = env_or("CRYOPOD_BENCH_MODES", "stop,live,lazy");
    let h = TwoHosts::new("bmig", "10.77.115");
    h.uplink_bridge(Node::A);
    h.uplink_bridge(Node::B);
    let key = h.state(Node::A).join("key");
    std::fs::write(&key, [0x5au8; 32]).expect("key");
    let key = key.to_str().unwrap();
    let dest = format!("{}:7070", h.addr(Node::B));
    let _serve = h.spawn_cryopod(Node::B, &["serve", "--listen", &dest, "--key", key, "--bridge", "br0"]).id();
    println!("a pod of {mib} MiB rewriting {mbps} MB/s, a client exchanging 8 bytes every ms; {rounds} runs per mode");
    let mut ok = true;
    let mut seq = 0;
    for mode in modes.split(',') {
        let mut runs = Vec::new();
        for k in 0..rounds {
            seq += 1;
            match one(&h, mode, (&mib, &mbps), key, &dest, seq) {
                Ok(r) => {
                    println!(
                        "{mode} run {}: downtime (longest gap) {:.1} ms, total {:.0} ms, stopped {:.1} ms, bytes {:.2}x \
                         memory, {} pre-copy rounds",
                        k + 1,
                        r.gap_ms,
                        r.total_ms,
                        r.stopped_ms,
                        r.bytes_ratio,
                        r.rounds
                    );
                    runs.push(r);
                }
                Err(e) => {
                    println!("{mode} run {}: FAILED: {e}", k + 1);
                    ok = false;
                    break;
                }
            }
        }
        if runs.is_empty() {
            continue;
        }
        let range = |f: fn(&Run) -> f64| {
            let mut v: Vec<f64> = runs.iter().map(f).collect();
            let m = median(&mut v);
            (m, v[0], v[v.len() - 1])
        };
        let (g, g0, g1) = range(|r| r.gap_ms);
        let (t, t0, t1) = range(|r| r.total_ms);
        let (b, b0, b1) = range(|r| r.bytes_ratio);
        let target = match mode {
            "live" => "; targets: downtime <= 100 ms, bytes <= 1.3x",
            "lazy" => "; target: downtime <= 30 ms",
            _ => "",
        };
        println!(
            "{mode}: downtime median {g:.1} ms (range {g0:.1}-{g1:.1}), total median {t:.0} ms ({t0:.0}-{t1:.0}), bytes \
             median {b:.2}x memory ({b0:.2}-{b1:.2}){target}"
        );
    }
    ok
}
