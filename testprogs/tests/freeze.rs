//! Trees that are hard to freeze: a parent waiting for its vfork child
//! cannot stop until the child execs or exits, and a child held stopped
//! never does. Checkpoints must neither hang nor fail, in a plain tree
//! (threads are seized one after the other) or a pod (every task is asked
//! to stop at once while the cgroup is frozen).

mod common;
use common::pod::PodEnv;
use common::*;

#[test]
fn vfork_parent_is_checkpointed() {
    let mut run = Run::testprog("vfork", env!("CARGO_BIN_EXE_tp-vfork"));
    for _ in 0..3 {
        run.checkpoint(&["--leave-running"]);
        std::fs::remove_dir_all(&run.image).unwrap();
    }
    run.checkpoint(&[]);
    run.restore_and_verify();
}

#[test]
fn vfork_parent_in_a_pod_is_checkpointed() {
    let env = PodEnv::new("vforkpod");
    let work = env.dir.join("work");
    std::fs::create_dir_all(&work).unwrap();
    let prog = env!("CARGO_BIN_EXE_tp-vfork");
    env.ok(&["run", "-d", "--name", "vf", "--", prog, work.to_str().unwrap()]);
    let t = std::time::Instant::now();
    while !env.logs("vf").contains("READY") {
        assert!(t.elapsed().as_secs() < 10, "tp-vfork did not start: {}", env.logs("vf"));
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    let img = env.dir.join("img");
    for _ in 0..3 {
        let t = std::time::Instant::now();
        env.ok(&["checkpoint", "vf", "-o", img.to_str().unwrap(), "--leave-running"]);
        assert!(t.elapsed().as_secs() < 5, "checkpoint took {:?}", t.elapsed());
        std::fs::remove_dir_all(&img).unwrap();
    }
    env.ok(&["checkpoint", "vf", "-o", img.to_str().unwrap()]);
    env.ok(&["restore", img.to_str().unwrap(), "--detach"]);
    std::fs::write(work.join("go"), b"go").unwrap();
    let log = env.wait_log("vf", "a verdict", |l| l.starts_with("PASS") || l.starts_with("FAIL"));
    assert!(log.contains("PASS"), "{log}");
    env.ok(&["stop", "vf"]);
}
