//! Pods: isolation, limits, network, exec/logs/stop leaving nothing behind,
//! checkpoint and restore (twice, side by side), and clear refusals.

mod common;

use common::pod::PodEnv;
use std::io::Write;
use std::time::{Duration, Instant};

fn cgroup_value(env: &PodEnv, ctl: &str, pod: &str, file: &str) -> String {
    let p = format!("/sys/fs/cgroup/{ctl}/{}/{pod}/{file}", env.cgroup_parent());
    std::fs::read_to_string(p).unwrap_or_default().trim().into()
}

/// Lines "n=<i> ..." of a log, as numbers.
fn counts(log: &str) -> Vec<u64> {
    log.lines().filter_map(|l| l.strip_prefix("n=")?.split(' ').next()?.parse().ok()).collect()
}

/// PIDs and commands inside a pod, without the `exec` that asks.
fn pod_processes(env: &PodEnv, pod: &str) -> Vec<String> {
    let snapshot = || -> Vec<String> {
        let out = env.exec(pod, "ps -o pid,comm");
        out.lines()
            .skip(1)
            .map(|l| l.split_whitespace().collect::<Vec<_>>().join(" "))
            // Not the asking `exec`, nor the short-lived sleeps of loops.
            .filter(|l| !l.ends_with(" ps") && !l.ends_with(" sleep"))
            .collect()
    };
    // The processes seen in three listings apart: a loop's short-lived
    // subshells (`$(...)`, a new PID each time) are in one at most.
    let mut v = snapshot();
    for _ in 0..2 {
        std::thread::sleep(std::time::Duration::from_millis(40));
        let again = snapshot();
        v.retain(|p| again.contains(p));
    }
    v.sort();
    v
}

#[test]
fn pod_is_isolated_limited_reachable_and_stop_leaves_nothing() {
    let env = PodEnv::new("pod-run");
    let rootfs = env.rootfs();
    let name = "iso";
    let script = "(sleep 0.2 &); nc -l -p 7777 > /tmp/got & \
                  i=0; while true; do i=$((i+1)); echo n=$i; sleep 0.2; done";
    env.ok(&[
        "run",
        "-d",
        "--name",
        name,
        "--rootfs",
        rootfs.to_str().unwrap(),
        "--hostname",
        "isohost",
        "--ip",
        "10.77.7.2/24",
        "--memory",
        "64M",
        "--pids",
        "32",
        "--cpus",
        "0.5",
        "--",
        "sh",
        "-c",
        script,
    ]);
    env.wait_log(name, "second tick", |l| l == "n=2");
    // PID 1 is cryopod-init, the pod sees only its own processes, and the
    // orphaned `sleep 0.2` was reaped (no zombie).
    std::thread::sleep(Duration::from_millis(400));
    let ps = env.exec(name, "ps -o pid,stat,args");
    assert!(ps.lines().any(|l| l.trim_start().starts_with("1 ") && l.contains("cryopod-init")), "{ps}");
    assert!(!ps.lines().skip(1).any(|l| l.split_whitespace().nth(1).is_some_and(|s| s.starts_with('Z'))), "{ps}");
    assert!(ps.lines().count() < 8, "the pod sees processes that are not its own:\n{ps}");
    assert_eq!(env.exec(name, "hostname").trim(), "isohost");
    // Its own root file system, /tmp a tmpfs, its own /proc.
    let ls = env.exec(name, "ls /");
    assert!(ls.contains("data") && !ls.contains("usr"), "{ls}");
    let mounts = env.exec(name, "cat /proc/mounts");
    assert!(mounts.contains(" /tmp tmpfs") && mounts.contains(" /proc proc"), "{mounts}");
    // One address only, besides loopback.
    let addrs = env.exec(name, "ip -o -4 addr");
    let v4: Vec<&str> = addrs.lines().filter_map(|l| l.split_whitespace().nth(3)).collect();
    assert_eq!(v4, ["127.0.0.1/8", "10.77.7.2/24"], "{addrs}");
    let links = env.exec(name, "ls /sys/class/net");
    assert_eq!(links.split_whitespace().collect::<Vec<_>>(), ["eth0", "lo"]);
    // Limits in the pod's cgroup.
    assert_eq!(cgroup_value(&env, "memory", name, "memory.limit_in_bytes"), (64u64 << 20).to_string());
    assert_eq!(cgroup_value(&env, "pids", name, "pids.max"), "32");
    assert_eq!(cgroup_value(&env, "cpu", name, "cpu.cfs_quota_us"), "50000");
    // The host reaches the pod at its address.
    let mut s = std::net::TcpStream::connect_timeout(&"10.77.7.2:7777".parse().unwrap(), Duration::from_secs(5))
        .expect("connect to the pod from the host");
    s.write_all(b"from-host\n").unwrap();
    drop(s);
    let t = Instant::now();
    while !env.exec(name, "cat /tmp/got").contains("from-host") {
        assert!(t.elapsed() < Duration::from_secs(10), "the pod did not receive the host's message");
        std::thread::sleep(Duration::from_millis(50));
    }
    // ps knows it.
    let ps = env.ps();
    assert_eq!(ps.len(), 1);
    assert_eq!(ps[0]["state"], "running");
    assert_eq!(ps[0]["ip"], "10.77.7.2/24");
    assert!(ps[0]["memory_bytes"].as_u64().unwrap_or(0) > 0);
    // exec returns the command's status.
    assert_eq!(env.cryopod(&["exec", name, "--", "sh", "-c", "exit 7"]).0, 7);
    env.ok(&["stop", name]);
    assert_eq!(env.leftovers(name), Vec::<String>::new());
    assert!(env.ps().is_empty());
}

