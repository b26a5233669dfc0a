//! Real servers in pods under load from the host: a server pod (and a
//! keeper pod that holds the bridge and the host's neighbour entries while
//! the server pod is checkpointed away), load generators run on the host
//! against the pod's address and judged by their own error counts, timed
//! checkpoints and restores, and streaming clients that must see every
//! value through them. Every process started here is ended by its PID
//! when its guard drops, whatever the test's outcome.

use super::pod::PodEnv;
use super::run_within;
use super::streams::connect;
use std::collections::BTreeMap;
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Seconds each load phase runs.
pub const LOAD_SECS: u64 = 5;
/// Connections of each load generator.
pub const CLIENTS: u32 = 4;

/// A pod environment with one server pod `name` at `net.2` and a keeper
/// pod at `net.9`; numbers measured along the way go to `metrics`.
pub struct ServerEnv {
    pub name: String,
    pub ip: String,
    metrics: Vec<String>,
    /// Checks that failed without stopping the test (client errors, a
    /// stream's verdict): reported together by [`ServerEnv::done`].
    failures: Vec<String>,
    images: u32,
    // Dropped last: stops every pod of the test and removes its directory.
    pub env: PodEnv,
}

impl ServerEnv {
    /// `net` is the first three octets of the test's own /24.
    pub fn new(tag: &str, name: &str, net: &str) -> ServerEnv {
        let env = PodEnv::new(tag);
        *EPOCH.lock().unwrap_or_else(|p| p.into_inner()) = Some(Instant::now());
        env.ok(&[
            "run",
            "-d",
            "--name",
            &format!("{name}-keep"),
            "--ip",
            &format!("{net}.9/24"),
            "--",
            "sleep",
            "1000",
        ]);
        ServerEnv {
            name: name.into(),
            ip: format!("{net}.2"),
            metrics: Vec::new(),
            failures: Vec::new(),
            images: 0,
            env,
        }
    }

    pub fn dir(&self) -> &Path {
        &self.env.dir
    }

    /// A path in the test's directory, as a string.
    pub fn path(&self, rel: &str) -> String {
        self.env.dir.join(rel).to_str().unwrap().to_string()
    }

    /// Start the server pod (detached, at its address) running `cmd`.
    pub fn run(&self, cmd: &[&str]) {
        let ip = format!("{}/24", self.ip);
        let mut args = vec!["run", "-d", "--name", &self.name, "--ip", &ip, "--"];
        args.extend_from_slice(cmd);
        self.env.ok(&args);
    }

    pub fn addr(&self, port: u16) -> SocketAddr {
        format!("{}:{port}", self.ip).parse().unwrap()
    }

    /// The server pod's log (or why there is none).
    pub fn logs(&self) -> String {
        let o = self.env.cryopod(&["logs", &self.name]);
        if o.0 == 0 {
            o.1
        } else {
            format!("(no log: {})", o.2.trim())
        }
    }

