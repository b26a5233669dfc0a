//! Killing cryopod with SIGKILL at random instants of a checkpoint or a
//! restore, and judging what it leaves: for a checkpoint, the program must
//! be unharmed (alive, neither stopped nor traced, the same maps, masks and
//! handlers, still working); for a restore, either the whole tree runs or
//! nothing of it is left. Shared by tests/kill.rs (100+ trials in the
//! suite) and benches/kill.rs (1,000).

use super::pod::PodEnv;
use super::{cryopod_bin, reap_all, Run};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// What the trials found.
#[derive(Debug, Default, Clone)]
pub struct Counts {
    /// Trials run (a checkpoint's stop at the first harm).
    pub trials: usize,
    /// Checkpoints: programs harmed. Restores: trees left half made.
    pub bad: usize,
    /// Restores that completed before the kill (the whole tree runs).
    pub completed: usize,
    /// Guardians or other processes of ours still there after 3 s.
    pub lingering: usize,
    /// One line per bad trial.
    pub notes: Vec<String>,
}

/// xorshift64: reproducible random instants (the seed is printed).
pub struct Rng(u64);

impl Rng {
    pub fn new() -> Rng {
        let seed = std::env::var("CRYOPOD_KILL_SEED").ok().and_then(|s| s.parse().ok()).unwrap_or_else(|| {
            std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_nanos() as u64).unwrap_or(1)
        });
        println!("kill trials: seed {seed} (CRYOPOD_KILL_SEED reproduces)");
        Rng(seed | 1)
    }
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    /// A duration in [0, max).
    pub fn below(&mut self, max: Duration) -> Duration {
        let ns = max.as_nanos().max(1) as u64;
        Duration::from_nanos(self.next() % ns)
    }
}

/// Trials to run: `CRYOPOD_KILL_TRIALS`, else `default`.
pub fn trials(default: usize) -> usize {
    std::env::var("CRYOPOD_KILL_TRIALS").ok().and_then(|s| s.parse().ok()).unwrap_or(default)
}

/// Start `cryopod args` with `env`, SIGKILL it after `after`, wait for it.
/// Returns whether it had already finished (and its status was success).
fn run_and_kill(args: &[&str], env: &[(&str, &str)], after: Duration) -> Option<bool> {
    let mut c = Command::new(cryopod_bin())
        .args(args)
        .envs(env.iter().copied())
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("run cryopod");
    std::thread::sleep(after);
    let done = c.try_wait().ok().flatten();
    let _ = c.kill();
    let _ = c.wait();
    done.map(|s| s.success())
}

/// Median time of `cryopod args` (a calibration for the kill instants).
fn time_of(args: &[&str], env: &[(&str, &str)], then: impl Fn()) -> Duration {
    let mut ts: Vec<Duration> = (0..3)
        .map(|_| {
            let t = Instant::now();
            let o = Command::new(cryopod_bin()).args(args).envs(env.iter().copied()).output().expect("cryopod");
            let d = t.elapsed();
            assert!(o.status.success(), "cryopod {args:?}: {}", String::from_utf8_lossy(&o.stderr));
            then();
            d
        })
        .collect();
    ts.sort();
    ts[1]
}

/// Run `cryopod args` (with `env`) with CRYOPOD_FAULT making it stop at
/// `point`, then SIGKILL it there — and first its guardian too, with
/// `guardian_too`, as when a whole session or cgroup is killed. Waits for
/// what the kill leaves to settle (a guardian's work).
pub fn kill_at(args: &[&str], env: &[(&str, &str)], point: &str, guardian_too: bool) {
    use std::io::BufRead;
    let mut child = Command::new(cryopod_bin())
        .args(args)
        .envs(env.iter().copied())
        .env("CRYOPOD_FAULT", format!("{point}:stall"))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run cryopod");
    let err = child.stderr.take().expect("stderr");
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(err).lines().map_while(Result::ok) {
            if line.contains("stalled") {
                let _ = tx.send(());
            }
        }
    });
    let stalled = rx.recv_timeout(Duration::from_secs(30)).is_ok();
    if guardian_too {
        for g in children_of(child.id() as i32).into_iter().filter(|&p| comm(p) == "cryopod-guard") {
            // SAFETY: the guardian of the cryopod we started.
            unsafe { libc::kill(g, libc::SIGKILL) };
        }
    }
    let _ = child.kill();
    let _ = child.wait();
    assert!(stalled, "cryopod {args:?} did not reach {point}");
    assert!(!lingering_guardians(), "a guardian did not finish");
}