#[test]
fn pod_checkpoint_restores_twice_side_by_side() {
    let env = PodEnv::new("pod-ckpt");
    let rootfs = env.rootfs();
    let script = "echo ckdomain > /proc/sys/kernel/domainname; \
                  ip addr add 10.99.0.1/24 dev lo; ip route add 10.98.0.0/16 via 10.77.8.1; \
                  mkdir -p /etc/src /bound; echo bound > /etc/src/f; mount --bind /etc/src /bound; \
                  echo hello > /tmp/greeting; mount -t tmpfs -o size=1m,mode=750 none /data; echo inmnt > /data/f; \
                  (while true; do sleep 1; done) & \
                  i=0; while true; do i=$((i+1)); echo \"n=$i $(cat /tmp/greeting) $(cat /data/f) $(hostname)\"; \
                  sleep 0.1; done";
    env.ok(&[
        "run",
        "-d",
        "--name",
        "ck",
        "--rootfs",
        rootfs.to_str().unwrap(),
        "--hostname",
        "ckhost",
        "--ip",
        "10.77.8.2/24",
        "--memory",
        "96M",
        "--pids",
        "40",
        "--",
        "sh",
        "-c",
        script,
    ]);
    env.wait_log("ck", "fifth line", |l| l.starts_with("n=5 "));
    let before = pod_processes(&env, "ck");
    let image = env.dir.join("image");
    let image_s = image.to_str().unwrap();
    env.ok(&["checkpoint", "ck", "-o", image_s]);
    // The pod is gone, nothing of it left; the image holds it.
    assert_eq!(env.leftovers("ck"), Vec::<String>::new());
    let last = *counts(&std::fs::read_to_string(image.join("pod.log")).unwrap()).last().unwrap();
    // Restore it twice: under its own name and address, and as ck2.
    env.ok(&["restore", image_s, "--detach"]);
    env.ok(&["restore", image_s, "--name", "ck2", "--ip", "10.77.8.3/24", "--detach"]);
    for (pod, ip) in [("ck", "10.77.8.2/24"), ("ck2", "10.77.8.3/24")] {
        let log = env.wait_log(pod, "progress", |l| counts(l).first().is_some_and(|&n| n >= last + 3));
        // Counting went on from where it was: no number lost or repeated.
        let n = counts(&log);
        assert!(n.windows(2).all(|w| w[1] == w[0] + 1), "{pod}: count not continuous: {n:?}");
        let tail = log.lines().last().unwrap();
        assert!(tail.ends_with(" hello inmnt ckhost"), "{pod}: {tail}");
        // Same processes with the same in-pod PIDs.
        assert_eq!(pod_processes(&env, pod), before, "{pod}: processes differ");
        assert_eq!(env.exec(pod, "hostname").trim(), "ckhost");
        assert_eq!(env.exec(pod, "cat /proc/sys/kernel/domainname").trim(), "ckdomain");
        let mounts = env.exec(pod, "cat /proc/mounts");
        assert!(mounts.contains("none /data tmpfs rw,relatime,size=1024k,mode=750"), "{pod}: {mounts}");
        assert!(mounts.lines().any(|l| l.split_whitespace().nth(1) == Some("/bound")), "{pod}: bind mount lost");
        assert_eq!(env.exec(pod, "cat /bound/f").trim(), "bound", "{pod}: bind mount source");
        assert!(env.exec(pod, "ip -o -4 addr show eth0").contains(ip), "{pod}: address");
        // What the pod added to its network itself.
        assert!(env.exec(pod, "ip -o -4 addr show lo").contains("10.99.0.1/24"), "{pod}: extra address");
        let routes = env.exec(pod, "ip route");
        assert!(routes.contains("10.98.0.0/16 via 10.77.8.1"), "{pod}: extra route missing:\n{routes}");
        assert_eq!(cgroup_value(&env, "memory", pod, "memory.limit_in_bytes"), (96u64 << 20).to_string());
        assert_eq!(cgroup_value(&env, "pids", pod, "pids.max"), "40");
    }
    // A checkpoint that leaves the pod running: it goes on counting.
    let image2 = env.dir.join("image2");
    env.ok(&["checkpoint", "ck2", "-o", image2.to_str().unwrap(), "--leave-running"]);
    let now = *counts(&env.logs("ck2")).last().unwrap();
    env.wait_log("ck2", "progress after --leave-running", |l| counts(l).first().is_some_and(|&n| n >= now + 3));
    // A pod image owned by a user is refused: it could ask for any mount.
    let owned = env.dir.join("image-owned");
    std::fs::create_dir_all(&owned).unwrap();
    for e in std::fs::read_dir(&image).unwrap().flatten() {
        std::fs::copy(e.path(), owned.join(e.file_name())).unwrap();
    }
    std::os::unix::fs::chown(owned.join("manifest"), Some(1000), Some(1000)).unwrap();
    let e = env.fails(&["restore", owned.to_str().unwrap(), "--name", "ck3", "--ip", "10.77.8.5/24", "--detach"]);
    assert!(e.contains("must be owned by root"), "{e}");
    assert!(!env.pods().contains(&"ck3".to_string()));
    // Restoring under a name in use is refused, changing nothing.
    let e = env.fails(&["restore", image_s, "--ip", "10.77.8.4/24", "--detach"]);
    assert!(e.contains("already exists"), "{e}");
    assert_eq!(env.ps().len(), 2);
    for pod in ["ck", "ck2"] {
        env.ok(&["stop", pod]);
        assert_eq!(env.leftovers(pod), Vec::<String>::new());
    }
}

