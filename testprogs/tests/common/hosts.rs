//! Two "hosts" and a client on one Ethernet segment, all on this machine:
//! the stage for live-migration tests, where a pod leaves host A for host
//! B while a client keeps talking to it.
//!
//! [`TwoHosts::new`] makes four network namespaces: `cp-<tag>-a` (host A),
//! `cp-<tag>-b` (host B), `cp-<tag>-c` (the client) and `cp-<tag>-w` (the
//! "wire"), which holds a bridge `wire0`. Each node has an `eth0` whose veth
//! peer (`cpw<tag><a|b|c>`) is a port of `wire0`; the veths are made inside
//! the wire namespace with their node end created directly in the node's
//! namespace, so no interface of the test ever sits in the root namespace.
//! A, B and the client have SUBNET.1, .2 and .3/24, and no other route: a
//! node reaches only the segment. Each host also has a state directory of
//! its own (for `CRYOPOD_STATE_DIR`).
//!
//! Network safety: while a [`TwoHosts`] lives, the root namespace has a
//! route `unreachable SUBNET.0/24 metric 4243` (pods' guards use 4242), so a
//! packet for the test subnet can never leave the machine by the default
//! route, whatever happens to the namespaces. A subnet the machine already
//! routes or uses is refused.
//!
//! Dropping a [`TwoHosts`] (also while a test panics) removes everything it
//! made: the processes it spawned, anything still running in its
//! namespaces, the namespaces (with their veths and bridge), the guard
//! route and the state directories. Namespaces of the same names left by a
//! run that was killed are removed first (said on stderr). The machine-wide
//! test lock is held the whole time.

use super::{serial, tree_of, Serial};
use std::io::Read;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Metric of the guard route: marks it as this harness's (pods use 4242).
pub const GUARD_METRIC: &str = "4243";
/// The bridge in the wire namespace.
pub const BRIDGE: &str = "wire0";
/// The node end of each veth.
pub const NODE_IF: &str = "eth0";
/// How long [`TwoHosts::run_in`] lets a command run.
pub const RUN_TIMEOUT: Duration = Duration::from_secs(30);
/// How long cleanup waits for killed processes to end.
const KILL_WAIT: Duration = Duration::from_secs(5);

/// A node on the segment.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Node {
    A,
    B,
    Client,
}

impl Node {
    pub const ALL: [Node; 3] = [Node::A, Node::B, Node::Client];

    /// The letter in its namespace and veth names.
    pub fn letter(self) -> char {
        match self {
            Node::A => 'a',
            Node::B => 'b',
            Node::Client => 'c',
        }
    }

    /// The last octet of its address.
    pub fn octet(self) -> u8 {
        match self {
            Node::A => 1,
            Node::B => 2,
            Node::Client => 3,
        }
    }
}

/// A process spawned by [`TwoHosts::spawn_in`]: its pid, and a pidfd that
/// pins the process, so that cleanup never signals a reused pid.
struct Spawned {
    pid: i32,
    pidfd: Option<OwnedFd>,
}

/// Two hosts and a client on one segment; see the module documentation.
pub struct TwoHosts {
    tag: String,
    subnet: String,
    /// Parent of the state directories (removed at the end).
    state_root: PathBuf,
    state_a: PathBuf,
    state_b: PathBuf,
    /// Namespaces to remove at the end (each recorded before it is made).
    created: Vec<String>,
    /// Whether the guard route is ours to remove.
    guard_owned: bool,
    spawned: Mutex<Vec<Spawned>>,
    // Last: released after `drop` has removed everything.
    _lock: Serial,
}

