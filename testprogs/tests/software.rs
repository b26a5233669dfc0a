//! Real software checkpointed and restored for real: a bash loop with a
//! child, python3 in the middle of a computation, a multi-threaded Rust
//! program.

mod common;
use common::*;
use std::time::Duration;

#[test]
fn bash_loop_with_child_sleep() {
    let mut run = Run::start(
        "bash",
        "bash",
        &["-c", "echo READY; i=0; while [ ! -e go ]; do i=$((i+1)); echo \"n $i\"; sleep 0.02; done; echo PASS"],
    );
    run.wait_output("n 5", Duration::from_secs(10));
    run.checkpoint(&[]);
    let pids = run.image_pids();
    assert!(pids.len() >= 2, "expected bash and its child sleep in the image, got {pids:?}");
    restore_and_check_count(&mut run);
}

/// Restore a program printing "n 1", "n 2", ...: the count must go on from
/// where it was, with no restart, gap or repeat.
fn restore_and_check_count(run: &mut Run) {
    let last = run.output().lines().rev().find_map(|l| l.strip_prefix("n ")?.parse::<u64>().ok()).unwrap();
    let o = cryopod(&["restore", run.image.to_str().unwrap(), "--detach"], &[]);
    assert_eq!(o.0, 0, "restore failed: {}", o.2);
    run.wait_output(&format!("n {}", last + 10), Duration::from_secs(10));
    let out = run.go_and_expect_pass();
    let nums: Vec<u64> = out.lines().filter_map(|l| l.strip_prefix("n ")?.parse().ok()).collect();
    for (i, n) in nums.iter().enumerate() {
        assert_eq!(*n, i as u64 + 1, "sequence broken (lost, repeated or restarted): {nums:?}");
    }
    assert!(nums.len() as u64 >= last + 10, "only {} numbers", nums.len());
}

#[test]
fn python_dict_computation() {
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/dict_compute.py");
    let d = format!("/tmp/cryopod-test-python-{}", std::process::id());
    let mut run = Run::start("python", "python3", &[script, &d]);
    std::thread::sleep(Duration::from_millis(300));
    run.checkpoint(&[]);
    let out = run.restore_and_verify();
    assert!(out.contains("PASS"), "{out}");
}

#[test]
fn rust_multithreaded_program() {
    let mut run = Run::testprog("rust-mt", env!("CARGO_BIN_EXE_tp-rust-mt"));
    let before = outside_view(run.pid);
    assert!(before.2 >= 5, "expected the workers to be running, threads: {}", before.2);
    run.checkpoint(&[]);
    let out = run.restore_and_verify();
    assert!(out.contains("PASS"), "{out}");
}

#[test]
fn leave_running_keeps_the_program_going() {
    let mut run = Run::start(
        "leave-running",
        "bash",
        &["-c", "echo READY; i=0; while [ ! -e go ]; do i=$((i+1)); echo \"n $i\"; sleep 0.02; done; echo PASS"],
    );
    run.wait_output("n 3", Duration::from_secs(10));
    let summary = run.checkpoint(&["--leave-running"]);
    assert!(summary.contains("frozen"), "summary lacks the frozen time: {summary}");
    let n = run.output().lines().count();
    run.wait_output(&format!("n {}", n + 5), Duration::from_secs(10));
    run.go_and_expect_pass();
    // The image is complete and restorable elsewhere in time: inspect it.
    let o = cryopod(&["inspect", run.image.to_str().unwrap()], &[]);
    assert_eq!(o.0, 0, "{}", o.2);
    assert!(o.1.contains("bash"), "{}", o.1);
}

#[test]
fn shell_pipeline_standard_streams_are_pipes() {
    // bash's loop writes into a pipe that `cat` reads: stdout of one and
    // stdin of the other are the two ends of one pipe inside the tree.
    let mut run = Run::start(
        "pipeline",
        "bash",
        &["-c", "echo READY; i=0; while [ ! -e go ]; do i=$((i+1)); echo \"n $i\"; sleep 0.01; done | cat; echo PASS"],
    );
    run.wait_output("n 5", Duration::from_secs(10));
    run.checkpoint(&[]);
    let i = cryopod(&["inspect", run.image.to_str().unwrap()], &[]);
    assert!(i.1.contains("pipe:["), "the pipeline's pipe should be in the image: {}", i.1);
    restore_and_check_count(&mut run);
}

#[test]
fn restore_forwards_signals_to_the_job() {
    // A supervisor stops `cryopod restore` (which stands in for the job)
    // with SIGTERM: the restored program gets it, and the restorer exits
    // with the program's status.
    let mut run = Run::start(
        "forward",
        "bash",
        &["-c", "trap 'echo got-term; exit 7' TERM; echo READY; while :; do sleep 0.02; done"],
    );
    run.checkpoint(&[]);
    let mut restorer = std::process::Command::new(cryopod_bin())
        .args(["restore", run.image.to_str().unwrap()])
        .stdin(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    run.owned.push(restorer.id() as i32);
    std::thread::sleep(Duration::from_millis(500));
    // SAFETY: kill by pid of the restorer this test started.
    unsafe { libc::kill(restorer.id() as i32, libc::SIGTERM) };
    let status = restorer.wait().unwrap();
    run.wait_output("got-term", Duration::from_secs(10));
    assert_eq!(status.code(), Some(7), "the restorer should exit with the job's status");
}

/// CPython installs every handler with SA_ONSTACK and has no alternate
/// stack of its own: a signal after the restore must reach the handler
/// (a leftover alternate stack of the restorer made it die of SIGSEGV).
#[test]
fn python_signal_handler_after_restore() {
    let script = concat!(
        "import signal, time, os\n",
        "got = []\n",
        "signal.signal(signal.SIGUSR1, lambda *a: got.append(1) or print('got', len(got), flush=True))\n",
        "print('READY', flush=True)\n",
        "while not os.path.exists('go'): time.sleep(0.01)\n",
        "os.kill(os.getpid(), signal.SIGUSR1)\n",
        "while len(got) < 2: time.sleep(0.01)\n",
        "print('PASS', flush=True)\n",
    );
    let mut run = Run::start("python-signal", "python3", &["-c", script]);
    run.checkpoint(&[]);
    let o = cryopod(&["restore", run.image.to_str().unwrap(), "--detach"], &[]);
    assert_eq!(o.0, 0, "restore failed: {}", o.2);
    // From outside first, then from inside.
    // SAFETY: kill by pid of the process this test restored.
    unsafe { libc::kill(run.pid, libc::SIGUSR1) };
    run.wait_output("got 1", Duration::from_secs(10));
    let out = run.go_and_expect_pass();
    assert!(out.contains("got 2"), "{out}");
}