#[test]
fn pod_bad_input_gets_one_sentence_and_changes_nothing() {
    let env = PodEnv::new("pod-bad");
    for args in [
        &["exec", "nope", "--", "true"][..],
        &["stop", "nope"],
        &["logs", "nope"],
        &["checkpoint", "nope", "-o", "/tmp/cryopod-test-never"],
    ] {
        let e = env.fails(args);
        assert!(e.contains("no pod named \"nope\""), "{args:?}: {e}");
    }
    assert!(!std::path::Path::new("/tmp/cryopod-test-never").exists());
    let e = env.fails(&["run", "--rootfs", "/nonexistent/rootfs", "--", "true"]);
    assert!(e.contains("does not exist"), "{e}");
    env.ok(&["run", "-d", "--name", "a", "--ip", "10.77.9.2/24", "--", "sleep", "100"]);
    let e = env.fails(&["run", "-d", "--name", "a", "--", "true"]);
    assert!(e.contains("already exists"), "{e}");
    let e = env.fails(&["run", "-d", "--name", "b", "--ip", "10.77.9.2/24", "--", "true"]);
    assert!(e.contains("already used by pod a"), "{e}");
    assert_eq!(env.leftovers("b"), Vec::<String>::new());
    let e = env.fails(&["run", "-d", "--name", "c", "--ip", "10.77.9.1/24", "--", "true"]);
    assert!(e.contains("host-bridge address"), "{e}");
    assert_eq!(env.pods(), ["a"]);
    assert_eq!(env.ps()[0]["state"], "running");
    // A pod whose command ended cannot be checkpointed.
    env.ok(&["run", "-d", "--name", "ended", "--", "true"]);
    let t = Instant::now();
    while env.ps().iter().any(|p| p["name"] == "ended" && p["state"] != "exited") {
        assert!(t.elapsed() < Duration::from_secs(10), "pod 'ended' did not end");
        std::thread::sleep(Duration::from_millis(20));
    }
    let img = env.dir.join("img");
    let e = env.fails(&["checkpoint", "ended", "-o", img.to_str().unwrap()]);
    assert!(e.contains("not running"), "{e}");
    assert!(!img.join("manifest").exists());
    let e = env.fails(&["exec", "ended", "--", "true"]);
    assert!(e.contains("not running"), "{e}");
    env.ok(&["stop", "ended"]);
    env.ok(&["stop", "a"]);
    assert_eq!(env.leftovers("a"), Vec::<String>::new());
    // A pod whose creation was cut short (its creator died before writing
    // its record): the next cryopod command, whatever it is, removes what
    // it left.
    let half = env.state.join("pods/half");
    std::fs::create_dir_all(&half).unwrap();
    std::fs::write(half.join("creator"), "4194303").unwrap();
    for c in ["memory", "pids", "cpu", "freezer"] {
        std::fs::create_dir_all(format!("/sys/fs/cgroup/{c}/{}/half", env.cgroup_parent())).unwrap();
    }
    env.ok(&["ps"]);
    assert_eq!(env.leftovers("half"), Vec::<String>::new());
}

/// A server and its client in a pod, talking over a unix socket (abstract
/// name, so each pod has its own): the client sends 1, 2, 3, ... and checks
/// each answer (twice the number); the server checks nothing is skipped or
/// repeated. Restored twice side by side, both go on with no message lost.
#[test]
fn pod_service_over_unix_socket_keeps_talking() {
    service_roundtrip("pod-svc", "socket.AF_UNIX, b\"\\0cryopod-svc\"");
}

/// The same over TCP on the pod's loopback: both ends of the connection
/// (and the listener) come back through TCP_REPAIR, with whatever was in
/// flight; also a checkpoint that leaves the pod running.
#[test]
fn pod_service_over_tcp_keeps_talking() {
    service_roundtrip("pod-tcpsvc", "socket.AF_INET, (\"127.0.0.1\", 7070)");
}

fn service_roundtrip(tag: &str, family_and_address: &str) {
    let env = PodEnv::new(tag);
    let script = env.dir.join("svc.py");
    std::fs::write(
        &script,
        r#"import os, socket, sys, time
FAMILY, ADDR = @FA@
srv = socket.socket(FAMILY, socket.SOCK_STREAM)
srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
srv.bind(ADDR)
srv.listen(4)
if os.fork() == 0:
    c = socket.socket(FAMILY, socket.SOCK_STREAM)
    c.connect(ADDR)
    r = c.makefile("rb")
    n = 0
    while True:
        n += 1
        c.sendall(b"%d\n" % n)
        got = int(r.readline())
        if got != 2 * n:
            print("MISMATCH sent %d got %d" % (n, got), flush=True)
            sys.exit(1)
        print("n=%d ok" % n, flush=True)
        time.sleep(0.02)
conn, _ = srv.accept()
r = conn.makefile("rb")
expect = 1
while True:
    line = r.readline()
    if not line:
        print("SERVER: client gone", flush=True)
        sys.exit(1)
    v = int(line)
    if v != expect:
        print("GAP got %d expected %d" % (v, expect), flush=True)
    expect = v + 1
    conn.sendall(b"%d\n" % (2 * v))
"#
        .replace("@FA@", family_and_address),
    )
    .unwrap();
    env.ok(&["run", "-d", "--name", "svc", "--", "python3", script.to_str().unwrap()]);
    env.wait_log("svc", "tenth exchange", |l| l == "n=10 ok");
    let image = env.dir.join("image");
    let image_s = image.to_str().unwrap();
    env.ok(&["checkpoint", "svc", "-o", image_s]);
    assert_eq!(env.leftovers("svc"), Vec::<String>::new());
    let last = *counts(&std::fs::read_to_string(image.join("pod.log")).unwrap()).last().unwrap();
    env.ok(&["restore", image_s, "--detach"]);
    env.ok(&["restore", image_s, "--name", "svc2", "--detach"]);
    let check = |pod: &str, from: u64| {
        let log = env.wait_log(pod, "progress", |l| counts(l).first().is_some_and(|&n| n >= from + 20));
        let n = counts(&log);
        assert!(n.windows(2).all(|w| w[1] == w[0] + 1), "{pod}: exchanges not continuous: {n:?}");
        assert!(!log.contains("MISMATCH") && !log.contains("GAP") && !log.contains("gone"), "{pod}:\n{log}");
    };
    for pod in ["svc", "svc2"] {
        check(pod, last);
    }
    // Left running: the connection goes on through the checkpoint.
    env.ok(&["checkpoint", "svc2", "-o", env.dir.join("image2").to_str().unwrap(), "--leave-running"]);
    check("svc2", *counts(&env.logs("svc2")).last().unwrap());
    for pod in ["svc", "svc2"] {
        env.ok(&["stop", pod]);
        assert_eq!(env.leftovers(pod), Vec::<String>::new());
    }
}