impl TwoHosts {
    /// Build the segment for `tag` (1 to 11 lowercase letters or digits,
    /// unique to the test) on `subnet`, three octets such as "10.77.120"
    /// (the /24 the nodes use).
    pub fn new(tag: &str, subnet: &str) -> TwoHosts {
        assert!(
            !tag.is_empty() && tag.len() <= 11 && tag.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit()),
            "TwoHosts tag {tag:?}: want 1 to 11 lowercase letters or digits (interface names are at most 15 bytes)"
        );
        let octets: Vec<&str> = subnet.split('.').collect();
        assert!(
            octets.len() == 3 && octets.iter().all(|o| o.parse::<u8>().is_ok_and(|n| n.to_string() == *o)),
            "TwoHosts subnet {subnet:?}: want three octets such as \"10.77.120\""
        );
        let lock = serial();
        let state_root = std::env::temp_dir().join(format!("cryopod-hosts-{tag}-{}", std::process::id()));
        let mut hosts = TwoHosts {
            tag: tag.to_string(),
            subnet: subnet.to_string(),
            state_a: state_root.join("a"),
            state_b: state_root.join("b"),
            state_root,
            created: Vec::new(),
            guard_owned: false,
            spawned: Mutex::new(Vec::new()),
            _lock: lock,
        };
        // From here on a panic drops `hosts`, which removes what was made.
        hosts.remove_leftovers();
        hosts.guard_subnet();
        hosts.make_state_dirs();
        hosts.make_segment();
        hosts
    }

    pub fn tag(&self) -> &str {
        &self.tag
    }

    /// The /24, "a.b.c.0/24".
    pub fn network(&self) -> String {
        format!("{}.0/24", self.subnet)
    }

    /// A node's address, without prefix length ("10.77.120.1").
    pub fn addr(&self, node: Node) -> String {
        format!("{}.{}", self.subnet, node.octet())
    }

    /// A node's namespace name (`cp-<tag>-a`, `-b`, `-c`).
    pub fn ns_name(&self, node: Node) -> String {
        format!("cp-{}-{}", self.tag, node.letter())
    }

    /// The wire namespace's name (`cp-<tag>-w`), which holds the bridge.
    pub fn wire_ns(&self) -> String {
        format!("cp-{}-w", self.tag)
    }

    /// A node's namespace file, /run/netns/NAME (for setns or `nsenter --net=`).
    pub fn ns_path(&self, node: Node) -> PathBuf {
        Path::new("/run/netns").join(self.ns_name(node))
    }

    /// The wire-side veth of a node (`cpw<tag><letter>`, in the wire namespace).
    pub fn wire_port(&self, node: Node) -> String {
        format!("cpw{}{}", self.tag, node.letter())
    }

    /// Host A's state directory (exists, empty at first).
    pub fn state_a(&self) -> &Path {
        &self.state_a
    }

    /// Host B's state directory (exists, empty at first).
    pub fn state_b(&self) -> &Path {
        &self.state_b
    }

    /// Run `cmd` to its end in `node`'s namespace (`ip netns exec NAME
    /// ...`), stdin from /dev/null, output captured; panics if it runs
    /// longer than [`RUN_TIMEOUT`]. The command's program, arguments,
    /// environment changes and working directory are kept (not `env_clear`
    /// nor its stdio settings).
    pub fn run_in(&self, node: Node, cmd: &mut Command) -> Output {
        let mut wrapped = self.wrap(node, cmd);
        wrapped.stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::piped());
        output_within(&mut wrapped, RUN_TIMEOUT)
    }

    /// Start `cmd` in `node`'s namespace (as [`TwoHosts::run_in`]), stdin
    /// from /dev/null, stdout piped to the returned `Child`, stderr
    /// inherited. The process (and its descendants) is killed with SIGKILL
    /// and reaped when `self` is dropped, unless it ended before (then
    /// waiting on the `Child` fails with ECHILD).
    pub fn spawn_in(&self, node: Node, cmd: &mut Command) -> Child {
        let mut wrapped = self.wrap(node, cmd);
        wrapped.stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::inherit());
        let child = wrapped.spawn().unwrap_or_else(|e| panic!("cannot start {wrapped:?}: {e}"));
        let pid = child.id() as i32;
        // Not waited for yet, so `pid` is certainly this child.
        let pidfd = pidfd_open(pid);
        self.spawned.lock().unwrap_or_else(|p| p.into_inner()).push(Spawned { pid, pidfd });
        child
    }

    /// `ping -c1 -W2` from one node to another (busybox's ping where
    /// iputils' is not installed).
    pub fn ping(&self, from: Node, to: Node) -> Output {
        let mut cmd = if on_path("ping") {
            Command::new("ping")
        } else {
            let mut c = Command::new("busybox");
            c.arg("ping");
            c
        };
        cmd.args(["-c1", "-W2", &self.addr(to)]);
        self.run_in(from, &mut cmd)
    }

    /// The state directory of host `node` (A or B).
    pub fn state(&self, node: Node) -> &Path {
        match node {
            Node::A => &self.state_a,
            Node::B => &self.state_b,
            Node::Client => panic!("the client is not a cryopod host"),
        }
    }

    /// `cryopod ARGS` as host `node` (A or B): in its network namespace
    /// only (`nsenter --net`: the machine's mounts, so its cgroup
    /// hierarchies, stay visible, which `ip netns exec` would hide), with
    /// its state directory. Bounded in time like [`TwoHosts::run_in`].
    pub fn cryopod(&self, node: Node, args: &[&str]) -> Output {
        self.cryopod_with(node, args, &[])
    }

    /// [`TwoHosts::cryopod`] with environment variables `env` set (e.g.
    /// CRYOPOD_FAULT).
    pub fn cryopod_with(&self, node: Node, args: &[&str], env: &[(&str, &str)]) -> Output {
        let mut c = self.cryopod_command(node, args);
        c.envs(env.iter().copied()).stderr(Stdio::piped());
        output_within(&mut c, RUN_TIMEOUT)
    }

    /// Wait (20 s at most) until the log of pod `pod` on host `node` has a
    /// line `pred` accepts (`what` names it in the panic); returns the log.
    pub fn wait_log(&self, node: Node, pod: &str, what: &str, pred: impl Fn(&str) -> bool) -> String {
        let t = std::time::Instant::now();
        loop {
            let log = String::from_utf8_lossy(&self.cryopod(node, &["logs", pod]).stdout).into_owned();
            if log.lines().any(&pred) {
                return log;
            }
            assert!(t.elapsed() < Duration::from_secs(20), "pod {pod} on {node:?}: no {what} in its log:\n{log}");
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// The command running `cryopod ARGS` as host `node`, stdin from
    /// /dev/null, stdout piped.
    fn cryopod_command(&self, node: Node, args: &[&str]) -> Command {
        let mut c = Command::new("nsenter");
        c.arg(format!("--net={}", self.ns_path(node).display()))
            .arg(super::cryopod_bin())
            .args(args)
            .env("CRYOPOD_STATE_DIR", self.state(node))
            .stdin(Stdio::null())
            .stdout(Stdio::piped());
        c
    }

    /// Start `cryopod ARGS` as host `node` (as [`TwoHosts::cryopod`]) and
    /// leave it running (`serve`), stdout piped, stderr inherited; it is
    /// killed and reaped when `self` is dropped.
    pub fn spawn_cryopod(&self, node: Node, args: &[&str]) -> Child {
        self.spawn_cryopod_with(node, args, &[])
    }

    /// [`TwoHosts::spawn_cryopod`] with environment variables `env` set.
    pub fn spawn_cryopod_with(&self, node: Node, args: &[&str], env: &[(&str, &str)]) -> Child {
        let mut c = self.cryopod_command(node, args);
        c.envs(env.iter().copied()).stderr(Stdio::inherit());
        let child = c.spawn().unwrap_or_else(|e| panic!("cannot start {c:?}: {e}"));
        let pid = child.id() as i32;
        let pidfd = pidfd_open(pid);
        self.spawned.lock().unwrap_or_else(|p| p.into_inner()).push(Spawned { pid, pidfd });
        child
    }

    /// Give host `node` an uplink bridge `br0` holding its `eth0` (and its
    /// address), as an administrator joins a host's pod bridge to the LAN:
    /// pods run with `--bridge br0` are then on the segment.
    pub fn uplink_bridge(&self, node: Node) {
        let addr = format!("{}/24", self.addr(node));
        for args in [
            vec!["link", "add", "br0", "type", "bridge"],
            vec!["link", "set", NODE_IF, "master", "br0"],
            vec!["addr", "del", &addr, "dev", NODE_IF],
            vec!["addr", "add", &addr, "dev", "br0"],
            vec!["link", "set", "br0", "up"],
        ] {
            let o = self.run_in(node, Command::new("ip").args(&args));
            assert!(o.status.success(), "ip {args:?} in {node:?}: {}", String::from_utf8_lossy(&o.stderr));
        }
    }

    /// Stop every pod a host's state directory records (the end of a test);
    /// first thaw whatever of theirs is frozen (a migration cut short holds
    /// pods frozen, and frozen tasks cannot die).
    fn stop_pods(&self) {
        for node in [Node::A, Node::B] {
            let parent = cryopod_pod::StateDir::new(self.state(node)).cgroup_parent();
            if let Ok(dir) = std::fs::read_dir(Path::new("/sys/fs/cgroup/freezer").join(&parent)) {
                for e in dir.flatten().filter(|e| e.path().is_dir()) {
                    let _ = std::fs::write(e.path().join("freezer.state"), "THAWED");
                }
            }
        }
        for node in [Node::A, Node::B] {
            let Ok(dir) = std::fs::read_dir(self.state(node).join("pods")) else { continue };
            for e in dir.flatten() {
                let name = e.file_name().to_string_lossy().into_owned();
                let o = self.cryopod(node, &["stop", "--timeout", "2", &name]);
                if !o.status.success() {
                    eprintln!("TwoHosts: stopping pod {name} of host {node:?}: {}", String::from_utf8_lossy(&o.stderr));
                }
            }
        }
    }

    /// `ip netns exec NAME PROGRAM ARGS...` with `cmd`'s environment
    /// changes and working directory.
    fn wrap(&self, node: Node, cmd: &Command) -> Command {
        let mut w = Command::new("ip");
        w.args(["netns", "exec"]).arg(self.ns_name(node)).arg(cmd.get_program()).args(cmd.get_args());
        for (k, v) in cmd.get_envs() {
            match v {
                Some(v) => w.env(k, v),
                None => w.env_remove(k),
            };
        }
        if let Some(d) = cmd.get_current_dir() {
            w.current_dir(d);
        }
        w
    }

    /// All four namespaces: the nodes', then the wire's.
    fn all_ns(&self) -> Vec<String> {
        let mut v: Vec<String> = Node::ALL.iter().map(|&n| self.ns_name(n)).collect();
        v.push(self.wire_ns());
        v
    }

    /// Namespaces of our names that a killed run left: remove them.
    fn remove_leftovers(&self) {
        for name in self.all_ns() {
            if Path::new("/run/netns").join(&name).exists() {
                eprintln!("TwoHosts: removing network namespace {name}, left by an earlier run");
                remove_netns(&name);
                assert!(
                    !Path::new("/run/netns").join(&name).exists(),
                    "TwoHosts: network namespace {name} exists and cannot be removed (`ip netns del {name}`)"
                );
            }
        }
    }

    /// Refuse a subnet the root namespace already routes (an address, a
    /// pod network, any route inside it), then add the guard route
    /// (adopting one a killed run left: the metric marks it as ours).
    fn guard_subnet(&mut self) {
        let net = self.network();
        let guard = format!("unreachable {net} metric {GUARD_METRIC}");
        let routes = ip_out(&["-4", "route", "show", "table", "all", "root", &net]);
        let others: Vec<&str> = routes.lines().map(str::trim).filter(|l| !l.is_empty() && *l != guard).collect();
        assert!(
            others.is_empty(),
            "TwoHosts: subnet {net} is in use on this machine, choose another:\n{}",
            others.join("\n")
        );
        if routes.lines().any(|l| l.trim() == guard) {
            eprintln!("TwoHosts: adopting the route `{guard}` left by an earlier run");
        } else {
            ip(&["route", "add", "unreachable", &net, "metric", GUARD_METRIC]);
        }
        self.guard_owned = true;
    }

    fn make_state_dirs(&self) {
        // State directories of runs that were killed (no other TwoHosts
        // lives while we hold the lock; the pid check is for good measure).
        let prefix = format!("cryopod-hosts-{}-", self.tag);
        for e in std::fs::read_dir(std::env::temp_dir()).into_iter().flatten().flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            let Some(pid) = name.strip_prefix(&prefix).and_then(|p| p.parse::<u32>().ok()) else { continue };
            let mine = pid == std::process::id();
            if mine || !Path::new(&format!("/proc/{pid}")).exists() {
                if !mine {
                    eprintln!("TwoHosts: removing {}, left by an earlier run", e.path().display());
                }
                let _ = std::fs::remove_dir_all(e.path());
            }
        }
        for d in [&self.state_a, &self.state_b] {
            std::fs::create_dir_all(d).unwrap_or_else(|e| panic!("TwoHosts: cannot create {}: {e}", d.display()));
        }
    }

    /// The namespaces, the bridge, the veths and the addresses.
    fn make_segment(&mut self) {
        let wire = self.wire_ns();
        self.add_ns(&wire);
        ip(&["-n", &wire, "link", "set", "lo", "up"]);
        ip(&["-n", &wire, "link", "add", BRIDGE, "type", "bridge"]);
        ip(&["-n", &wire, "link", "set", BRIDGE, "up"]);
        for node in Node::ALL {
            let ns = self.ns_name(node);
            let port = self.wire_port(node);
            self.add_ns(&ns);
            // Made in the wire namespace, its peer directly in the node's.
            ip(&["-n", &wire, "link", "add", &port, "type", "veth", "peer", "name", NODE_IF, "netns", &ns]);
            ip(&["-n", &wire, "link", "set", &port, "master", BRIDGE, "up"]);
            ip(&["-n", &ns, "link", "set", "lo", "up"]);
            ip(&["-n", &ns, "addr", "add", &format!("{}/24", self.addr(node)), "dev", NODE_IF]);
            ip(&["-n", &ns, "link", "set", NODE_IF, "up"]);
        }
    }

    fn add_ns(&mut self, name: &str) {
        // Recorded first: even a half-made namespace is removed at the end.
        self.created.push(name.to_string());
        ip(&["netns", "add", name]);
    }
}

