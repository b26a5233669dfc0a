//! cryopod killed with SIGKILL at random instants: a checkpoint cut short
//! harms nothing, a restore cut short leaves nothing (issue 7). The counts
//! can be raised with CRYOPOD_KILL_TRIALS; `cargo bench -p
//! cryopod-testprogs --bench kill` runs 1,000 of each.

mod common;
use common::kill::{self, Counts};
use common::pod::PodEnv;
use std::time::Duration;

fn report(what: &str, c: &Counts) {
    println!(
        "{what}: {} trials, {} bad, {} completed before the kill, {} guardians lingering",
        c.trials, c.bad, c.completed, c.lingering
    );
    assert!(c.bad == 0 && c.lingering == 0, "{what}:\n{}", c.notes.join("\n"));
}

#[test]
fn checkpoint_killed_at_random_instants_harms_nothing() {
    let c = kill::checkpoint_trials(env!("CARGO_BIN_EXE_tp-victim"), kill::trials(120));
    report("checkpoint --leave-running killed (programs harmed)", &c);
}

#[test]
fn restore_killed_at_random_instants_leaves_nothing() {
    let c = kill::restore_trials(env!("CARGO_BIN_EXE_tp-victim"), kill::trials(60));
    report("restore killed (trees left half made)", &c);
}

#[test]
fn pod_checkpoint_killed_at_random_instants_harms_nothing() {
    let env = PodEnv::new("killpodck");
    let c = kill::pod_checkpoint_trials(&env, kill::trials(30));
    report("pod checkpoint --leave-running killed (pods harmed)", &c);
}

#[test]
fn pod_restore_killed_at_random_instants_leaves_nothing() {
    let env = PodEnv::new("killpodrs");
    let c = kill::pod_restore_trials(&env, kill::trials(30));
    report("pod restore killed (pods left half made)", &c);
}

/// Killed right after a userfaultfd was made inside the program (a running
/// checkpoint, before we took it and closed it there): on its way back to
/// its own context the program closes it by itself (a frame of ours
/// chained before the cover's), and keeps no descriptor of ours.
#[test]
fn checkpoint_killed_after_making_a_userfaultfd_leaves_no_descriptor() {
    let script = r#"
import os, sys, time
d = sys.argv[1]
print("READY", flush=True)
while not os.path.exists(os.path.join(d, "go")):
    time.sleep(0.01)
print("PASS", flush=True)
"#;
    let d = format!("/tmp/cryopod-test-uffdkill-{}", std::process::id());
    let mut run = common::Run::start("uffdkill", "python3", &["-c", script, &d]);
    let fds = |pid: i32| -> Vec<String> {
        let mut v: Vec<String> = std::fs::read_dir(format!("/proc/{pid}/fd"))
            .unwrap()
            .flatten()
            .map(|e| {
                let link = std::fs::read_link(e.path()).unwrap_or_default();
                format!("{} {}", e.file_name().to_string_lossy(), link.display())
            })
            .collect();
        v.sort();
        v
    };
    let before = fds(run.pid);
    let pid = run.pid.to_string();
    let img = run.dir.join("img");
    let args = ["checkpoint", "--pid", &pid, "-o", img.to_str().unwrap(), "--leave-running"];
    kill::kill_at(&args, &[], "after-userfaultfd", false);
    let t = std::time::Instant::now();
    while fds(run.pid) != before && t.elapsed() < Duration::from_secs(5) {
        std::thread::sleep(Duration::from_millis(10));
    }
    assert_eq!(fds(run.pid), before, "the program's descriptors after the kill");
    run.go_and_expect_pass();
}

/// Killed while a TCP connection is read in repair mode: the guardian
/// takes it out of repair mode (and gives it back SO_REUSEADDR, which
/// that clears), and the program's connection goes on.
#[test]
fn checkpoint_killed_while_reading_a_connection_leaves_it_working() {
    let script = r#"
import os, socket, sys, time
d = sys.argv[1]
l = socket.socket(); l.bind(("127.0.0.1", 0)); l.listen(1)
c = socket.create_connection(l.getsockname()); s, _ = l.accept()
for x in (c, s):
    x.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
c.sendall(b"queued")
print("READY", flush=True)
while not os.path.exists(os.path.join(d, "go")):
    time.sleep(0.01)
try:
    assert [x.getsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR) for x in (c, s)] == [1, 1], "SO_REUSEADDR lost"
    assert s.recv(6) == b"queued"
    for i in range(20):
        c.sendall(b"%d;" % i)
        s.sendall(s.recv(16))
        assert c.recv(16) == b"%d;" % i
    print("PASS", flush=True)