/// SysV shared memory (attached, shared with a child), semaphores, message
/// queues and POSIX message queues of a pod come back with their ids,
/// contents and owners; the host's IPC namespace never sees them.
#[test]
fn pod_ipc_namespace_survives_checkpoint() {
    let env = PodEnv::new("pod-ipc");
    let work = env.start_testprog("ipc", env!("CARGO_BIN_EXE_tp-ipc"));
    let host_shm = std::fs::read_to_string("/proc/sysvipc/shm").unwrap();
    assert!(!host_shm.lines().any(|l| l.split_whitespace().next() == Some("4660")), "pod segment seen on the host");
    let image = env.dir.join("image");
    env.ok(&["checkpoint", "ipc", "-o", image.to_str().unwrap()]);
    let v: serde_json::Value = serde_json::from_str(&env.ok(&["inspect", "--json", image.to_str().unwrap()])).unwrap();
    assert_eq!(v["pod"]["name"], "ipc");
    assert_eq!(v["pod"]["posix_mqueues"][0], "tp-mq");
    assert_eq!(v["pod"]["sysv_shm"].as_array().map(|a| a.len()), Some(2));
    env.ok(&["restore", image.to_str().unwrap(), "--detach"]);
    env.go_and_expect_pass("ipc", &work);
}

/// Pseudo-terminals in a pod (`tp-tty`), made again inside the pod's mount
/// namespace (a pod without a root file system of its own shares the
/// host's devpts): each pair at its index, the session with its
/// controlling terminal and foreground job. A restore that finds an index
/// taken refuses in one sentence and leaves nothing.
#[test]
fn pod_pseudo_terminals_come_back() {
    let env = PodEnv::new("pod-tty");
    let ptmx = || std::fs::OpenOptions::new().read(true).write(true).open("/dev/ptmx").unwrap();
    let work = env.start_testprog("tty", env!("CARGO_BIN_EXE_tp-tty"));
    let image = env.dir.join("image");
    env.ok(&["checkpoint", "tty", "-o", image.to_str().unwrap()]);
    // The pod's first pair's index, free again: taken here for a while.
    let taken = ptmx();
    let err = env.fails(&["restore", image.to_str().unwrap(), "--detach"]);
    assert!(err.contains("is in use here") && err.trim().lines().count() == 1, "{err}");
    assert_eq!(env.leftovers("tty"), Vec::<String>::new());
    drop(taken);
    env.ok(&["restore", image.to_str().unwrap(), "--detach"]);
    env.go_and_expect_pass("tty", &work);
}

/// Files in flight and credentials in queued messages in a pod
/// (`tp-fdpass`): the senders' PIDs as the pod numbers them, their ids as
/// its user namespace does, the accepted connection in the pod's network.
#[test]
fn pod_files_in_flight_and_credentials() {
    PodEnv::new("pod-fdpass").round_trip("fdp", env!("CARGO_BIN_EXE_tp-fdpass"));
}

/// ICMP "ping" sockets in a pod (`tp-ping`): the pod lets group 100
/// alone make them (net.ipv4.ping_group_range, carried with the pod, so
/// the restore makes them as that group); their identifiers, peer and TTL
/// come back, and each gets replies again.
#[test]
fn pod_ping_sockets_come_back() {
    PodEnv::new("pod-ping").round_trip("png", env!("CARGO_BIN_EXE_tp-ping"));
}

/// cgroups of its own in a pod (`tp-cgroup`): a process moved into cgroups
/// below the pod's (memory with a limit, pids with a maximum, cpu with
/// shares) comes back in the same cgroups with the same settings, and
/// stopping the pod removes them with it.
#[test]
fn pod_processes_keep_their_own_cgroups() {
    let env = PodEnv::new("pod-cg");
    let work = env.dir.join("work");
    std::fs::create_dir_all(&work).unwrap();
    env.ok(&["run", "-d", "--name", "cg", "--", env!("CARGO_BIN_EXE_tp-cgroup"), work.to_str().unwrap()]);
    let log = env.wait_log("cg", "the child's PID", |l| l.starts_with("CHILD "));
    let child: i64 = log.lines().find_map(|l| l.strip_prefix("CHILD ")?.trim().parse().ok()).unwrap();
    let pod_dir = |c: &str| format!("/sys/fs/cgroup/{c}/{}/cg", env.cgroup_parent());
    let host_of = |pid: i64| -> i32 {
        let procs = std::fs::read_to_string(format!("{}/cgroup.procs", pod_dir("pids"))).unwrap_or_default()
            + &std::fs::read_to_string(format!("{}/job/cgroup.procs", pod_dir("pids"))).unwrap_or_default();
        procs
            .split_whitespace()
            .filter_map(|h| h.parse::<i32>().ok())
            .find(|h| {
                let st = std::fs::read_to_string(format!("/proc/{h}/status")).unwrap_or_default();
                st.lines()
                    .find_map(|l| l.strip_prefix("NSpid:"))
                    .and_then(|v| v.split_whitespace().last()?.parse().ok())
                    == Some(pid)
            })
            .expect("the child in the pod")
    };
    let settings =
        [("memory", "memory.limit_in_bytes", "67108864"), ("pids", "pids.max", "33"), ("cpu", "cpu.shares", "512")];
    let h = host_of(child);
    for (c, file, value) in settings {
        let d = format!("{}/job", pod_dir(c));
        std::fs::create_dir_all(&d).unwrap();
        std::fs::write(format!("{d}/{file}"), value).unwrap();
        std::fs::write(format!("{d}/cgroup.procs"), h.to_string()).unwrap();
    }
    std::fs::write(work.join("moved"), b"").unwrap();
    env.wait_log("cg", "READY", |l| l == "READY");
    let image = env.dir.join("image");
    env.ok(&["checkpoint", "cg", "-o", image.to_str().unwrap()]);
    assert_eq!(env.leftovers("cg"), Vec::<String>::new());
    env.ok(&["restore", image.to_str().unwrap(), "--detach"]);
    let h = host_of(child);
    for (c, file, value) in settings {
        let d = format!("{}/job", pod_dir(c));
        let procs = std::fs::read_to_string(format!("{d}/cgroup.procs")).unwrap_or_default();
        assert!(procs.split_whitespace().any(|p| p == h.to_string()), "{c}: the child ({h}) is not in {d}: {procs:?}");
        assert_eq!(std::fs::read_to_string(format!("{d}/{file}")).unwrap_or_default().trim(), value, "{d}/{file}");
    }
    std::fs::write(work.join("go"), b"go").unwrap();
    let log = env.wait_log("cg", "verdict", |l| l.starts_with("PASS") || l.starts_with("FAIL ("));
    assert!(log.contains("PASS"), "{log}");
    env.ok(&["stop", "cg"]);
    assert_eq!(env.leftovers("cg"), Vec::<String>::new());
}