impl Drop for TwoHosts {
    fn drop(&mut self) {
        // Every step is tried, whatever the others did; nothing here panics.
        let spawned = std::mem::take(&mut *self.spawned.lock().unwrap_or_else(|p| p.into_inner()));
        end_spawned(spawned);
        // Pods of the hosts (cgroups, veths, records) through cryopod, while
        // the hosts' namespaces still exist.
        self.stop_pods();
        for name in self.created.iter().rev() {
            remove_netns(name);
        }
        if self.guard_owned {
            let net = self.network();
            let ok = Command::new("ip")
                .args(["route", "del", "unreachable", &net, "metric", GUARD_METRIC])
                .stdin(Stdio::null())
                .output()
                .is_ok_and(|o| o.status.success());
            if !ok {
                eprintln!("TwoHosts: could not remove the route `unreachable {net} metric {GUARD_METRIC}`");
            }
        }
        if let Err(e) = std::fs::remove_dir_all(&self.state_root) {
            if e.kind() != std::io::ErrorKind::NotFound {
                eprintln!("TwoHosts: could not remove {}: {e}", self.state_root.display());
            }
        }
    }
}

/// SIGKILL the spawned processes that have not ended (with their
/// descendants), and reap them.
fn end_spawned(spawned: Vec<Spawned>) {
    let mut waiting = Vec::new();
    for s in spawned {
        let Some(fd) = s.pidfd else {
            // No pidfd (cannot happen on Linux >= 5.3): by pid, if it is
            // still our child.
            if parent_of(s.pid) == Some(std::process::id() as i32) {
                // SAFETY: kill by the pid of our own unreaped child.
                unsafe { libc::kill(s.pid, libc::SIGKILL) };
                // SAFETY: blocking wait for our own child, which was just killed.
                unsafe { libc::waitpid(s.pid, std::ptr::null_mut(), 0) };
            }
            continue;
        };
        // Read the tree first: if the signal then reaches the process, it
        // existed all along, so the pid read was its own.
        let tree = tree_of(s.pid);
        if pidfd_kill(&fd) {
            for &p in &tree[1..] {
                // SAFETY: kill by pid of a descendant of our spawned process.
                unsafe { libc::kill(p, libc::SIGKILL) };
            }
        }
        waiting.push(fd);
    }
    wait_and_reap(&waiting);
}

