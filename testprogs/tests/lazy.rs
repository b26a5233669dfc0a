//! Lazy moves (`cryopod migrate --mode lazy`) between two hosts (network
//! namespaces, see common/hosts.rs): the pod runs at the destination at
//! once and its memory follows from the source, pushed in order and
//! fetched first where a fault waits; pages sent in pre-copy rounds are
//! not sent again; and should the source or the destination fail before
//! the last page, the pod is killed there rather than left to read a page
//! that should have held data.

mod common;

use common::hosts::{keyed_hosts, once_listening, serving_hosts, Node, TwoHosts};
use std::path::Path;
use std::time::{Duration, Instant};

/// The number after `label` in `text` ("... 12.5 MiB pushed" -> bytes).
fn bytes_before(text: &str, label: &str) -> u64 {
    let at = text.find(label).unwrap_or_else(|| panic!("no {label:?} in {text}"));
    let words: Vec<&str> = text[..at].split_whitespace().collect();
    let (n, unit) = match words.as_slice() {
        [.., n, unit] => (n.parse::<f64>().unwrap_or_else(|_| panic!("{n:?} in {text}")), *unit),
        _ => panic!("no size before {label:?} in {text}"),
    };
    let scale = common::unit_bytes(unit).unwrap_or_else(|| panic!("unit {unit:?} in {text}"));
    (n * scale) as u64
}

/// Start `tp-postcopy` (224 MiB in three areas) as pod `name` on A and
/// move it lazily to B with `extra` arguments; returns the move's report
/// once the program said its verdict at B.
fn postcopy_move(h: &TwoHosts, (key, dest, work): (&Path, &str, &Path), name: &str, extra: &[&str]) -> String {
    let bin = env!("CARGO_BIN_EXE_tp-postcopy");
    let o = h.cryopod(Node::A, &["run", "-d", "--name", name, "--", bin, work.to_str().unwrap()]);
    assert!(o.status.success(), "run: {}", String::from_utf8_lossy(&o.stderr));
    h.wait_log(Node::A, name, "READY", |l| l == "READY");
    let mut args = vec!["migrate", name, "--to", dest, "--key", key.to_str().unwrap(), "--mode", "lazy"];
    args.extend_from_slice(extra);
    // Told to go as soon as B has made it (A's copy is frozen from before
    // then): it forks, drops and moves areas as soon as it runs at B,
    // while its pages are still arriving.
    let at_b = cryopod_pod::StateDir::new(h.state(Node::B)).dir(name);
    let go = work.join("go");
    let teller = std::thread::spawn(move || {
        let until = Instant::now() + Duration::from_secs(60);
        while !at_b.exists() && Instant::now() < until {
            std::thread::sleep(Duration::from_millis(2));
        }
        std::fs::write(go, b"go").unwrap();
    });
    let o = once_listening(|| h.cryopod(Node::A, &args));
    teller.join().unwrap();
    let err = String::from_utf8_lossy(&o.stderr).into_owned();
    assert!(o.status.success(), "migrate: {err}");
    let log = h.wait_log(Node::B, name, "verdict", |l| l.starts_with("PASS") || l.starts_with("FAIL ("));
    assert!(log.contains("PASS"), "{log}");
    let ps_a = String::from_utf8_lossy(&h.cryopod(Node::A, &["ps"]).stdout).into_owned();
    assert!(!ps_a.lines().any(|l| l.starts_with(name) && l.contains("running")), "still at A: {ps_a}");
    err
}

/// No pre-copy round: every page of the pod comes after it runs at B,
/// while it forks a child that reads all of A, drops B, moves C and reads
/// A itself (each fetch follows the child, the drop and the move).
#[test]
fn a_lazy_move_runs_the_pod_at_once_and_its_memory_follows_exactly() {
    let (h, key, dest, work) = serving_hosts("h15", "10.77.112");
    let err = postcopy_move(&h, (&key, &dest, &work), "lz", &[]);
    eprintln!("{err}");
    assert!(err.contains("0 pre-copy rounds"), "{err}");
    // All of its memory went after the commit (224 MiB of patterns).
    let after = bytes_before(&err, "pushed");
    assert!(after >= 200 << 20, "only {after} bytes pushed after the commit: {err}");
}

/// One pre-copy round first: what it sent is not sent again after the
/// commit (the program wrote nothing since), only what changed.
#[test]
fn pages_sent_in_a_pre_copy_round_are_not_fetched_again() {
    let (h, key, dest, work) = serving_hosts("h16", "10.77.111");
    let err = postcopy_move(&h, (&key, &dest, &work), "lr", &["--rounds", "1"]);
    eprintln!("{err}");
    assert!(err.contains("1 pre-copy rounds"), "{err}");
    let after = bytes_before(&err, "pushed") + bytes_before(&err, "sent again or first");
    assert!(after < 16 << 20, "{after} bytes sent after the commit though the round had them: {err}");
}

