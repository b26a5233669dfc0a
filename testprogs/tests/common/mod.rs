//! Test harness: start a program, wait for READY, checkpoint it with the
//! real `cryopod` binary, restore it, let it verify itself, and clean up
//! every process it started even when an assertion fails.
#![allow(dead_code)]

pub mod hosts;
pub mod kill;
pub mod pod;
pub mod servers;
pub mod streams;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Bytes in one unit of the sizes cryopod prints ("12.3 MiB": `unit` is
/// "MiB"), None for another word.
pub fn unit_bytes(unit: &str) -> Option<f64> {
    let k = ["B", "KiB", "MiB", "GiB", "TiB"].iter().position(|u| *u == unit)?;
    Some(1024f64.powi(k as i32))
}

/// The cryopod binary built next to this test's own executable.
pub fn cryopod_bin() -> PathBuf {
    let exe = std::env::current_exe().expect("current_exe");
    let dir = exe.parent().and_then(|d| d.parent()).expect("target dir");
    let bin = dir.join("cryopod");
    assert!(bin.exists(), "{} is missing: run `cargo build --workspace` first", bin.display());
    bin
}

/// Tests change global things (PIDs, the process table): run them one at a time.
pub fn serial() -> Serial {
    static LOCK: std::sync::Mutex<()> = std::sync::Mutex::new(());
    let guard = LOCK.lock().unwrap_or_else(|p| p.into_inner());
    // Test binaries of other checkouts share the pod bridge and the
    // host's cgroups: one test at a time on the whole machine.
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open("/tmp/cryopod-tests.lock")
        .expect("open /tmp/cryopod-tests.lock");
    // SAFETY: flock on a descriptor we own; released when `file` closes.
    while unsafe { libc::flock(std::os::fd::AsRawFd::as_raw_fd(&file), libc::LOCK_EX) } != 0 {
        assert_eq!(std::io::Error::last_os_error().raw_os_error(), Some(libc::EINTR), "flock");
    }
    Serial { _file: file, _guard: guard }
}

/// Held for a test's whole run: this process's lock and the machine-wide
/// file lock (dropped in that order: the file first).
pub struct Serial {
    _file: std::fs::File,
    _guard: std::sync::MutexGuard<'static, ()>,
}

pub struct Run {
    pub dir: PathBuf,
    pub image: PathBuf,
    pub child: Option<Child>,
    pub pid: i32,
    /// Every pid this test must end, whatever happens.
    pub owned: Vec<i32>,
    _lock: Serial,
}

/// A process and all its descendants (read from /proc before killing).
pub fn tree_of(pid: i32) -> Vec<i32> {
    let mut out = vec![pid];
    let mut i = 0;
    while i < out.len() {
        let p = out[i];
        if let Ok(tasks) = std::fs::read_dir(format!("/proc/{p}/task")) {
            for t in tasks.flatten() {
                let f = t.path().join("children");
                if let Ok(s) = std::fs::read_to_string(f) {
                    out.extend(s.split_whitespace().filter_map(|x| x.parse::<i32>().ok()));
                }
            }
        }
        i += 1;
    }
    out
}

impl Drop for Run {
    fn drop(&mut self) {
        // Every process this test started or restored, with all their
        // descendants, even when a checkpoint failed half-way.
        let all: Vec<i32> = self.owned.iter().flat_map(|&p| tree_of(p)).collect();
        for &p in &all {
            // SAFETY: kill by pid of processes this test started or restored.
            unsafe { libc::kill(p, libc::SIGKILL) };
        }
        // Wait (bounded) until they are gone, so nothing writes into the
        // directory while it is removed.
        let t = Instant::now();
        while all.iter().any(|p| Path::new(&format!("/proc/{p}")).exists()) && t.elapsed() < Duration::from_secs(5) {
            reap_all();
            std::thread::sleep(Duration::from_millis(1));
        }
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
        reap_all();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Children a test waits for itself (a load generator in the background):
/// [`reap_all`] leaves them, or their `Child` would never see them end.
pub static WAITED_BY_OWNER: std::sync::Mutex<Vec<i32>> = std::sync::Mutex::new(Vec::new());

/// Reap any zombie children (we are a subreaper for restored trees), but
/// those in [`WAITED_BY_OWNER`].
pub fn reap_all() {
    let keep = WAITED_BY_OWNER.lock().unwrap_or_else(|p| p.into_inner()).clone();
    let tasks = std::fs::read_dir("/proc/self/task").map(|d| d.flatten().collect::<Vec<_>>()).unwrap_or_default();
    for t in tasks {
        let kids = std::fs::read_to_string(t.path().join("children")).unwrap_or_default();
        for pid in kids.split_whitespace().filter_map(|p| p.parse::<i32>().ok()).filter(|p| !keep.contains(p)) {
            let mut st = 0;
            // SAFETY: non-blocking wait for a child of ours (a zombie or
            // not: only an ended one is reaped).
            unsafe { libc::waitpid(pid, &mut st, libc::WNOHANG | libc::__WALL) };
        }
    }
}

fn become_subreaper() {
    // SAFETY: prctl with integer arguments.
    unsafe { libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) };
}

impl Run {
    /// Start `program args...` with stdout and stderr to files in a fresh
    /// directory, and wait for READY.
    pub fn start(name: &str, program: &str, args: &[&str]) -> Run {
        let lock = serial();
        become_subreaper();
        let dir = PathBuf::from(format!("/tmp/cryopod-test-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let image = dir.join("image");
        let out = std::fs::File::create(dir.join("out")).unwrap();
        let err = std::fs::File::create(dir.join("err")).unwrap();
        let mut cmd = Command::new(program);
        cmd.args(args).stdin(Stdio::null()).stdout(out).stderr(err).current_dir(&dir);
        let child = cmd.spawn().unwrap_or_else(|e| panic!("cannot start {program}: {e}"));
        let pid = child.id() as i32;
        let run = Run { dir, image, child: Some(child), pid, owned: vec![pid], _lock: lock };
        run.wait_output("READY", Duration::from_secs(20));
        run
    }

    /// Start a test program from this package with the work dir as argument.
    pub fn testprog(name: &str, bin: &str) -> Run {
        Self::testprog_with(name, bin, &[])
    }

    /// [`Run::testprog`] with more arguments after the work dir.
    pub fn testprog_with(name: &str, bin: &str, args: &[&str]) -> Run {
        let d = format!("/tmp/cryopod-test-{name}-{}", std::process::id());
        let all: Vec<&str> = std::iter::once(d.as_str()).chain(args.iter().copied()).collect();
        Self::start(name, bin, &all)
    }

    pub fn output(&self) -> String {
        std::fs::read_to_string(self.dir.join("out")).unwrap_or_default()
    }

    pub fn wait_output(&self, needle: &str, timeout: Duration) {
        let t = Instant::now();
        while !self.output().contains(needle) {
            if t.elapsed() > timeout {
                panic!(
                    "timed out waiting for {needle:?}; stdout:\n{}\nstderr:\n{}",
                    self.output(),
                    std::fs::read_to_string(self.dir.join("err")).unwrap_or_default()
                );
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    /// `cryopod checkpoint --pid PID -o image [extra]`; returns its stderr.
    pub fn checkpoint(&mut self, extra: &[&str]) -> String {
        let o = cryopod(&["checkpoint", "--pid", &self.pid.to_string(), "-o", self.image.to_str().unwrap()], extra);
        assert!(o.0 == 0, "checkpoint failed: {}", o.2);
        if !extra.contains(&"--leave-running") {
            // The tree is gone: reap our child so its PID is free again.
            if let Some(mut c) = self.child.take() {
                let _ = c.wait();
            }
            // Wait until every process of the image is gone and reaped (we
            // are a subreaper: orphaned grandchildren end up with us). A
            // sealed image is inspected with its key.
            let key: Vec<&str> = extra.windows(2).find(|w| w[0] == "--key").map(|w| w.to_vec()).unwrap_or_default();
            let pids = self.image_pids_with(&key);
            let t = Instant::now();
            while let Some(p) = pids.iter().find(|p| Path::new(&format!("/proc/{p}")).exists()) {
                reap_all();
                assert!(t.elapsed() < Duration::from_secs(10), "pid {p} still exists after checkpoint");
                std::thread::sleep(Duration::from_millis(1));
            }
        }
        o.2
    }

    /// `cryopod checkpoint --pid PID -o image` must fail with one line of
    /// stderr that contains `needle` (the tree is left running).
    pub fn checkpoint_refused(&self, needle: &str) {
        let (code, _, err) =
            cryopod(&["checkpoint", "--pid", &self.pid.to_string(), "-o", self.image.to_str().unwrap()], &[]);
        assert!(code != 0 && err.contains(needle) && err.trim().lines().count() == 1, "{err}");
    }

    /// Every pid in the image (from `cryopod inspect --json`); all become
    /// ours to end once restored.
    pub fn image_pids(&mut self) -> Vec<i32> {
        self.image_pids_with(&[])
    }

    /// [`Run::image_pids`], `inspect` given `extra` arguments (`--key FILE`).
    pub fn image_pids_with(&mut self, extra: &[&str]) -> Vec<i32> {
        let o = cryopod(&["inspect", "--json", self.image.to_str().unwrap()], extra);
        assert!(o.0 == 0, "inspect failed: {}", o.2);
        let v: serde_json::Value = serde_json::from_str(&o.1).expect("inspect json");
        let pids: Vec<i32> =
            v["processes"].as_array().unwrap().iter().map(|p| p["pid"].as_i64().unwrap() as i32).collect();
        for &p in &pids {
            if !self.owned.contains(&p) {
                self.owned.push(p);
            }
        }
        pids
    }

    /// Restore (detached), let the program go, wait for it to exit with
    /// PASS. Returns the program's output.
    pub fn restore_and_verify(&mut self) -> String {
        let o = cryopod(&["restore", self.image.to_str().unwrap(), "--detach"], &[]);
        assert!(o.0 == 0, "restore failed: {}", o.2);
        self.go_and_expect_pass()
    }

    /// Restore, run `inspect` on the restored tree (before it goes on), then
    /// let it verify itself.
    pub fn restore_and_verify_keep(&mut self, inspect: impl FnOnce(i32)) -> String {
        let o = cryopod(&["restore", self.image.to_str().unwrap(), "--detach"], &[]);
        assert!(o.0 == 0, "restore failed: {}", o.2);
        inspect(self.pid);
        self.go_and_expect_pass()
    }

    pub fn go_and_expect_pass(&mut self) -> String {
        std::fs::write(self.dir.join("go"), b"go").unwrap();
        let t = Instant::now();
        loop {
            let out = self.output();
            if out.contains("PASS") {
                return out;
            }
            if out.contains("\nFAIL (") || t.elapsed() > Duration::from_secs(30) {
                panic!(
                    "program did not pass; stdout:\n{out}\nstderr:\n{}",
                    std::fs::read_to_string(self.dir.join("err")).unwrap_or_default()
                );
            }
            reap_all();
            std::thread::sleep(Duration::from_millis(5));
        }
    }
}

/// Run cryopod with args; returns (exit code, stdout, stderr).
pub fn cryopod(args: &[&str], extra: &[&str]) -> (i32, String, String) {
    let o = Command::new(cryopod_bin()).args(args).args(extra).stdin(Stdio::null()).output().expect("run cryopod");
    (
        o.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&o.stdout).into_owned(),
        String::from_utf8_lossy(&o.stderr).into_owned(),
    )
}

/// Assert that what is visible from outside `pid` matches `before` (taken
/// with [`outside_view`] before the checkpoint).
pub fn assert_same_outside(before: &(Vec<String>, Vec<String>, usize), pid: i32) {
    let after = outside_view(pid);
    assert_eq!(before.2, after.2, "thread count differs");
    assert_eq!(before.1, after.1, "fd list differs");
    let missing: Vec<&String> = before.0.iter().filter(|l| !after.0.contains(l)).collect();
    assert!(missing.is_empty(), "areas missing after restore: {missing:#?}");
}

/// Run `cmd` (a cryopod command) to its end, but fail the test if it takes
/// longer than `secs` (killing it first): nothing may hang. Returns (exit
/// code, stdout, stderr).
pub fn run_within(mut cmd: Command, secs: u64) -> (i32, String, String) {
    use std::io::Read;
    let mut child =
        cmd.stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().expect("run cryopod");
    let (mut so, mut se) = (child.stdout.take().expect("stdout"), child.stderr.take().expect("stderr"));
    let t_out = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = so.read_to_string(&mut s);
        s
    });
    let t_err = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = se.read_to_string(&mut s);
        s
    });
    let deadline = Instant::now() + Duration::from_secs(secs);
    let status = loop {
        if let Some(st) = child.try_wait().expect("wait for cryopod") {
            break st;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("{cmd:?} still ran after {secs} s");
        }
        std::thread::sleep(Duration::from_millis(5));
    };
    (status.code().unwrap_or(-1), t_out.join().unwrap_or_default(), t_err.join().unwrap_or_default())
}

/// `cryopod args...` through [`run_within`] (20 s).
pub fn cryopod_within(args: &[&str]) -> (i32, String, String) {
    let mut cmd = Command::new(cryopod_bin());
    cmd.args(args);
    run_within(cmd, 20)
}

/// Make every entry of `dir` (not recursively) and `dir` itself owned by
/// uid:gid.
pub fn chown_tree(dir: &Path, uid: u32, gid: u32) {
    for e in std::fs::read_dir(dir).unwrap().flatten() {
        std::os::unix::fs::lchown(e.path(), Some(uid), Some(gid)).unwrap();
    }
    std::os::unix::fs::chown(dir, Some(uid), Some(gid)).unwrap();
}

/// Run cryopod with `CRYOPOD_FAULT=point`; returns (success, stderr).
pub fn cryopod_with_fault(args: &[&str], point: &str) -> (bool, String) {
    let out = Command::new(cryopod_bin()).args(args).env("CRYOPOD_FAULT", point).output().expect("run cryopod");
    (out.status.success(), String::from_utf8_lossy(&out.stderr).into_owned())
}

/// What is visible from outside: maps (address, perms, offset, path), fd
/// list with targets, thread count.
pub fn outside_view(pid: i32) -> (Vec<String>, Vec<String>, usize) {
    let maps = std::fs::read_to_string(format!("/proc/{pid}/maps"))
        .unwrap_or_default()
        .lines()
        .map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            format!("{} {} {} {}", f[0], f[1], f[2], f.get(5..).map(|x| x.join(" ")).unwrap_or_default())
        })
        .collect();
    let mut fds: Vec<String> = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|rd| {
            rd.flatten()
                .map(|e| {
                    let t = std::fs::read_link(e.path()).map(|p| p.display().to_string()).unwrap_or_default();
                    // Pipe and socket inode numbers are new after a restore.
                    let t = if t.starts_with("pipe:[") {
                        "pipe".to_string()
                    } else if t.starts_with("socket:[") {
                        "socket".to_string()
                    } else {
                        t
                    };
                    format!("{} -> {}", e.file_name().to_string_lossy(), t)
                })
                .collect()
        })
        .unwrap_or_default();
    fds.sort();
    let threads = std::fs::read_dir(format!("/proc/{pid}/task")).map(|d| d.count()).unwrap_or(0);
    (maps, fds, threads)
}