/// Children of ours named cryopod (guardians of a killed cryopod, which we
/// adopt as a subreaper): wait up to 3 s for them to finish; true if one
/// is still there (it is then killed: it is ours).
fn lingering_guardians() -> bool {
    let me = std::process::id() as i32;
    let t = Instant::now();
    loop {
        reap_all();
        let ours: Vec<i32> =
            children_of(me).into_iter().filter(|&p| matches!(comm(p).as_str(), "cryopod" | "cryopod-guard")).collect();
        if ours.is_empty() {
            return false;
        }
        if t.elapsed() > Duration::from_secs(3) {
            for p in ours {
                // SAFETY: a process our own cryopod started.
                unsafe { libc::kill(p, libc::SIGKILL) };
            }
            reap_all();
            return true;
        }
        std::thread::sleep(Duration::from_millis(2));
    }
}

pub fn comm(pid: i32) -> String {
    std::fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default().trim().to_string()
}

/// Direct children of `pid` (any of its threads).
pub fn children_of(pid: i32) -> Vec<i32> {
    let mut out = Vec::new();
    if let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) {
        for t in tasks.flatten() {
            let s = std::fs::read_to_string(t.path().join("children")).unwrap_or_default();
            out.extend(s.split_whitespace().filter_map(|x| x.parse::<i32>().ok()));
        }
    }
    out
}

fn status_of(path: &str) -> Vec<(String, String)> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.split_once(':').map(|(k, v)| (k.to_string(), v.trim().to_string())))
        .collect()
}

fn field(st: &[(String, String)], k: &str) -> String {
    st.iter().find(|(x, _)| x == k).map(|(_, v)| v.clone()).unwrap_or_default()
}

/// What a program looks like from outside, per process: maps, handled and
/// ignored signals, and per thread its blocked mask.
#[derive(PartialEq, Debug)]
struct Outside {
    procs: Vec<ProcView>,
}

#[derive(PartialEq, Debug)]
struct ProcView {
    pid: i32,
    maps: String,
    caught: String,
    ignored: String,
    /// (tid, blocked mask)
    blocked: Vec<(String, String)>,
}

fn outside(pids: &[i32]) -> Outside {
    let mut procs = Vec::new();
    for &p in pids {
        let maps = std::fs::read_to_string(format!("/proc/{p}/maps")).unwrap_or_default();
        let st = status_of(&format!("/proc/{p}/status"));
        let mut threads = Vec::new();
        if let Ok(rd) = std::fs::read_dir(format!("/proc/{p}/task")) {
            for t in rd.flatten() {
                let ts = status_of(&format!("{}/status", t.path().display()));
                threads.push((t.file_name().to_string_lossy().into_owned(), field(&ts, "SigBlk")));
            }
        }
        threads.sort();
        procs.push(ProcView {
            pid: p,
            maps,
            caught: field(&st, "SigCgt"),
            ignored: field(&st, "SigIgn"),
            blocked: threads,
        });
    }
    Outside { procs }
}

/// Threads of `pids` that are stopped, traced or gone.
fn not_running(pids: &[i32]) -> Vec<String> {
    let mut out = Vec::new();
    for &p in pids {
        let Ok(rd) = std::fs::read_dir(format!("/proc/{p}/task")) else {
            out.push(format!("process {p} is gone"));
            continue;
        };
        for t in rd.flatten() {
            let ts = status_of(&format!("{}/status", t.path().display()));
            let state = field(&ts, "State");
            let tracer = field(&ts, "TracerPid");
            if state.starts_with('T') || state.starts_with('t') || state.starts_with('Z') || tracer != "0" {
                out.push(format!("thread {} of {p}: state {state}, tracer {tracer}", t.file_name().to_string_lossy()));
            }
        }
    }
    out
}

/// tp-victim's six counters (in its memfd).
fn beats(pid: i32, dir: &Path) -> Vec<u64> {
    let fd = std::fs::read_to_string(dir.join("beat-fd")).unwrap_or_default();
    let b = std::fs::read(format!("/proc/{pid}/fd/{}", fd.trim())).unwrap_or_default();
    b.chunks_exact(8).take(6).map(|c| u64::from_ne_bytes(c.try_into().unwrap_or_default())).collect()
}