/// PostgreSQL's way with memory, in a pod: MAP_SHARED|MAP_ANONYMOUS memory
/// inherited by a forked child (opened again through the pod's own /proc
/// at restore) and a shm_open file on the pod's /dev/shm.
#[test]
fn pod_shared_memory_and_dev_shm_survive() {
    let env = PodEnv::new("pod-shm");
    let work = env.start_testprog("shm", env!("CARGO_BIN_EXE_tp-shm"));
    // The pod's /dev/shm is its own (its PID 2 made the file).
    assert!(!std::path::Path::new("/dev/shm/cryopod-tp-shm-2").exists(), "the pod's /dev/shm file is on the host's");
    let image = env.dir.join("image");
    env.ok(&["checkpoint", "shm", "-o", image.to_str().unwrap()]);
    // A restore that fails deep down says so whole: which process, which
    // area, which call, which errno (and leaves nothing).
    let o = env
        .cryopod_env(&["restore", image.to_str().unwrap(), "--detach"], &[("CRYOPOD_FAULT", "errno:mmap(shared):13")]);
    assert_ne!(o.0, 0, "restore should have failed:\n{}{}", o.1, o.2);
    let err = o.2.trim();
    assert_eq!(err.lines().count(), 1, "{err}");
    for part in ["restoring process 2", "memory area", "/dev/zero", "mmap(shared) in task on pid", "(errno 13)"] {
        assert!(err.contains(part), "no {part:?} in {err:?}");
    }
    assert_eq!(env.leftovers("shm"), Vec::<String>::new());
    env.ok(&["restore", image.to_str().unwrap(), "--detach"]);
    env.go_and_expect_pass("shm", &work);
}

/// `--userns`: root in the pod is uid 100000 on the host, with no power
/// over host files; the pod still gets its rootfs, /proc and address.
#[test]
fn pod_userns_root_is_unprivileged_on_the_host() {
    let env = PodEnv::new("pod-userns");
    let rootfs = env.rootfs();
    let secret = env.dir.join("secret");
    std::fs::write(&secret, b"host only").unwrap();
    std::fs::set_permissions(&secret, std::os::unix::fs::PermissionsExt::from_mode(0o600)).unwrap();
    let script = "echo mine > /tmp/f; mount -t tmpfs none /data; echo more > /data/g; \
                  i=0; while true; do i=$((i+1)); echo \"n=$i $(id -u) $(cat /tmp/f) $(cat /data/g)\"; sleep 0.1; done";
    let rootfs_s = rootfs.to_str().unwrap();
    env.ok(&[
        "run",
        "-d",
        "--name",
        "un",
        "--userns",
        "--rootfs",
        rootfs_s,
        "--ip",
        "10.77.6.2/24",
        "--",
        "sh",
        "-c",
        script,
    ]);
    env.wait_log("un", "third line", |l| l.starts_with("n=3 "));
    let ps = env.ps();
    let init = ps[0]["init_pid"].as_i64().unwrap();
    let status = std::fs::read_to_string(format!("/proc/{init}/status")).unwrap();
    let uid = status.lines().find(|l| l.starts_with("Uid:")).unwrap();
    assert_eq!(uid.split_whitespace().nth(2), Some("100000"), "{uid}");
    assert_eq!(env.exec("un", "id -u").trim(), "0");
    assert_eq!(
        env.exec("un", "cat /proc/self/uid_map").split_whitespace().collect::<Vec<_>>(),
        ["0", "100000", "65536"]
    );
    assert!(env.exec("un", "ip -o -4 addr show eth0").contains("10.77.6.2/24"));
    assert!(env.exec("un", "ps -o pid,args").lines().any(|l| l.trim_start().starts_with("1 ")));
    // Without a rootfs the host tree is in view, but a host root's file
    // (mode 600) stays out of reach of the pod's root.
    env.ok(&["run", "-d", "--name", "un2", "--userns", "--", "sleep", "1000"]);
    let o = env.cryopod(&["exec", "un2", "--", "cat", secret.to_str().unwrap()]);
    assert_ne!(o.0, 0, "the pod's root read a host root's file: {}", o.1);
    assert!(o.2.contains("Permission denied"), "{}", o.2);
    env.ok(&["stop", "un2"]);
    // Checkpoint and restore: still unprivileged on the host, ids and
    // owners as the pod sees them, counting on.
    let image = env.dir.join("img");
    env.ok(&["checkpoint", "un", "-o", image.to_str().unwrap()]);
    let last = *counts(&std::fs::read_to_string(image.join("pod.log")).unwrap()).last().unwrap();
    env.ok(&["restore", image.to_str().unwrap(), "--detach"]);
    let log = env.wait_log("un", "progress", |l| counts(l).first().is_some_and(|&n| n >= last + 3));
    let n = counts(&log);
    assert!(n.windows(2).all(|w| w[1] == w[0] + 1), "count not continuous: {n:?}");
    assert!(log.lines().last().unwrap().ends_with(" 0 mine more"), "{log}");
    let init = env.ps()[0]["init_pid"].as_i64().unwrap();
    let status = std::fs::read_to_string(format!("/proc/{init}/status")).unwrap();
    let uid = status.lines().find(|l| l.starts_with("Uid:")).unwrap();
    assert_eq!(uid.split_whitespace().nth(2), Some("100000"), "restored: {uid}");
    let owners = env.exec("un", "ls -ln /tmp/f /data/g");
    assert!(owners.lines().all(|l| l.split_whitespace().nth(2) == Some("0")), "{owners}");
    env.ok(&["stop", "un"]);
    assert_eq!(env.leftovers("un"), Vec::<String>::new());
}