/// The manifest of the image in `img` (tests that forge images).
pub fn read_manifest(img: &Path) -> cryopod_image::Manifest {
    cryopod_image::ImageDir::open(img).and_then(|d| d.manifest()).expect("read the manifest")
}

/// Replace the manifest of the image in `img` (keeping the file's owner
/// and mode).
pub fn write_manifest(img: &Path, m: &cryopod_image::Manifest) {
    std::fs::write(img.join("manifest"), cryopod_image::encode_manifest(m).unwrap()).unwrap();
}

/// Make the image in `dir` claim a CPU with an instruction set and an
/// extended-state component that this CPU lacks (the image was taken here,
/// so a named bit its record lacks is one this CPU lacks). Returns their
/// names as a refusal must say them.
pub fn forge_richer_cpu(dir: &Path) -> (&'static str, &'static str) {
    use cryopod_image::cpu::Word;
    let mut m = read_manifest(dir);
    let candidates = [(Word::Leaf7Edx, 24, "amx_tile"), (Word::Ext1Ecx, 6, "sse4a"), (Word::Leaf7Ebx, 16, "avx512f")];
    let (word, bit, feature) =
        candidates.into_iter().find(|&(w, b, _)| m.cpu.features.get(w) & (1 << b) == 0).expect("a feature to forge");
    *m.cpu.features.get_mut(word) |= 1 << bit;
    let states = [(18u8, "AMX TILEDATA"), (9, "PKRU"), (7, "Hi16_ZMM")];
    let (index, state) = states.into_iter().find(|&(i, _)| m.cpu.xcr0 & (1 << i) == 0).expect("a component to forge");
    let size = 64;
    m.cpu.xcr0 |= 1 << index;
    m.cpu.components.push(cryopod_image::XComponent { index, offset: m.cpu.xsave_size, size });
    m.cpu.components.sort_by_key(|c| c.index);
    m.cpu.xsave_size += size;
    for t in m.processes.iter_mut().flat_map(|p| p.threads.iter_mut()) {
        t.xstate.resize(m.cpu.xsave_size as usize, 0);
    }
    write_manifest(dir, &m);
    (feature, state)
}
