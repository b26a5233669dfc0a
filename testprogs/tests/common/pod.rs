//! Pod test harness: a private state directory, a busybox root file
//! system, `cryopod` run against that state, and a guard that stops every
//! pod of the test (and checks for leftovers) even when an assertion fails.

use super::{cryopod_bin, reap_all, serial};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

pub struct PodEnv {
    pub dir: PathBuf,
    pub state: PathBuf,
    /// The pod networks' guard routes there were before the test (those it
    /// adds are removed at its end).
    guards_before: Vec<String>,
    _lock: super::Serial,
}

/// (exit code, stdout, stderr)
pub type Out = (i32, String, String);

impl PodEnv {
    pub fn new(tag: &str) -> PodEnv {
        let lock = serial();
        // SAFETY: prctl with integer arguments (restored pods' first
        // processes are re-parented to us, and we reap them).
        unsafe { libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) };
        let dir = PathBuf::from(format!("/tmp/cryopod-test-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let state = dir.join("state");
        PodEnv { dir, state, guards_before: guard_routes(), _lock: lock }
    }

    pub fn cryopod(&self, args: &[&str]) -> Out {
        self.cryopod_env(args, &[])
    }

    /// With extra environment variables (e.g. CRYOPOD_FAULT).
    pub fn cryopod_env(&self, args: &[&str], env: &[(&str, &str)]) -> Out {
        let o = Command::new(cryopod_bin())
            .args(args)
            .envs(env.iter().copied())
            .env("CRYOPOD_STATE_DIR", &self.state)
            .stdin(Stdio::null())
            .output()
            .expect("run cryopod");
        reap_all();
        (
            o.status.code().unwrap_or(-1),
            String::from_utf8_lossy(&o.stdout).into_owned(),
            String::from_utf8_lossy(&o.stderr).into_owned(),
        )
    }

    /// Run cryopod and insist on success; returns stdout.
    pub fn ok(&self, args: &[&str]) -> String {
        let o = self.cryopod(args);
        assert_eq!(o.0, 0, "cryopod {args:?} failed:\n{}{}", o.1, o.2);
        o.1
    }

    /// Run cryopod and insist on failure with one clear line; returns it.
    pub fn fails(&self, args: &[&str]) -> String {
        let o = self.cryopod(args);
        assert_ne!(o.0, 0, "cryopod {args:?} should have failed:\n{}{}", o.1, o.2);
        let lines: Vec<&str> = o.2.lines().filter(|l| !l.trim().is_empty()).collect();
        assert_eq!(lines.len(), 1, "cryopod {args:?}: expected one sentence, got:\n{}", o.2);
        lines[0].to_string()
    }

    /// A busybox root file system (a copy of the static busybox, links for
    /// its applets, and the directories a pod mounts on).
    pub fn rootfs(&self) -> PathBuf {
        let r = self.dir.join("rootfs");
        for d in ["bin", "proc", "dev", "tmp", "sys", "etc", "data"] {
            std::fs::create_dir_all(r.join(d)).unwrap();
        }
        let bb = ["/usr/bin/busybox", "/bin/busybox"].iter().find(|p| Path::new(p).exists()).copied();
        let bb = bb.expect("busybox is missing: run scripts/setup.sh (it installs busybox-static)");
        std::fs::copy(bb, r.join("bin/busybox")).unwrap();
        for app in [
            "sh", "ls", "ps", "cat", "echo", "sleep", "hostname", "mount", "ip", "nc", "mkdir", "grep", "wc", "seq",
            "kill", "true", "ipcs",
        ] {
            let _ = std::os::unix::fs::symlink("busybox", r.join("bin").join(app));
        }
        r
    }

    /// Output of `cryopod exec POD -- sh -c SCRIPT` (must succeed).
    pub fn exec(&self, pod: &str, script: &str) -> String {
        self.ok(&["exec", pod, "--", "sh", "-c", script])
    }

    pub fn logs(&self, pod: &str) -> String {
        self.ok(&["logs", pod])
    }

    /// Wait until the pod's log has a line satisfying `pred`.
    pub fn wait_log(&self, pod: &str, what: &str, pred: impl Fn(&str) -> bool) -> String {
        let t = Instant::now();
        loop {
            let log = self.cryopod(&["logs", pod]).1;
            if log.lines().any(&pred) {
                return log;
            }
            assert!(t.elapsed() < Duration::from_secs(20), "pod {pod}: no {what} in its log:\n{log}");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Run test program `bin` in detached pod `pod`, its work directory
    /// made here, and wait for it to say READY (or FAIL in its setup).
    /// Returns the work directory.
    pub fn start_testprog(&self, pod: &str, bin: &str) -> PathBuf {
        let work = self.dir.join("work");
        std::fs::create_dir_all(&work).unwrap();
        self.ok(&["run", "-d", "--name", pod, "--", bin, work.to_str().unwrap()]);
        self.wait_log(pod, "READY", |l| l == "READY" || l.starts_with("FAIL ("));
        work
    }

    /// The whole round trip of test program `bin` in pod `pod`: started,
    /// checkpointed, restored, let go, PASS, stopped, nothing left.
    pub fn round_trip(&self, pod: &str, bin: &str) {
        let work = self.start_testprog(pod, bin);
        let image = self.dir.join("image");
        self.ok(&["checkpoint", pod, "-o", image.to_str().unwrap()]);
        self.ok(&["restore", image.to_str().unwrap(), "--detach"]);
        self.go_and_expect_pass(pod, &work);
    }

    /// Let the restored test program of pod `pod` go (through `work`), wait
    /// for its verdict, which must be PASS, stop the pod and check that
    /// nothing of it is left.
    pub fn go_and_expect_pass(&self, pod: &str, work: &Path) {
        std::fs::write(work.join("go"), b"go").unwrap();
        let log = self.wait_log(pod, "verdict", |l| l.starts_with("PASS") || l.starts_with("FAIL ("));
        assert!(log.contains("PASS"), "{log}");
        self.ok(&["stop", pod]);
        assert_eq!(self.leftovers(pod), Vec::<String>::new());
    }

    /// The directory of this state directory's pod cgroups (as cryopod
    /// names it).
    pub fn cgroup_parent(&self) -> String {
        cryopod_pod::StateDir::new(&self.state).cgroup_parent()
    }

    /// Everything a pod may leave behind on the host: cgroups, veths and
    /// the bridge, mounts, its state directory.
    pub fn leftovers(&self, name: &str) -> Vec<String> {
        let mut out = Vec::new();
        for c in ["memory", "pids", "cpu", "freezer"] {
            let p = format!("/sys/fs/cgroup/{c}/{}/{name}", self.cgroup_parent());
            if Path::new(&p).exists() {
                out.push(p);
            }
        }
        // The pod's veth (named as cryopod names it), and the bridge once
        // no pod is left.
        let (veth, _) = cryopod_pod::net::veth_names(name);
        let mut ifs = vec![veth];
        // The bridge goes with its last port (pods of other state
        // directories may still be attached).
        let ports = std::fs::read_dir("/sys/class/net/cryopod0/brif").map(|d| d.count()).unwrap_or(0);
        if self.pods().is_empty() && ports == 0 {
            ifs.push("cryopod0".into());
        }
        for i in ifs {
            if std::path::Path::new("/sys/class/net").join(&i).exists() {
                out.push(format!("interface {i}"));
            }
        }
        let mi = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
        for l in mi.lines().filter(|l| l.contains(self.dir.to_str().unwrap())) {
            out.push(format!("mount {l}"));
        }
        let sd = self.state.join("pods").join(name);
        if sd.exists() {
            out.push(sd.display().to_string());
        }
        out
    }

    /// Names of the pods in the state directory.
    pub fn pods(&self) -> Vec<String> {
        std::fs::read_dir(self.state.join("pods"))
            .map(|rd| rd.flatten().map(|e| e.file_name().to_string_lossy().into_owned()).collect())
            .unwrap_or_default()
    }

    /// `cryopod ps --json` parsed.
    pub fn ps(&self) -> Vec<serde_json::Value> {
        let v: serde_json::Value = serde_json::from_str(&self.ok(&["ps", "--json"])).expect("ps json");
        v.as_array().cloned().unwrap_or_default()
    }
}

impl Drop for PodEnv {
    fn drop(&mut self) {
        for p in self.pods() {
            let _ = self.cryopod(&["stop", "--timeout", "1", &p]);
        }
        reap_all();
        let _ = std::fs::remove_dir_all(&self.dir);
        for r in guard_routes().into_iter().filter(|r| !self.guards_before.contains(r)) {
            let _ = Command::new("ip").args(["route", "del", "unreachable", &r, "metric", "4242"]).status();
        }
    }
}

/// Networks with a pod network guard route (unreachable, metric 4242).
pub fn guard_routes() -> Vec<String> {
    let out = Command::new("ip").args(["-4", "route", "show", "type", "unreachable"]).output().expect("ip route");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|l| l.contains("metric 4242"))
        .filter_map(|l| l.split_whitespace().nth(1).map(str::to_string))
        .collect()
}