    /// Wait until the pod accepts TCP connections on `port` from the host.
    pub fn wait_port(&self, port: u16, secs: u64) {
        let t = Instant::now();
        while TcpStream::connect_timeout(&self.addr(port), Duration::from_millis(500)).is_err() {
            assert!(
                t.elapsed() < Duration::from_secs(secs),
                "{}:{port} accepts no connection after {secs} s; log of pod {}:\n{}",
                self.ip,
                self.name,
                self.logs()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Record a line (with the seconds since the test began).
    pub fn note(&mut self, line: String) {
        let line = format!("{:6.2}s {line}", epoch().elapsed().as_secs_f64());
        eprintln!("[{}] {line}", self.name);
        self.metrics.push(line);
    }

    /// `cryopod checkpoint` of the server pod (bounded in time); records
    /// its times and image size. With `leave_running` the image is removed
    /// at once; otherwise the pod is gone and the image is returned.
    pub fn checkpoint(&mut self, leave_running: bool) -> PathBuf {
        self.images += 1;
        let image = self.env.dir.join(format!("image-{}", self.images));
        let mut args = vec!["checkpoint", self.name.as_str(), "-o", image.to_str().unwrap()];
        if leave_running {
            args.push("--leave-running");
        }
        let t = Instant::now();
        let o = self.within(&args, 120);
        let wall = t.elapsed();
        assert_eq!(o.0, 0, "checkpoint {args:?} failed:\n{}{}\nlog:\n{}", o.1, o.2, self.logs());
        let text = format!("{}{}", o.1, o.2);
        let size = dir_bytes(&image);
        self.note(format!(
            "checkpoint{}: {} ms (command {} ms){}, image {:.1} MiB",
            if leave_running { " --leave-running" } else { "" },
            number_before(&text, " ms,").or_else(|| number_before(&text, " ms ")).unwrap_or(-1.0),
            wall.as_millis(),
            number_after(&text, "frozen ").map(|f| format!(", frozen {f} ms")).unwrap_or_default(),
            size as f64 / 1048576.0
        ));
        if leave_running {
            let _ = std::fs::remove_dir_all(&image);
        }
        image
    }

    /// `cryopod restore IMAGE --detach` (bounded in time); records its
    /// time, then removes the image.
    pub fn restore(&mut self, image: &Path) {
        let t = Instant::now();
        let o = self.within(&["restore", image.to_str().unwrap(), "--detach"], 120);
        let wall = t.elapsed();
        assert_eq!(o.0, 0, "restore of {} failed:\n{}{}", image.display(), o.1, o.2);
        let text = format!("{}{}", o.1, o.2);
        self.note(format!(
            "restore: {} ms (command {} ms)",
            number_before(&text, " ms;").unwrap_or(-1.0),
            wall.as_millis()
        ));
        let _ = std::fs::remove_dir_all(image);
    }

    /// Checkpoint (the pod ends) and restore at once, once the pod's
    /// sockets have settled.
    pub fn checkpoint_and_restore(&mut self) {
        self.settle_sockets();
        let image = self.checkpoint(false);
        let want = image_fds(&self.env, &image);
        self.restore(&image);
        // Every descriptor of every process comes back at its number (the
        // servers are idle here: none opens or closes one meanwhile).
        let got = pod_fds(self);
        if got != want {
            self.fail(format!("descriptors after the restore (pod PID: fds) {got:?}, in the image {want:?}"));
        }
    }

    /// Wait (up to 15 s) until every TCP socket of the pod listens or is
    /// established: connections a load generator closed or reset are
    /// closed by the server first, so that the descriptors compared after
    /// the restore stay as they were in the image (the load phases
    /// checkpoint sockets in every other state on their own).
    pub fn settle_sockets(&self) {
        let pid = self.env.ps().iter().find(|p| p["name"] == self.name.as_str()).and_then(|p| p["init_pid"].as_i64());
        let Some(pid) = pid else { return };
        let t = Instant::now();
        loop {
            let o = Command::new("nsenter")
                .args(["-t", &pid.to_string(), "-n", "ss", "-Htan"])
                .output()
                .expect("nsenter ss");
            let text = String::from_utf8_lossy(&o.stdout).into_owned();
            // (TIME-WAIT belongs to no process.)
            let settled = |l: &&str| ["LISTEN", "ESTAB", "TIME-WAIT"].iter().any(|s| l.starts_with(s));
            let odd: Vec<&str> = text.lines().filter(|l| !settled(l)).collect();
            if odd.is_empty() || t.elapsed() > Duration::from_secs(15) {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn within(&self, args: &[&str], secs: u64) -> (i32, String, String) {
        let mut cmd = Command::new(super::cryopod_bin());
        cmd.args(args).env("CRYOPOD_STATE_DIR", &self.env.state);
        let o = run_within(cmd, secs);
        super::reap_all();
        o
    }

    /// Phase 1: three `checkpoint --leave-running` while `load` runs; the
    /// load generator must report no error.
    pub fn leave_running_under(&mut self, load: Load) -> LoadReport {
        std::thread::sleep(Duration::from_millis(1000));
        for _ in 0..3 {
            self.checkpoint(true);
            std::thread::sleep(Duration::from_millis(700));
        }
        self.judge(load, "under three checkpoints --leave-running")
    }

    /// Phase 2: checkpoint (the pod ends) and restore while `load` runs,
    /// its clients connected throughout; no error allowed.
    pub fn restore_under(&mut self, load: Load) -> LoadReport {
        std::thread::sleep(Duration::from_millis(1000));
        let image = self.checkpoint(false);
        self.restore(&image);
        self.judge(load, "through a checkpoint and restore")
    }

    fn judge(&mut self, load: Load, phase: &str) -> LoadReport {
        let tool = load.tool.name();
        let r = load.finish();
        self.note(format!("{tool} {phase}: {} requests, {} errors", r.requests, r.errors.len()));
        if !r.errors.is_empty() {
            let log = self.logs();
            self.fail(format!(
                "{tool} {phase}: client errors {:?}\nits output:\n{}\nlog of the pod:\n{log}",
                r.errors, r.output
            ));
        }
        r
    }

    /// A check that failed; the test goes on and fails in [`ServerEnv::done`].
    pub fn fail(&mut self, what: String) {
        self.note(format!("FAILED: {}", what.lines().next().unwrap_or_default()));
        self.failures.push(what);
    }

    /// Stop the server pod through cryopod; nothing of it may remain.
    pub fn stop(&self) {
        self.env.ok(&["stop", "--timeout", "5", &self.name]);
        assert_eq!(self.env.leftovers(&self.name), Vec::<String>::new());
    }

    /// The end of a test: every check that failed on the way, at once.
    pub fn done(&self) {
        assert!(self.failures.is_empty(), "{} check(s) failed:\n\n{}", self.failures.len(), self.failures.join("\n\n"));
    }
}

impl Drop for ServerEnv {
    fn drop(&mut self) {
        // Numbers of every run, also of failed ones, for the report.
        let file = Path::new(env!("CARGO_TARGET_TMPDIR")).join("servers-metrics.txt");
        if let Ok(mut f) = std::fs::OpenOptions::new().create(true).append(true).open(file) {
            use std::io::Write;
            let _ = writeln!(f, "== {} ({})", self.name, if std::thread::panicking() { "FAILED" } else { "ok" });
            for m in &self.metrics {
                let _ = writeln!(f, "{m}");
            }
        }
    }
}

static EPOCH: std::sync::Mutex<Option<Instant>> = std::sync::Mutex::new(None);

/// When the test began (its [`ServerEnv::new`]): the time base of notes
/// and stream errors.
pub fn epoch() -> Instant {
    *EPOCH.lock().unwrap_or_else(|p| p.into_inner()).get_or_insert_with(Instant::now)
}

/// Total size of the files in `dir`.
pub fn dir_bytes(dir: &Path) -> u64 {
    std::fs::read_dir(dir)
        .map(|rd| rd.flatten().filter_map(|e| e.metadata().ok()).filter(|m| m.is_file()).map(|m| m.len()).sum())
        .unwrap_or(0)
}

/// The number right before `marker` in `text` ("... in 95.3 ms, ...").
pub fn number_before(text: &str, marker: &str) -> Option<f64> {
    let head = &text[..text.find(marker)?];
    head.rsplit(' ').next()?.parse().ok()
}

/// The number right after `marker` in `text` ("frozen 95.2 ms").
pub fn number_after(text: &str, marker: &str) -> Option<f64> {
    let tail = &text[text.find(marker)? + marker.len()..];
    tail.split(|c: char| !(c.is_ascii_digit() || c == '.')).next()?.parse().ok()
}

/// A process of the test on the host (a load generator, a client),
/// output to files; SIGKILLed by its PID if still running when dropped.
pub struct Bg {
    child: Option<Child>,
    out: PathBuf,
    err: PathBuf,
}

/// How a [`Bg`] ended: exit code (None: by a signal), stdout, stderr.
pub struct Ended {
    pub code: Option<i32>,
    pub out: String,
    pub err: String,
}

impl Bg {
    pub fn spawn(dir: &Path, tag: &str, cmd: &mut Command) -> Bg {
        let out = dir.join(format!("{tag}.out"));
        let err = dir.join(format!("{tag}.err"));
        let child = cmd
            .stdin(Stdio::null())
            .stdout(std::fs::File::create(&out).unwrap())
            .stderr(std::fs::File::create(&err).unwrap())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {cmd:?}: {e} (run scripts/setup.sh)"));
        super::WAITED_BY_OWNER.lock().unwrap_or_else(|p| p.into_inner()).push(child.id() as i32);
        Bg { child: Some(child), out, err }
    }

    pub fn running(&mut self) -> bool {
        self.child.as_mut().is_some_and(|c| c.try_wait().ok().flatten().is_none())
    }

    /// Wait for the end, at most `secs` (then kill it and fail).
    pub fn wait(&mut self, secs: u64) -> Ended {
        let t = Instant::now();
        while self.running() {
            if t.elapsed() > Duration::from_secs(secs) {
                let how = self.child.as_ref().map(|c| task_states(c.id())).unwrap_or_default();
                self.signal(libc::SIGKILL);
                panic!("still running after {secs} s ({how}); output:\n{}", self.ended(None).out);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let code = self.child.take().and_then(|mut c| c.wait().ok()).and_then(|s| s.code());
        self.ended(code)
    }

    /// SIGINT, then wait (SIGKILL after 5 s).
    pub fn interrupt(&mut self) -> Ended {
        self.signal(libc::SIGINT);
        let t = Instant::now();
        while self.running() && t.elapsed() < Duration::from_secs(5) {
            std::thread::sleep(Duration::from_millis(20));
        }
        self.signal(libc::SIGKILL);
        let code = self.child.take().and_then(|mut c| c.wait().ok()).and_then(|s| s.code());
        self.ended(code)
    }

    fn ended(&self, code: Option<i32>) -> Ended {
        Ended {
            code,
            out: std::fs::read_to_string(&self.out).unwrap_or_default(),
            err: std::fs::read_to_string(&self.err).unwrap_or_default(),
        }
    }

    fn signal(&mut self, sig: i32) {
        if let Some(c) = &self.child {
            // SAFETY: kill by the PID of a child of ours not yet waited for.
            unsafe { libc::kill(c.id() as i32, sig) };
        }
    }
}

/// "tid state wchan" of each thread of `pid` (why it does not end).
fn task_states(pid: u32) -> String {
    let tasks =
        std::fs::read_dir(format!("/proc/{pid}/task")).map(|d| d.flatten().collect::<Vec<_>>()).unwrap_or_default();
    let each = tasks.iter().map(|t| {
        let p = t.path();
        let st = std::fs::read_to_string(p.join("status")).unwrap_or_default();
        let state = st.lines().find_map(|l| l.strip_prefix("State:")).unwrap_or("?").trim().to_string();
        let wchan = std::fs::read_to_string(p.join("wchan")).unwrap_or_default();
        format!("{} {state} {wchan}", t.file_name().to_string_lossy())
    });
    each.collect::<Vec<_>>().join(", ")
}

impl Drop for Bg {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// redis-server as the tests run it in a pod: on every address, port 6379,
/// no persistence, DEBUG allowed (POPULATE, DIGEST).
pub const REDIS_SERVER: [&str; 13] = [
    "redis-server",
    "--bind",
    "0.0.0.0",
    "--port",
    "6379",
    "--protected-mode",
    "no",
    "--save",
    "",
    "--appendonly",
    "no",
    "--enable-debug-command",
    "yes",
];

/// Load generators on the host.
#[derive(Clone, Copy)]
pub enum Tool {
    /// redis-benchmark in a loop over several commands (it exits at the
    /// first error, so one that ended by itself failed).
    RedisBenchmark,
    /// wrk on a path of port 80xx.
    Wrk(u16, &'static str),
    /// pgbench's default TPC-B-like script on an initialised database.
    Pgbench,
}

impl Tool {
    pub fn name(self) -> &'static str {
        match self {
            Tool::RedisBenchmark => "redis-benchmark",
            Tool::Wrk(..) => "wrk",
            Tool::Pgbench => "pgbench",
        }
    }
}

pub struct Load {
    tool: Tool,
    bg: Bg,
    started: Instant,
}

pub struct LoadReport {
    pub requests: u64,
    pub errors: Vec<String>,
    pub output: String,
}

/// Start `tool` against the server pod for [`LOAD_SECS`].
pub fn start_load(s: &ServerEnv, tool: Tool, tag: &str) -> Load {
    let c = CLIENTS.to_string();
    let secs = LOAD_SECS.to_string();
    let mut cmd = match tool {
        Tool::RedisBenchmark => {
            let mut c0 = Command::new("redis-benchmark");
            c0.args(["-h", &s.ip, "-p", "6379", "-c", &c, "-n", "20000", "-r", "10000", "-d", "64"]);
            c0.args(["-t", "set,get,incr,lpush,hset", "-l", "-q"]);
            c0
        }
        Tool::Wrk(port, path) => {
            let mut c0 = Command::new("wrk");
            let url = format!("http://{}:{port}{path}", s.ip);
            c0.args(["-t", "2", "-c", &c, "-d", &format!("{secs}s"), "--timeout", "10s", &url]);
            c0
        }
        Tool::Pgbench => {
            let mut c0 = Command::new("pgbench");
            c0.args(["-h", &s.ip, "-p", "5432", "-U", "postgres", "-n", "-c", &c, "-j", "2", "-T", &secs, "postgres"]);
            c0
        }
    };
    Load { tool, bg: Bg::spawn(s.dir(), tag, &mut cmd), started: Instant::now() }
}

impl Load {
    /// Wait for the end of the phase and read the tool's own counts.
    pub fn finish(mut self) -> LoadReport {
        let mut errors = Vec::new();
        let e = match self.tool {
            Tool::RedisBenchmark => {
                while self.bg.running() && self.started.elapsed() < Duration::from_secs(LOAD_SECS) {
                    std::thread::sleep(Duration::from_millis(20));
                }
                if self.bg.running() {
                    self.bg.interrupt()
                } else {
                    let e = self.bg.wait(1);
                    errors.push(format!("redis-benchmark ended by itself with status {:?}", e.code));
                    e
                }
            }
            _ => {
                let e = self.bg.wait(LOAD_SECS + 60);
                if e.code != Some(0) {
                    errors.push(format!("{} exited with status {:?}", self.tool.name(), e.code));
                }
                e
            }
        };
        let all = format!("{}{}", e.out, e.err);
        let requests = match self.tool {
            Tool::RedisBenchmark => {
                for l in e.err.lines().filter(|l| l.contains("Error") || l.contains("error")) {
                    errors.push(l.trim().to_string());
                }
                // Requests of every test run to its end.
                all.split(['\r', '\n']).filter(|l| l.contains("requests per second")).count() as u64 * 20000
            }
            Tool::Wrk(..) => {
                if let Some(l) = all.lines().find(|l| l.contains("Socket errors")) {
                    errors.push(l.trim().to_string());
                }
                if let Some(l) = all.lines().find(|l| l.contains("Non-2xx or 3xx")) {
                    errors.push(l.trim().to_string());
                }
                number_before(&all, " requests in").unwrap_or(0.0) as u64
            }
            Tool::Pgbench => {
                let failed = number_after(&all, "number of failed transactions: ");
                if failed != Some(0.0) {
                    errors.push(format!("number of failed transactions: {failed:?}"));
                }
                for l in e.err.lines().filter(|l| l.contains("error") || l.contains("abort")) {
                    errors.push(l.trim().to_string());
                }
                number_after(&all, "number of transactions actually processed: ").unwrap_or(0.0) as u64
            }
        };
        if requests == 0 && errors.is_empty() {
            errors.push("no request completed".into());
        }
        LoadReport { requests, errors, output: all }
    }
}

/// `GET path` on a new connection to the pod (20 s at most); the body of
/// a 200 answer.
pub fn http_get(s: &ServerEnv, port: u16, path: &str) -> String {
    use std::io::{Read, Write};
    let mut c = connect(s.addr(port));
    let req = format!("GET {path} HTTP/1.1\r\nHost: pod\r\nConnection: close\r\n\r\n");
    c.write_all(req.as_bytes()).unwrap_or_else(|e| panic!("GET {path}: {e}"));
    let mut all = String::new();
    c.read_to_string(&mut all).unwrap_or_else(|e| panic!("GET {path}: {e}; log:\n{}", s.logs()));
    let (head, body) = all.split_once("\r\n\r\n").unwrap_or_else(|| panic!("GET {path}: answer {all:?}"));
    assert!(head.starts_with("HTTP/1.1 200"), "GET {path}: {head}");
    body.to_string()
}

/// The commands of the pod's processes, from its cgroup.
/// Per pod PID, the fd numbers of each process of image `image` (those
/// with any).
fn image_fds(env: &PodEnv, image: &Path) -> BTreeMap<i64, Vec<i64>> {
    let v: serde_json::Value = serde_json::from_str(&env.ok(&["inspect", "--json", image.to_str().unwrap()])).unwrap();
    let mut out = BTreeMap::new();
    for p in v["processes"].as_array().cloned().unwrap_or_default() {
        let mut fds: Vec<i64> =
            p["fds"].as_array().cloned().unwrap_or_default().iter().filter_map(|f| f["fd"].as_i64()).collect();
        fds.sort_unstable();
        if !fds.is_empty() {
            out.insert(p["pid"].as_i64().unwrap_or(0), fds);
        }
    }
    out
}

/// Per pod PID, the fd numbers of each process of the pod now.
fn pod_fds(s: &ServerEnv) -> BTreeMap<i64, Vec<i64>> {
    let procs = format!("/sys/fs/cgroup/pids/{}/{}/cgroup.procs", s.env.cgroup_parent(), s.name);
    let mut out = BTreeMap::new();
    for host in std::fs::read_to_string(procs).unwrap_or_default().split_whitespace() {
        let status = std::fs::read_to_string(format!("/proc/{host}/status")).unwrap_or_default();
        let Some(pid) = status
            .lines()
            .find_map(|l| l.strip_prefix("NSpid:"))
            .and_then(|v| v.split_whitespace().last()?.parse().ok())
        else {
            continue;
        };
        let mut fds: Vec<i64> = std::fs::read_dir(format!("/proc/{host}/fd"))
            .map(|d| d.flatten().filter_map(|e| e.file_name().to_str()?.parse().ok()).collect())
            .unwrap_or_default();
        fds.sort_unstable();
        if !fds.is_empty() {
            out.insert(pid, fds);
        }
    }
    out
}

pub fn pod_commands(s: &ServerEnv) -> Vec<String> {
    let procs = format!("/sys/fs/cgroup/pids/{}/{}/cgroup.procs", s.env.cgroup_parent(), s.name);
    let procs = std::fs::read_to_string(procs).unwrap_or_default();
    procs
        .split_whitespace()
        .filter_map(|p| std::fs::read_to_string(format!("/proc/{p}/comm")).ok())
        .map(|c| c.trim().to_string())
        .collect()
}