/// A pod checkpoint that fails at any step leaves the pod running, thawed,
/// with nothing of an image; a pod restore that fails leaves no pod, no
/// process, no cgroup or veth.
#[test]
fn pod_failures_leave_things_as_they_were() {
    let env = PodEnv::new("pod-fail");
    let script = "i=0; while true; do i=$((i+1)); echo n=$i; sleep 0.05; done";
    env.ok(&["run", "-d", "--name", "f", "--ip", "10.77.10.2/24", "--", "sh", "-c", script]);
    env.wait_log("f", "first line", |l| l == "n=1");
    for point in ["after-freeze", "during-injection", "after-collect", "after-pages", "before-manifest"] {
        let img = env.dir.join(format!("img-{point}"));
        let o = env.cryopod_env(&["checkpoint", "f", "-o", img.to_str().unwrap()], &[("CRYOPOD_FAULT", point)]);
        assert_ne!(o.0, 0, "{point}: the fault did not fail the checkpoint");
        assert!(o.2.contains("was left running"), "{point}: {}", o.2);
        assert!(!img.join("manifest").exists(), "{point}: an image was left");
        let left: Vec<_> =
            std::fs::read_dir(&img).map(|d| d.flatten().map(|e| e.file_name()).collect()).unwrap_or_default();
        assert!(left.is_empty(), "{point}: files left in the image directory: {left:?}");
        let ps = env.ps();
        assert_eq!(ps[0]["state"], "running", "{point}: pod not running (frozen?)");
        let now = *counts(&env.logs("f")).last().unwrap();
        env.wait_log("f", "progress after a failed checkpoint", |l| counts(l).first().is_some_and(|&n| n >= now + 2));
    }
    let image = env.dir.join("image");
    env.ok(&["checkpoint", "f", "-o", image.to_str().unwrap()]);
    assert_stays_home("10.77.10.2", "after the checkpoint");
    for point in ["restore-before-fork", "restore-after-memory", "restore-before-resume"] {
        let o = env.cryopod_env(&["restore", image.to_str().unwrap(), "--detach"], &[("CRYOPOD_FAULT", point)]);
        assert_ne!(o.0, 0, "{point}: the fault did not fail the restore");
        assert!(env.pods().is_empty(), "{point}: a pod record was left");
        assert_eq!(env.leftovers("f"), Vec::<String>::new(), "{point}");
        assert_stays_home("10.77.10.2", point);
        let init = std::process::Command::new("pgrep").args(["-f", "cryopod-init sh -c i=0"]).output().unwrap();
        assert!(
            init.stdout.is_empty(),
            "{point}: a restored process was left: {}",
            String::from_utf8_lossy(&init.stdout)
        );
    }
    env.ok(&["restore", image.to_str().unwrap(), "--detach"]);
    let now = *counts(&env.logs("f")).last().unwrap();
    env.wait_log("f", "progress after restore", |l| counts(l).first().is_some_and(|&n| n >= now + 2));
    // An image from a CPU with more than this one is refused before any of
    // the pod is set up: even before its name (taken by "f") is looked at.
    let forged = env.dir.join("image-forged");
    std::fs::create_dir_all(&forged).unwrap();
    for e in std::fs::read_dir(&image).unwrap().flatten() {
        std::fs::copy(e.path(), forged.join(e.file_name())).unwrap();
    }
    let (feature, _) = common::forge_richer_cpu(&forged);
    let e = env.fails(&["restore", forged.to_str().unwrap(), "--detach"]);
    assert!(e.contains(&format!("this CPU lacks {feature}")), "{e}");
    assert_eq!(env.pods(), ["f"]);
    env.ok(&["stop", "f"]);
}

/// A packet for a pod address with no pod there (and maybe no bridge) must
/// not leave by the host's default route: the route the kernel picks is
/// the guard (unreachable) or the bridge, and a connection fails at once.
fn assert_stays_home(addr: &str, when: &str) {
    let out = std::process::Command::new("ip").args(["-4", "route", "get", addr]).output().unwrap();
    let route = String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    assert!(
        route.contains("unreachable") || route.contains("No route to host") || route.contains("dev cryopod0"),
        "{when}: a packet for {addr} would go {route:?}"
    );
    assert!(
        common::pod::guard_routes().iter().any(|n| n.starts_with(&addr[..addr.rfind('.').unwrap()])),
        "{when}: no guard route for {addr}'s network"
    );
    let t = std::time::Instant::now();
    let c = std::net::TcpStream::connect_timeout(&format!("{addr}:9").parse().unwrap(), Duration::from_secs(5));
    assert!(
        c.is_err() && t.elapsed() < Duration::from_millis(4500),
        "{when}: a connection to {addr} did not fail at once"
    );
}