/// Kill what still runs in network namespace `name`, then delete it
/// (which destroys its interfaces).
fn remove_netns(name: &str) {
    let file = Path::new("/run/netns").join(name);
    if let Ok(ns) = std::fs::metadata(&file) {
        let mut killed = Vec::new();
        for (pid, fd) in processes_in((ns.dev(), ns.ino())) {
            if pidfd_kill(&fd) {
                eprintln!("TwoHosts: killed pid {pid} ({}), still running in {name}", comm(pid));
                killed.push(fd);
            }
        }
        wait_and_reap(&killed);
    }
    match Command::new("ip").args(["netns", "del", name]).stdin(Stdio::null()).output() {
        Ok(o) if o.status.success() => {}
        Ok(o) => eprintln!("TwoHosts: `ip netns del {name}` failed: {}", String::from_utf8_lossy(&o.stderr).trim()),
        Err(e) => eprintln!("TwoHosts: cannot run `ip netns del {name}`: {e}"),
    }
}

/// Processes (but this one) whose network namespace is `ns` (device and
/// inode of its nsfs file), each with a pidfd opened before the check, so
/// that the pidfd is known to be that process's.
fn processes_in(ns: (u64, u64)) -> Vec<(i32, OwnedFd)> {
    let me = std::process::id() as i32;
    let Ok(dir) = std::fs::read_dir("/proc") else { return Vec::new() };
    let pids = dir.flatten().filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok()).filter(|&p| p != me);
    pids.filter_map(|pid| {
        let fd = pidfd_open(pid)?;
        let m = std::fs::metadata(format!("/proc/{pid}/ns/net")).ok()?;
        ((m.dev(), m.ino()) == ns).then_some((pid, fd))
    })
    .collect()
}