/// Wait until every thread of tp-victim and its child have started work
/// (their maps are then complete: thread stacks, arenas).
fn wait_all_working(pid: i32, dir: &Path) {
    let t = Instant::now();
    while beats(pid, dir).iter().filter(|&&b| b > 0).count() < 6 {
        assert!(t.elapsed() < Duration::from_secs(10), "tp-victim does not get going");
        std::thread::sleep(Duration::from_millis(5));
    }
    std::thread::sleep(Duration::from_millis(50));
}

/// Do all six counters of tp-victim move within a second?
fn still_working(pid: i32, dir: &Path) -> Result<(), String> {
    let dir = dir.to_path_buf();
    let beats = move || beats(pid, &dir);
    let before = beats();
    let t = Instant::now();
    loop {
        std::thread::sleep(Duration::from_millis(20));
        let now = beats();
        let stuck: Vec<usize> = (0..6).filter(|&i| now.get(i) <= before.get(i)).collect();
        if stuck.is_empty() {
            return Ok(());
        }
        if t.elapsed() > Duration::from_secs(1) {
            return Err(format!("counters {stuck:?} did not move"));
        }
    }
}

/// Judge the program after a trial; `Err` says how it was harmed.
fn judge(run: &Run, pids: &[i32], base: &Outside) -> Result<(), String> {
    // Give a task the kernel just let go a moment to leave its stop.
    let t = Instant::now();
    let mut stuck = not_running(pids);
    while !stuck.is_empty() && t.elapsed() < Duration::from_millis(500) {
        std::thread::sleep(Duration::from_millis(5));
        stuck = not_running(pids);
    }
    if !stuck.is_empty() {
        return Err(stuck.join("; "));
    }
    // A thread let go in the middle of an injected call takes its own
    // context back (rt_sigreturn) as soon as it runs; until it gets a CPU,
    // /proc still shows the mask it had meanwhile.
    let mut now = outside(pids);
    while &now != base && t.elapsed() < Duration::from_secs(1) {
        std::thread::sleep(Duration::from_millis(5));
        now = outside(pids);
    }
    if &now != base {
        for (a, b) in now.procs.iter().zip(&base.procs) {
            if a.maps != b.maps {
                let gone: Vec<&str> = b.maps.lines().filter(|l| !a.maps.contains(l)).collect();
                let new: Vec<&str> = a.maps.lines().filter(|l| !b.maps.contains(l)).collect();
                return Err(format!("maps of {} changed: new {new:#?}, gone {gone:#?}", a.pid));
            }
            if a != b {
                let sig = |v: &ProcView| format!("caught {} ignored {} blocked {:?}", v.caught, v.ignored, v.blocked);
                return Err(format!("signals of {} changed: {} was {}", a.pid, sig(a), sig(b)));
            }
        }
        return Err("processes changed".into());
    }
    if run.output().contains("FAIL") {
        return Err(format!("the program saw a failure:\n{}", run.output()));
    }
    still_working(run.pid, &run.dir)
}

/// What one trial left.
enum Verdict {
    /// As it must be (a checkpoint's program unharmed, nothing of a restore).
    Fine,
    /// A restore that had finished: the whole tree runs.
    Completed,
    Bad(String),
}

/// A kind of trial: the cryopod command to kill, how to judge what it
/// left, and what to do between trials.
struct Trials<'a> {
    args: &'a [&'a str],
    env: &'a [(&'a str, &'a str)],
    /// Ends what a finished command made (calibration, completed trials).
    reset: &'a dyn Fn(),
    /// The kill instant of trial i, given the command's full time.
    span: &'a dyn Fn(usize, Duration) -> Duration,
    /// Harm makes every later trial meaningless: stop at the first.
    stop_at_bad: bool,
}

impl Trials<'_> {
    fn run(&self, n: usize, mut judge: impl FnMut() -> Verdict) -> Counts {
        let full = time_of(self.args, self.env, self.reset);
        println!("cryopod {} takes {:.1} ms", self.args[0], full.as_secs_f64() * 1e3);
        let mut rng = Rng::new();
        let mut c = Counts::default();
        for i in 0..n {
            c.trials += 1;
            let at = rng.below((self.span)(i, full));
            run_and_kill(self.args, self.env, at);
            if lingering_guardians() {
                c.lingering += 1;
            }
            match judge() {
                Verdict::Fine => {}
                Verdict::Completed => c.completed += 1,
                Verdict::Bad(why) => {
                    c.bad += 1;
                    c.notes.push(format!("trial {i} (killed after {:.2} ms): {why}", at.as_secs_f64() * 1e3));
                    if self.stop_at_bad {
                        break;
                    }
                }
            }
            (self.reset)();
        }
        c
    }
}