/// An idle TCP service (a listener, nobody connected) in a pod serves again
/// after restore — in both copies restored side by side, each at its own
/// address.
#[test]
fn pod_tcp_listener_serves_after_restore() {
    use std::io::{Read, Write};
    let env = PodEnv::new("pod-tcp");
    let script = env.dir.join("srv.py");
    std::fs::write(
        &script,
        r#"import socket
s = socket.socket()
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("0.0.0.0", 8080))
s.listen(16)
print("LISTENING", flush=True)
n = 0
while True:
    c, _ = s.accept()
    n += 1
    c.sendall(b"served %d: " % n + c.recv(100))
    c.close()
"#,
    )
    .unwrap();
    let ask = |ip: &str| -> String {
        let mut s =
            std::net::TcpStream::connect_timeout(&format!("{ip}:8080").parse().unwrap(), Duration::from_secs(5))
                .unwrap_or_else(|e| panic!("connect to {ip}:8080: {e}"));
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        s.write_all(b"hello").unwrap();
        let mut out = String::new();
        let _ = s.read_to_string(&mut out);
        out
    };
    env.ok(&["run", "-d", "--name", "web", "--ip", "10.77.11.2/24", "--", "python3", script.to_str().unwrap()]);
    env.wait_log("web", "listening", |l| l == "LISTENING");
    assert_eq!(ask("10.77.11.2"), "served 1: hello");
    let image = env.dir.join("image");
    env.ok(&["checkpoint", "web", "-o", image.to_str().unwrap()]);
    let v: serde_json::Value = serde_json::from_str(&env.ok(&["inspect", "--json", image.to_str().unwrap()])).unwrap();
    assert!(v.to_string().contains("TCP listener 0.0.0.0:8080"), "inspect shows no listener");
    env.ok(&["restore", image.to_str().unwrap(), "--detach"]);
    env.ok(&["restore", image.to_str().unwrap(), "--name", "web2", "--ip", "10.77.11.3/24", "--detach"]);
    // Each copy goes on from the same count.
    assert_eq!(ask("10.77.11.2"), "served 2: hello");
    assert_eq!(ask("10.77.11.3"), "served 2: hello");
    assert_eq!(ask("10.77.11.3"), "served 3: hello");
    for pod in ["web", "web2"] {
        env.ok(&["stop", pod]);
        assert_eq!(env.leftovers(pod), Vec::<String>::new());
    }
}

/// A client on the host keeps its TCP connection to a pod's server across
/// the pod's checkpoint and restore (same address, same hardware address;
/// another pod keeps the bridge and the host's neighbour cache alive).
#[test]
fn pod_tcp_connection_from_the_host_survives() {
    use std::io::{BufRead, BufReader, Write};
    let env = PodEnv::new("pod-hostconn");
    let script = env.dir.join("echo.py");
    std::fs::write(
        &script,
        r#"import socket
s = socket.socket()
s.bind(("0.0.0.0", 9090))
s.listen(1)
print("LISTENING", flush=True)
while True:
    c, _ = s.accept()
    f = c.makefile("rb")
    try:
        while True:
            line = f.readline()
            if not line:
                break
            if line == b"mss\n":
                c.sendall(b"mss %d\n" % c.getsockopt(socket.IPPROTO_TCP, socket.TCP_MAXSEG))
                continue
            c.sendall(b"echo " + line)
    except ConnectionResetError:
        print("RESET", flush=True)
    c.close()
"#,
    )
    .unwrap();
    env.ok(&["run", "-d", "--name", "keep", "--ip", "10.77.12.5/24", "--", "sleep", "1000"]);
    env.ok(&["run", "-d", "--name", "hc", "--ip", "10.77.12.2/24", "--", "python3", script.to_str().unwrap()]);
    env.wait_log("hc", "listening", |l| l == "LISTENING");
    let mac = env.exec("hc", "cat /sys/class/net/eth0/address");
    assert!(env.exec("hc", "ip -o link show eth0").contains(mac.trim()), "the pod's /sys shows the host's eth0");
    let stream = std::net::TcpStream::connect_timeout(&"10.77.12.2:9090".parse().unwrap(), Duration::from_secs(5))
        .expect("connect to the pod");
    stream.set_read_timeout(Some(Duration::from_secs(15))).unwrap();
    let mut w = stream.try_clone().unwrap();
    let mut r = BufReader::new(stream);
    let mut line = String::new();
    w.write_all(b"one\n").unwrap();
    r.read_line(&mut line).unwrap();
    assert_eq!(line, "echo one\n");
    let mut mss = |w: &mut std::net::TcpStream| {
        w.write_all(b"mss\n").unwrap();
        let mut l = String::new();
        r.read_line(&mut l).unwrap();
        l
    };
    let mss_before = mss(&mut w);
    assert!(mss_before.starts_with("mss 14"), "{mss_before}");
    let image = env.dir.join("image");
    env.ok(&["checkpoint", "hc", "-o", image.to_str().unwrap()]);
    // A restore that fails at its very end leaves the connection alone: it
    // was still in repair mode, so nothing reached the client.
    let failed = env.cryopod_env(&["restore", image.to_str().unwrap()], &[("CRYOPOD_FAULT", "restore-before-resume")]);
    assert_ne!(failed.0, 0, "the fault should have failed the restore");
    env.ok(&["restore", image.to_str().unwrap(), "--detach"]);
    assert_eq!(env.exec("hc", "cat /sys/class/net/eth0/address"), mac, "hardware address changed");
    assert_eq!(mss(&mut w), mss_before, "the restored connection's MSS");
    w.write_all(b"two\n").unwrap();
    line.clear();
    r.read_line(&mut line).expect("answer after restore");
    assert_eq!(line, "echo two\n");
    // Elsewhere (--ip): its connection cannot follow. Refused in one
    // sentence naming it, or restored closed on request (--tcp-close).
    let image2 = env.dir.join("image2");
    env.ok(&["checkpoint", "hc", "-o", image2.to_str().unwrap()]);
    let e = env.fails(&["restore", image2.to_str().unwrap(), "--detach", "--ip", "10.77.12.3/24"]);
    assert!(e.contains("10.77.12.2:9090 ↔ 10.77.12.1:") && e.contains("--tcp-close"), "{e}");
    assert!(env.pods() == ["keep"], "{:?}", env.pods());
    env.ok(&["restore", image2.to_str().unwrap(), "--detach", "--ip", "10.77.12.3/24", "--tcp-close"]);
    env.wait_log("hc", "the closed connection seen as reset", |l| l == "RESET");
    let s2 = std::net::TcpStream::connect_timeout(&"10.77.12.3:9090".parse().unwrap(), Duration::from_secs(5))
        .expect("connect to the pod at its new address");
    s2.set_read_timeout(Some(Duration::from_secs(15))).unwrap();
    let mut w2 = s2.try_clone().unwrap();
    let mut r2 = BufReader::new(s2);
    w2.write_all(b"three\n").unwrap();
    line.clear();
    r2.read_line(&mut line).expect("answer at the new address");
    assert_eq!(line, "echo three\n");
    for pod in ["hc", "keep"] {
        env.ok(&["stop", pod]);
    }
    assert_eq!(env.leftovers("hc"), Vec::<String>::new());
}