/// Wait (at most [`KILL_WAIT`] in all) until the processes have ended, and
/// reap those that are our children.
fn wait_and_reap(fds: &[OwnedFd]) {
    let deadline = Instant::now() + KILL_WAIT;
    for fd in fds {
        let left = deadline.saturating_duration_since(Instant::now()).as_millis() as i32;
        let mut p = libc::pollfd { fd: fd.as_raw_fd(), events: libc::POLLIN, revents: 0 };
        // SAFETY: poll on one pollfd we own (a pidfd turns readable when
        // its process ends).
        unsafe { libc::poll(&mut p, 1, left) };
        // SAFETY: zeroed siginfo is a valid out-parameter; a non-blocking
        // wait, which fails harmlessly for a process that is not our child
        // or was reaped already.
        let mut info: libc::siginfo_t = unsafe { std::mem::zeroed() };
        unsafe { libc::waitid(libc::P_PIDFD, fd.as_raw_fd() as libc::id_t, &mut info, libc::WEXITED | libc::WNOHANG) };
    }
}

fn pidfd_open(pid: i32) -> Option<OwnedFd> {
    // SAFETY: pidfd_open(pid, 0) returns a new descriptor or -1.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) };
    // SAFETY: a fresh descriptor that nothing else owns.
    (fd >= 0).then(|| unsafe { OwnedFd::from_raw_fd(fd as i32) })
}