/// Anywhere in the command, and a little after.
fn anywhere(_: usize, full: Duration) -> Duration {
    full * 11 / 10
}

/// `n` checkpoints (`--leave-running`) of tp-victim, each killed at a
/// random instant: two thirds within the first 60% of a checkpoint (state
/// collection and injection), a third anywhere in it.
pub fn checkpoint_trials(bin: &str, n: usize) -> Counts {
    let mut run = Run::testprog("kill-ckpt", bin);
    let pid = run.pid;
    wait_all_working(pid, &run.dir);
    let kids = children_of(pid);
    assert_eq!(kids.len(), 1, "tp-victim has one child");
    let pids = [pid, kids[0]];
    let base = outside(&pids);
    let img = run.dir.join("img");
    let img_s = img.to_str().unwrap().to_string();
    let pid_s = pid.to_string();
    let args = ["checkpoint", "--pid", &pid_s, "-o", &img_s, "--leave-running"];
    let reset = || {
        let _ = std::fs::remove_dir_all(&img);
    };
    let span = |i: usize, full: Duration| if i % 3 == 2 { full * 12 / 10 } else { full * 6 / 10 };
    let t = Trials { args: &args, env: &[], reset: &reset, span: &span, stop_at_bad: true };
    let c = t.run(n, || match judge(&run, &pids, &base) {
        Ok(()) => Verdict::Fine,
        Err(why) => Verdict::Bad(why),
    });
    if c.bad == 0 {
        // Still checkpointable, and it says all went well.
        run.checkpoint(&["--leave-running"]);
        run.go_and_expect_pass();
    }
    c
}

/// `n` restores of a tp-victim image, each killed at a random instant:
/// afterwards either every process of the image runs, or none is left.
pub fn restore_trials(bin: &str, n: usize) -> Counts {
    let mut run = Run::testprog("kill-rst", bin);
    run.checkpoint(&[]);
    let pids = run.image_pids();
    let img = run.image.to_str().unwrap().to_string();
    let args = ["restore", &img, "--detach"];
    let gone = || {
        let t = Instant::now();
        for &p in &pids {
            // SAFETY: a process of the image this test restored.
            unsafe { libc::kill(p, libc::SIGKILL) };
        }
        while pids.iter().any(|p| Path::new(&format!("/proc/{p}")).exists()) {
            reap_all();
            assert!(t.elapsed() < Duration::from_secs(10), "restored processes do not go away");
            std::thread::sleep(Duration::from_millis(1));
        }
    };
    let t = Trials { args: &args, env: &[], reset: &gone, span: &anywhere, stop_at_bad: false };
    t.run(n, || {
        // Whatever the kernel or the guardian kills may take a moment.
        let t = Instant::now();
        let alive = || pids.iter().filter(|p| live(**p)).count();
        // (All alive but some still stopped: the kill of a restore whose
        // tracees die with it is on its way.)
        let settled = || match alive() {
            0 => true,
            k => k == pids.len() && not_running(&pids).is_empty(),
        };
        while !settled() && t.elapsed() < Duration::from_secs(2) {
            reap_all();
            std::thread::sleep(Duration::from_millis(2));
        }
        match alive() {
            0 => Verdict::Fine,
            k if k == pids.len() && not_running(&pids).is_empty() => Verdict::Completed,
            k => {
                let stat = |p: &i32| std::fs::read_to_string(format!("/proc/{p}/stat")).unwrap_or_default();
                let stats: Vec<String> = pids.iter().map(stat).collect();
                Verdict::Bad(format!("{k} of {} processes left: {stats:?}", pids.len()))
            }
        }
    })
}

/// A live (not zombie) process.
fn live(pid: i32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| s.rsplit_once(") ").map(|(_, r)| !r.starts_with('Z') && !r.starts_with('X')))
        .unwrap_or(false)
}