/// A UDP server in a pod answers the host at the pod's address, before and
/// after a checkpoint and restore (its socket comes back bound, and a
/// connected UDP socket comes back connected).
#[test]
fn pod_udp_server_answers_after_restore() {
    let env = PodEnv::new("pod-udp");
    let script = env.dir.join("udp.py");
    std::fs::write(
        &script,
        r#"import socket
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.bind(("0.0.0.0", 5353))
c = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
c.connect(("10.77.14.1", 5354))
print("BOUND", flush=True)
n = 0
while True:
    data, addr = s.recvfrom(100)
    n += 1
    s.sendto(b"%d:%s" % (n, data), addr)
    c.send(b"note %d" % n)
"#,
    )
    .unwrap();
    env.ok(&["run", "-d", "--name", "udp", "--ip", "10.77.14.2/24", "--", "python3", script.to_str().unwrap()]);
    env.wait_log("udp", "bound", |l| l == "BOUND");
    // The pod's connected socket reports to 10.77.14.1:5354 (the bridge).
    let notes = std::net::UdpSocket::bind("10.77.14.1:5354").expect("bind the notes socket on the bridge");
    notes.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let me = std::net::UdpSocket::bind("10.77.14.1:0").unwrap();
    me.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let ask = |what: &[u8]| -> String {
        me.send_to(what, "10.77.14.2:5353").unwrap();
        let mut b = [0u8; 100];
        let n = me.recv(&mut b).expect("answer from the pod");
        String::from_utf8_lossy(&b[..n]).into_owned()
    };
    let note = || -> String {
        let mut b = [0u8; 100];
        let n = notes.recv(&mut b).expect("note from the pod");
        String::from_utf8_lossy(&b[..n]).into_owned()
    };
    assert_eq!(ask(b"a"), "1:a");
    assert_eq!(note(), "note 1");
    let image = env.dir.join("image");
    env.ok(&["checkpoint", "udp", "-o", image.to_str().unwrap()]);
    let v: serde_json::Value = serde_json::from_str(&env.ok(&["inspect", "--json", image.to_str().unwrap()])).unwrap();
    assert!(v.to_string().contains("UDP socket 10.77.14.2:"), "inspect shows no connected UDP socket");
    env.ok(&["restore", image.to_str().unwrap(), "--detach"]);
    assert_eq!(ask(b"b"), "2:b");
    assert_eq!(note(), "note 2");
    env.ok(&["stop", "udp"]);
    assert_eq!(env.leftovers("udp"), Vec::<String>::new());
}

/// A host client streams numbered lines into a pod without pause, through
/// two `--leave-running` checkpoints and a checkpoint + restore: the pod
/// must receive every number once, in order (bytes the pod's kernel took
/// in after its sockets were saved would be lost without the network
/// lock), and the client must see no error.
#[test]
fn pod_stream_into_pod_loses_nothing() {
    use std::io::{BufRead, BufReader, Write};
    let env = PodEnv::new("pod-stream");
    let script = env.dir.join("sink.py");
    std::fs::write(
        &script,
        r#"import socket
s = socket.socket()
s.bind(("0.0.0.0", 9091))
s.listen(1)
print("LISTENING", flush=True)
c, _ = s.accept()
f = c.makefile("rb")
want = 0
for line in f:
    if line == b"END\n":
        c.sendall(b"OK %d\n" % want)
        break
    n = int(line)
    if n != want:
        c.sendall(b"BAD got %d want %d\n" % (n, want))
        break
    want += 1
"#,
    )
    .unwrap();
    env.ok(&["run", "-d", "--name", "sink", "--ip", "10.77.13.2/24", "--", "python3", script.to_str().unwrap()]);
    env.wait_log("sink", "listening", |l| l == "LISTENING");
    let stream = std::net::TcpStream::connect_timeout(&"10.77.13.2:9091".parse().unwrap(), Duration::from_secs(5))
        .expect("connect to the pod");
    stream.set_write_timeout(Some(Duration::from_secs(30))).unwrap();
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut w = stream.try_clone().unwrap();
    let st = stop.clone();
    let writer = std::thread::spawn(move || -> std::io::Result<u64> {
        let mut n = 0u64;
        while !st.load(std::sync::atomic::Ordering::Relaxed) {
            w.write_all(format!("{n}\n").as_bytes())?;
            n += 1;
            if n.is_multiple_of(8) {
                std::thread::sleep(Duration::from_micros(500));
            }
        }
        w.write_all(b"END\n")?;
        Ok(n)
    });
    std::thread::sleep(Duration::from_millis(300));
    for i in 0..2 {
        let img = env.dir.join(format!("running-{i}"));
        env.ok(&["checkpoint", "sink", "--leave-running", "-o", img.to_str().unwrap()]);
        std::thread::sleep(Duration::from_millis(200));
    }
    let image = env.dir.join("image");
    env.ok(&["checkpoint", "sink", "-o", image.to_str().unwrap()]);
    std::thread::sleep(Duration::from_millis(200));
    env.ok(&["restore", image.to_str().unwrap(), "--detach"]);
    std::thread::sleep(Duration::from_millis(500));
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let sent = writer.join().unwrap().expect("the client's stream broke");
    stream.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    let mut answer = String::new();
    BufReader::new(stream).read_line(&mut answer).expect("the pod's answer");
    assert_eq!(answer, format!("OK {sent}\n"), "the pod did not get every number once, in order");
    env.ok(&["stop", "sink"]);
    assert_eq!(env.leftovers("sink"), Vec::<String>::new());
}