/// SIGKILL through a pidfd; false if the process has been reaped.
fn pidfd_kill(fd: &OwnedFd) -> bool {
    // SAFETY: pidfd_send_signal on a pidfd we own, no siginfo.
    let r =
        unsafe { libc::syscall(libc::SYS_pidfd_send_signal, fd.as_raw_fd(), libc::SIGKILL, std::ptr::null::<u8>(), 0) };
    r == 0
}

fn parent_of(pid: i32) -> Option<i32> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    stat.rsplit_once(')')?.1.split_whitespace().nth(1)?.parse().ok()
}

fn comm(pid: i32) -> String {
    std::fs::read_to_string(format!("/proc/{pid}/comm")).map(|s| s.trim().to_string()).unwrap_or_default()
}

/// Whether `prog` is an executable in a directory of $PATH.
fn on_path(prog: &str) -> bool {
    std::env::var_os("PATH").is_some_and(|p| std::env::split_paths(&p).any(|d| d.join(prog).is_file()))
}

/// Run `ip ARGS` in the root namespace; panics with its error if it fails.
fn ip(args: &[&str]) {
    ip_out(args);
}

/// Stdout of `ip ARGS`; panics with its error if it fails.
fn ip_out(args: &[&str]) -> String {
    let o = Command::new("ip")
        .args(args)
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("TwoHosts: cannot run `ip` (install iproute2): {e}"));
    assert!(
        o.status.success(),
        "TwoHosts: `ip {}` failed: {}",
        args.join(" "),
        String::from_utf8_lossy(&o.stderr).trim()
    );
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// Run `cmd` (stdout and stderr piped) to its end; kill it and panic if
/// it, or a process holding its output open, runs longer than `limit`.
fn output_within(cmd: &mut Command, limit: Duration) -> Output {
    let mut child = cmd.spawn().unwrap_or_else(|e| panic!("cannot start {cmd:?}: {e}"));
    let deadline = Instant::now() + limit;
    let reader = |r: Option<Box<dyn Read + Send>>| {
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut buf = Vec::new();
            if let Some(mut r) = r {
                let _ = r.read_to_end(&mut buf);
            }
            let _ = tx.send(buf);
        });
        rx
    };
    let out = reader(child.stdout.take().map(|s| Box::new(s) as Box<dyn Read + Send>));
    let err = reader(child.stderr.take().map(|s| Box::new(s) as Box<dyn Read + Send>));
    let status = loop {
        match child.try_wait() {
            Ok(Some(st)) => break st,
            Ok(None) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(5)),
            other => {
                let _ = child.kill();
                let _ = child.wait();
                panic!("{cmd:?} did not end within {limit:?} ({other:?})");
            }
        }
    };
    let collect = |rx: std::sync::mpsc::Receiver<Vec<u8>>| {
        rx.recv_timeout(deadline.saturating_duration_since(Instant::now())).unwrap_or_else(|_| {
            panic!("{cmd:?} ended, but a process it started still holds its output open (use spawn_in for servers)")
        })
    };
    let stdout = collect(out);
    let stderr = collect(err);
    Output { status, stdout, stderr }
}