/// A pod that writes its memory all the time (`tp-rewrite`, 96 MiB swept
/// nonstop) moved lazily: its writes to pages not yet arrived wait for
/// them, and what it checks at B is one instant's memory.
#[test]
fn a_lazy_move_of_memory_rewritten_all_the_time_is_exact() {
    let (h, key, dest, work) = serving_hosts("h17", "10.77.110");
    let key_s = key.to_str().unwrap();
    let bin = env!("CARGO_BIN_EXE_tp-rewrite");
    let o = h.cryopod(Node::A, &["run", "-d", "--name", "rw", "--", bin, work.to_str().unwrap(), "96", "solo"]);
    assert!(o.status.success(), "run: {}", String::from_utf8_lossy(&o.stderr));
    h.wait_log(Node::A, "rw", "READY", |l| l == "READY");
    let o = once_listening(|| h.cryopod(Node::A, &["migrate", "rw", "--to", &dest, "--key", key_s, "--mode", "lazy"]));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(o.status.success(), "migrate: {err}");
    eprintln!("{err}");
    std::fs::write(work.join("go"), b"go").unwrap();
    let log = h.wait_log(Node::B, "rw", "verdict", |l| l.starts_with("PASS") || l.starts_with("FAIL ("));
    assert!(log.contains("PASS"), "{log}");
}

/// The source fails (`migrate-during-postcopy`), or the destination does
/// (`serve-during-postcopy`), after the pod ran at B but before all its
/// pages came: B kills the pod and removes it (never a page read as
/// zeros), the source says so in one message and keeps its copy frozen,
/// never running twice.
#[test]
fn a_lazy_move_cut_before_the_last_page_kills_the_pod_at_the_destination() {
    let (h, key, work) = keyed_hosts("h18", "10.77.109");
    let key_s = key.to_str().unwrap();
    let bin = env!("CARGO_BIN_EXE_tp-postcopy");
    for (i, point) in ["migrate-during-postcopy", "serve-during-postcopy"].into_iter().enumerate() {
        let name = format!("cut{i}");
        let o = h.cryopod(Node::A, &["run", "-d", "--name", &name, "--", bin, work.to_str().unwrap()]);
        assert!(o.status.success(), "run: {}", String::from_utf8_lossy(&o.stderr));
        h.wait_log(Node::A, &name, "READY", |l| l == "READY");
        let at = format!("{}:{}", h.addr(Node::B), 7200 + i);
        let on_dest = point.starts_with("serve");
        let serve_env: &[(&str, &str)] = if on_dest { &[("CRYOPOD_FAULT", point)] } else { &[] };
        let serve = ["serve", "--listen", &at, "--key", key_s, "--timeout", "20"];
        // (Killed and reaped when `h` goes.)
        let _serve = h.spawn_cryopod_with(Node::B, &serve, serve_env).id();
        let mig_env: &[(&str, &str)] = if on_dest { &[] } else { &[("CRYOPOD_FAULT", point)] };
        let migrate = ["migrate", &name, "--to", &at, "--key", key_s, "--timeout", "20", "--mode", "lazy"];
        let o = once_listening(|| h.cryopod_with(Node::A, &migrate, mig_env));
        let err = String::from_utf8_lossy(&o.stderr);
        eprintln!("{point}: {err}");
        assert!(!o.status.success(), "{point}: the move should fail");
        assert!(err.contains("could not all be sent"), "{point}: {err}");
        if on_dest {
            assert!(err.contains("was killed here"), "{point}: the destination's reason is lost: {err}");
        }
        // Gone from B: no pod, no process of it, no cgroup.
        let b_parent = cryopod_pod::StateDir::new(h.state(Node::B)).cgroup_parent();
        let until = Instant::now() + Duration::from_secs(10);
        loop {
            let ps_b = String::from_utf8_lossy(&h.cryopod(Node::B, &["ps"]).stdout).into_owned();
            let cg = Path::new(&format!("/sys/fs/cgroup/pids/{b_parent}/{name}")).exists();
            if !ps_b.contains(&name) && !cg {
                break;
            }
            assert!(Instant::now() < until, "{point}: host B keeps {ps_b} (cgroup: {cg})");
            std::thread::sleep(Duration::from_millis(100));
        }
        // Kept frozen at A (never two copies running); stopped here.
        let ps_a = String::from_utf8_lossy(&h.cryopod(Node::A, &["ps"]).stdout).into_owned();
        assert!(ps_a.contains(&name), "{point}: A lost its copy: {ps_a}");
        let o = h.cryopod(Node::A, &["stop", &name]);
        assert!(o.status.success(), "stop at A: {}", String::from_utf8_lossy(&o.stderr));
    }
}