/// `n` checkpoints (`--leave-running`) of a pod killed at random instants:
/// the pod must be running, thawed and untraced each time.
pub fn pod_checkpoint_trials(env: &PodEnv, n: usize) -> Counts {
    let name = "killck";
    let script = "while :; do echo x > /dev/null; sleep 0.01; done";
    env.ok(&["run", "-d", "--name", name, "--ip", "10.77.94.2/24", "--", "sh", "-c", script]);
    // Its network must not stay locked: its bridge port forwarding (3).
    let port = format!("/sys/class/net/{}/brport/state", cryopod_pod::net::veth_names(name).0);
    let init = env.ps()[0]["init_pid"].as_i64().unwrap() as i32;
    let img = env.dir.join("img");
    let img_s = img.to_str().unwrap().to_string();
    let state = env.state.to_str().unwrap().to_string();
    let envs = [("CRYOPOD_STATE_DIR", state.as_str())];
    let args = ["checkpoint", name, "-o", &img_s, "--leave-running"];
    let reset = || {
        let _ = std::fs::remove_dir_all(&img);
    };
    let freezer = format!("/sys/fs/cgroup/freezer/{}/{name}/freezer.state", env.cgroup_parent());
    let t = Trials { args: &args, env: &envs, reset: &reset, span: &anywhere, stop_at_bad: true };
    let c = t.run(n, || {
        let t = Instant::now();
        loop {
            let fz = std::fs::read_to_string(&freezer).unwrap_or_default();
            let mut pids = vec![init];
            pids.extend(children_of(init));
            let stuck = not_running(&pids);
            let port_state = std::fs::read_to_string(&port).unwrap_or_default();
            if fz.trim() == "THAWED" && stuck.is_empty() && port_state.trim() == "3" {
                return Verdict::Fine;
            }
            if t.elapsed() > Duration::from_secs(1) {
                let port_state = port_state.trim();
                return Verdict::Bad(format!(
                    "freezer {}, network port state {port_state}, {}",
                    fz.trim(),
                    stuck.join("; ")
                ));
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    });
    // The last trial may have finished its image.
    reset();
    env.ok(&["checkpoint", name, "-o", &img_s, "--leave-running"]);
    env.ok(&["stop", "--timeout", "1", name]);
    c
}

/// `n` restores of a pod image killed at random instants: every process
/// made for the pod dies with the restorer, and the next cryopod command
/// (`ps`) finds either the whole pod or nothing of it (no cgroup, veth or
/// state left).
pub fn pod_restore_trials(env: &PodEnv, n: usize) -> Counts {
    let name = "killrs";
    let rootfs = env.rootfs();
    let rootfs_s = rootfs.to_str().unwrap().to_string();
    let cmd = ["sh", "-c", "while :; do sleep 0.01; done"];
    let run = ["run", "-d", "--name", name, "--rootfs", &rootfs_s, "--ip", "10.77.93.2/24", "--"];
    env.ok(&[&run[..], &cmd[..]].concat());
    let img = env.dir.join("img");
    let img_s = img.to_str().unwrap().to_string();
    env.ok(&["checkpoint", name, "-o", &img_s]);
    let state = env.state.to_str().unwrap().to_string();
    let envs = [("CRYOPOD_STATE_DIR", state.as_str())];
    let args = ["restore", &img_s, "--detach"];
    let stop = || {
        let _ = env.cryopod(&["stop", "--timeout", "1", name]);
    };
    let procs = format!("/sys/fs/cgroup/pids/{}/{name}/cgroup.procs", env.cgroup_parent());
    let record = env.state.join("pods").join(name).join("pod.json");
    let t = Trials { args: &args, env: &envs, reset: &stop, span: &anywhere, stop_at_bad: false };
    t.run(n, || {
        let t = Instant::now();
        let mut left = std::fs::read_to_string(&procs).unwrap_or_default();
        while !left.trim().is_empty() && t.elapsed() < Duration::from_secs(2) {
            reap_all();
            std::thread::sleep(Duration::from_millis(5));
            left = std::fs::read_to_string(&procs).unwrap_or_default();
        }
        if !record.exists() && !left.trim().is_empty() {
            let who: Vec<String> =
                left.split_whitespace().map(|p| format!("{p} ({})", comm(p.parse().unwrap_or(0)))).collect();
            return Verdict::Bad(format!("processes left: {who:?}"));
        }
        // The next command puts right what the killed one left.
        if env.ps().iter().any(|p| p["name"] == name && p["state"] == "running") {
            return Verdict::Completed;
        }
        match env.leftovers(name) {
            l if l.is_empty() => Verdict::Fine,
            l => Verdict::Bad(format!("left {l:?}")),
        }
    })
}