/// Run `cmd` (a cryopod command that connects to a `serve` just started)
/// until the server listens: again while it says "Connection refused", for
/// up to 20 s.
pub fn once_listening(cmd: impl Fn() -> Output) -> Output {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let o = cmd();
        if !String::from_utf8_lossy(&o.stderr).contains("Connection refused") || Instant::now() > deadline {
            return o;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Two hosts, a key file, host B serving migrations (its pods on its own
/// bridge), and a work directory for a test program on A; returns them
/// with B's ADDR:PORT.
pub fn serving_hosts(tag: &str, subnet: &str) -> (TwoHosts, PathBuf, String, PathBuf) {
    let (h, key, work) = keyed_hosts(tag, subnet);
    let dest = format!("{}:7070", h.addr(Node::B));
    let serve = ["serve", "--listen", &dest, "--key", key.to_str().unwrap(), "--timeout", "60"];
    // (Killed and reaped when `h` goes.)
    let _serve = h.spawn_cryopod(Node::B, &serve).id();
    (h, key, dest, work)
}

/// Two hosts, a key file, and a work directory for a test program on A.
pub fn keyed_hosts(tag: &str, subnet: &str) -> (TwoHosts, PathBuf, PathBuf) {
    let h = TwoHosts::new(tag, subnet);
    let key = h.state(Node::A).join("key");
    std::fs::write(&key, [0x21u8; 32]).unwrap();
    let work = h.state(Node::A).join("work");
    std::fs::create_dir_all(&work).unwrap();
    (h, key, work)
}