except Exception as e:
    print("FAIL", repr(e), flush=True)
"#;
    let d = format!("/tmp/cryopod-test-tcpkill-{}", std::process::id());
    let mut run = common::Run::start("tcpkill", "python3", &["-c", script, &d]);
    let pid = run.pid.to_string();
    let img = run.dir.join("img");
    let args = ["checkpoint", "--pid", &pid, "-o", img.to_str().unwrap(), "--leave-running"];
    kill::kill_at(&args, &[], "during-tcp-read", false);
    run.go_and_expect_pass();
}

/// A pod frozen by a checkpoint killed together with its guardian (a kill
/// of the whole session, say): the next cryopod command thaws it.
#[test]
fn pod_left_frozen_is_thawed_by_the_next_command() {
    let env = PodEnv::new("frozenleft");
    env.ok(&["run", "-d", "--name", "fz", "--ip", "10.77.95.2/24", "--", "sh", "-c", "while :; do sleep 0.01; done"]);
    let port = format!("/sys/class/net/{}/brport/state", cryopod_pod::net::veth_names("fz").0);
    let img = env.dir.join("img");
    let state = env.state.to_str().unwrap().to_string();
    let args = ["checkpoint", "fz", "-o", img.to_str().unwrap(), "--leave-running"];
    kill::kill_at(&args, &[("CRYOPOD_STATE_DIR", &state)], "pod-frozen", true);
    let freezer = format!("/sys/fs/cgroup/freezer/{}/fz/freezer.state", env.cgroup_parent());
    let freezer = freezer.as_str();
    assert_eq!(std::fs::read_to_string(freezer).unwrap().trim(), "FROZEN", "the pod should still be frozen");
    assert_eq!(std::fs::read_to_string(&port).unwrap().trim(), "0", "the pod's network should still be locked");
    let ps = env.ps();
    assert_eq!(ps[0]["state"], "running", "{ps:?}");
    assert_eq!(std::fs::read_to_string(freezer).unwrap().trim(), "THAWED");
    assert_eq!(std::fs::read_to_string(&port).unwrap().trim(), "3", "the pod's network is still locked");
    env.ok(&["stop", "fz"]);
}

/// A pod restore killed at its very end together with its guardian: the
/// pod's processes die with the restorer (PTRACE_O_EXITKILL), and the next
/// cryopod command removes its cgroup, veth and record.
#[test]
fn pod_restore_killed_with_its_guardian_leaves_nothing() {
    let env = PodEnv::new("rstleft");
    let rootfs = env.rootfs();
    let run = ["run", "-d", "--name", "rl", "--rootfs", rootfs.to_str().unwrap(), "--ip", "10.77.94.2/24", "--"];
    env.ok(&[&run[..], &["sh", "-c", "while :; do sleep 0.01; done"][..]].concat());
    let img = env.dir.join("img");
    env.ok(&["checkpoint", "rl", "-o", img.to_str().unwrap()]);
    let state = env.state.to_str().unwrap().to_string();
    let args = ["restore", img.to_str().unwrap(), "--detach"];
    kill::kill_at(&args, &[("CRYOPOD_STATE_DIR", &state)], "restore-before-resume", true);
    let procs = format!("/sys/fs/cgroup/pids/{}/rl/cgroup.procs", env.cgroup_parent());
    let procs = procs.as_str();
    let t = std::time::Instant::now();
    while !std::fs::read_to_string(procs).unwrap_or_default().trim().is_empty() && t.elapsed().as_secs() < 2 {
        common::reap_all();
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
    assert!(env.ps().is_empty());
    assert_eq!(env.leftovers("rl"), Vec::<String>::new());
}
