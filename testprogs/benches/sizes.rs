//! Image size of real programs against their memory (issue 9's goal:
//! image ≤ 0.3× the resident memory): python3 with a large dict, redis
//! with 200k keys, a JVM with a large map, node with a large Map, each
//! started as a plain process tree, loaded, checkpointed with
//! `--leave-running` (default compression), measured, and ended by its
//! PID. Each program is measured `CRYOPOD_BENCH_ROUNDS` times (default 3):
//! medians and ranges are printed.
//!
//!     cargo build --release --workspace    # the cryopod it runs
//!     cargo bench -p cryopod-testprogs --bench sizes

#[path = "../tests/common/mod.rs"]
mod common;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A started program, killed (with its tree) when dropped.
struct Started {
    child: Child,
    dir: PathBuf,
}

impl Drop for Started {
    fn drop(&mut self) {
        let pid = self.child.id() as i32;
        for p in common::tree_of(pid) {
            // SAFETY: kill by the PIDs of the tree this bench started.
            unsafe { libc::kill(p, libc::SIGKILL) };
        }
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn start(name: &str, cmd: &mut Command) -> Started {
    let dir = PathBuf::from(format!("/tmp/cryopod-sizes-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let out = std::fs::File::create(dir.join("out")).unwrap();
    let child = cmd.current_dir(&dir).stdin(Stdio::null()).stdout(out).stderr(Stdio::null()).spawn().unwrap();
    Started { child, dir }
}

fn wait_for(s: &Started, what: &str, secs: u64) {
    let t = Instant::now();
    while !std::fs::read_to_string(s.dir.join("out")).unwrap_or_default().contains(what) {
        assert!(t.elapsed() < Duration::from_secs(secs), "{what} did not come");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Resident memory of the tree of `pid` (VmRSS summed).
fn rss(pid: i32) -> u64 {
    common::tree_of(pid)
        .iter()
        .filter_map(|p| {
            let s = std::fs::read_to_string(format!("/proc/{p}/status")).ok()?;
            let kib: u64 = s.lines().find(|l| l.starts_with("VmRSS:"))?.split_whitespace().nth(1)?.parse().ok()?;
            Some(kib << 10)
        })
        .sum()
}

fn dir_bytes(dir: &Path) -> u64 {
    std::fs::read_dir(dir).unwrap().flatten().map(|e| e.metadata().map(|m| m.len()).unwrap_or(0)).sum()
}

/// Checkpoint the tree of `s`, leaving it running: (rss, image bytes).
fn measure(s: &Started) -> (u64, u64) {
    let pid = s.child.id() as i32;
    let image = s.dir.join("image");
    let _ = std::fs::remove_dir_all(&image);
    let before = rss(pid);
    let o = Command::new(common::cryopod_bin())
        .args(["checkpoint", "--pid", &pid.to_string(), "-o", image.to_str().unwrap(), "--leave-running"])
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert!(o.status.success(), "checkpoint failed: {}", String::from_utf8_lossy(&o.stderr));
    (before.max(rss(pid)), dir_bytes(&image))
}

fn python() -> Started {
    let code = "d = {i: 'value-%d' % i for i in range(2_000_000)}\nprint('READY', flush=True)\nimport time\nwhile True: time.sleep(1)";
    let s = start("python", Command::new("python3").args(["-c", code]));
    wait_for(&s, "READY", 60);
    s
}

fn redis() -> Started {
    // In the directory `start` makes afresh (and removes with the program).
    let sock = PathBuf::from(format!("/tmp/cryopod-sizes-redis-{}/redis.sock", std::process::id()));
    let mut cmd = Command::new("redis-server");
    cmd.args(["--port", "0", "--save", "", "--appendonly", "no", "--enable-debug-command", "local", "--unixsocket"])
        .arg(&sock);
    let s = start("redis", &mut cmd);
    let t = Instant::now();
    loop {
        let o = Command::new("redis-cli").arg("-s").arg(&sock).args(["DEBUG", "POPULATE", "200000"]).output();
        if o.as_ref().is_ok_and(|o| String::from_utf8_lossy(&o.stdout).contains("OK")) {
            break;
        }
        assert!(t.elapsed() < Duration::from_secs(20), "redis did not take 200k keys");
        std::thread::sleep(Duration::from_millis(100));
    }
    s
}

fn jvm() -> Started {
    let dir = std::env::temp_dir().join(format!("cryopod-sizes-java-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let src = dir.join("Big.java");
    std::fs::write(
        &src,
        "public class Big { public static void main(String[] a) throws Exception {\n\
         java.util.HashMap<Integer, String> m = new java.util.HashMap<>();\n\
         for (int i = 0; i < 1_000_000; i++) m.put(i, \"value-\" + i);\n\
         System.out.println(\"READY \" + m.size()); System.out.flush();\n\
         while (true) Thread.sleep(1000); } }\n",
    )
    .unwrap();
    let s = start("jvm", Command::new("java").args(["-Xmx512m", "-XX:+UseSerialGC"]).arg(&src));
    wait_for(&s, "READY", 120);
    let _ = std::fs::remove_dir_all(&dir);
    s
}

fn node() -> Started {
    let code = "const m = new Map(); for (let i = 0; i < 1e6; i++) m.set(i, 'value-' + i); console.log('READY'); setInterval(() => m.size, 1000);";
    let s = start("node", Command::new("node").args(["-e", code]));
    wait_for(&s, "READY", 60);
    s
}

fn main() {
    if std::env::args().any(|a| a == "--list" || a == "--test") {
        return;
    }
    let rounds: usize = std::env::var("CRYOPOD_BENCH_ROUNDS").ok().and_then(|v| v.parse().ok()).unwrap_or(3);
    let _lock = common::serial();
    println!("image size of real programs against their resident memory (goal: <= 0.30), {rounds} rounds each");
    type Program = (&'static str, fn() -> Started);
    let programs: [Program; 4] = [
        ("python3, 2M-entry dict", python),
        ("redis, 200k keys", redis),
        ("JVM, 1M-entry HashMap", jvm),
        ("node, 1M-entry Map", node),
    ];
    for (name, start) in programs {
        let mut ratios = Vec::new();
        let mut last = (0, 0);
        for _ in 0..rounds {
            let s = start();
            last = measure(&s);
            ratios.push(last.1 as f64 / last.0 as f64);
        }
        ratios.sort_by(|a, b| a.total_cmp(b));
        println!(
            "{name:<26} RSS {:>6.1} MiB, image {:>6.1} MiB: ratio median {:.2} (range {:.2}-{:.2})",
            last.0 as f64 / 1048576.0,
            last.1 as f64 / 1048576.0,
            ratios[ratios.len() / 2],
            ratios[0],
            ratios[ratios.len() - 1]
        );
    }
}
