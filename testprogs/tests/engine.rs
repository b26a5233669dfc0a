//! Checkpoint and restore of each self-checking test program, for real.

mod common;
use common::*;

fn roundtrip(name: &str, bin: &str) -> String {
    roundtrip_with(name, bin, &[])
}

fn roundtrip_with(name: &str, bin: &str, args: &[&str]) -> String {
    let mut run = Run::testprog_with(name, bin, args);
    let before = outside_view(run.pid);
    run.checkpoint(&[]);
    run.restore_and_verify_keep(|pid| assert_same_outside(&before, pid))
}

#[test]
fn memory() {
    let mut run = Run::testprog("memory", env!("CARGO_BIN_EXE_tp-memory"));
    let before = outside_view(run.pid);
    run.checkpoint(&[]);
    // What the image holds: only what matters.
    let o = cryopod(&["inspect", "--json", run.image.to_str().unwrap()], &[]);
    assert_eq!(o.0, 0, "{}", o.2);
    let v: serde_json::Value = serde_json::from_str(&o.1).unwrap();
    let root = &v["processes"][0];
    let vmas = root["vmas"].as_array().unwrap();
    let by_name = |suffix: &str| vmas.iter().find(|m| m["name"].as_str().unwrap_or("").ends_with(suffix)).unwrap();
    assert_eq!(by_name("private.dat")["saved_bytes"], 4096, "only the CoW'd page of a private file mapping is saved");
    assert_eq!(by_name("shared.dat")["saved_bytes"], 0, "a shared file mapping's pages live in the file");
    let zero: u64 = vmas.iter().map(|m| m["zero_bytes"].as_u64().unwrap()).sum();
    assert!(zero >= 2 << 20, "zero pages (read-only touched, written zeros) must be recorded, not stored: {zero}");
    let refd = v["memory_referenced_bytes"].as_u64().unwrap();
    let stored = v["memory_stored_bytes"].as_u64().unwrap();
    assert!(stored + (1 << 20) < refd, "parent and child pages must be stored once: {stored} of {refd}");
    assert!(v["image_bytes"].as_u64().unwrap() < stored + (1 << 20));
    run.restore_and_verify_keep(|pid| assert_same_outside(&before, pid));
}

/// Every vector register this CPU has (zmm and opmask with AVX-512).
#[test]
fn cpu() {
    let out = roundtrip("cpu", env!("CARGO_BIN_EXE_tp-cpu"));
    assert!(!out.contains("SKIP"), "{out}");
}

/// The AVX2 hosts' register set (ymm0-15), on any CPU that has it.
#[test]
fn cpu_ymm() {
    let out = roundtrip_with("cpu-ymm", env!("CARGO_BIN_EXE_tp-cpu"), &["ymm"]);
    assert!(out.contains("ok ymm0-15 survive"), "{out}");
}

/// The SSE register set every x86_64 CPU has.
#[test]
fn cpu_xmm() {
    let out = roundtrip_with("cpu-xmm", env!("CARGO_BIN_EXE_tp-cpu"), &["xmm"]);
    assert!(out.contains("ok xmm0-15 survive"), "{out}");
}

#[test]
fn threads() {
    roundtrip("threads", env!("CARGO_BIN_EXE_tp-threads"));
}

#[test]
fn tree() {
    roundtrip("tree", env!("CARGO_BIN_EXE_tp-tree"));
}

#[test]
fn signals() {
    roundtrip("signals", env!("CARGO_BIN_EXE_tp-signals"));
}

#[test]
fn ident() {
    roundtrip("ident", env!("CARGO_BIN_EXE_tp-ident"));
}

#[test]
fn timers() {
    roundtrip("timers", env!("CARGO_BIN_EXE_tp-timers"));
}

#[test]
fn files() {
    roundtrip("files", env!("CARGO_BIN_EXE_tp-files"));
}

#[test]
fn objects() {
    roundtrip("objects", env!("CARGO_BIN_EXE_tp-objects"));
}

#[test]
fn events() {
    roundtrip("events", env!("CARGO_BIN_EXE_tp-events"));
}

#[test]
fn unix_sockets() {
    let out = roundtrip("unix", env!("CARGO_BIN_EXE_tp-unix"));
    assert!(out.contains("ok pending connection accepted"), "{out}");
    assert!(out.contains("ok a2 answer") && out.contains("ok orphan then EOF"), "{out}");
    // A datagram socket whose dead peer had a path name: refused in one
    // sentence, the program goes on.
    let mut run = Run::testprog_with("unix-dead-path", env!("CARGO_BIN_EXE_tp-unix"), &["dead-path"]);
    run.checkpoint_refused("whose peer is gone, holds messages from");
    run.go_and_expect_pass();
}

/// Files in flight and credentials in queued messages (`tp-fdpass`): a
/// file the sender keeps, a pipe, a socket, a memfd with /dev/null and an
/// accepted TCP connection that only the messages hold, and credentials
/// the sender chose, all as they were; the numbers that carried the
/// files nobody held are closed again (the outside comparison).
#[test]
fn files_in_flight_and_credentials() {
    roundtrip("fdpass", env!("CARGO_BIN_EXE_tp-fdpass"));
}

/// A message whose sender has exited, read with SO_PASSCRED: no restore
/// could give it that PID again, so the checkpoint refuses in one
/// sentence and the program goes on with the message as it was.
#[test]
fn a_message_from_a_process_gone_is_refused_when_credentials_show() {
    let mut run = Run::testprog_with("fdpass-gone", env!("CARGO_BIN_EXE_tp-fdpass"), &["gone"]);
    run.checkpoint_refused("not a process of the checkpoint");
    run.go_and_expect_pass();
}

/// Unix sockets connected to peers outside the tree (`tp-external`): a
/// datagram socket connected to a "log" and a stream to a "service", both
/// this test's. Refused in one sentence naming `--external-unix` without
/// it; with it, connected again by name at restore (the service sees a
/// new client, which it greets); a restore whose peer is gone is refused
/// before any process exists.
#[test]
fn peers_outside_are_connected_again_on_request() {
    use std::io::{BufRead, Write};
    use std::os::unix::net::{UnixDatagram, UnixListener};
    use std::time::Duration;
    struct Dir(std::path::PathBuf);
    impl Drop for Dir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
    let d = Dir(std::path::PathBuf::from(format!("/tmp/cryopod-test-outside-peers-{}", std::process::id())));
    std::fs::create_dir_all(&d.0).unwrap();
    let (log_path, svc_path) = (d.0.join("log"), d.0.join("svc"));
    let log = UnixDatagram::bind(&log_path).unwrap();
    log.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let svc = UnixListener::bind(&svc_path).unwrap();
    let (lp, sp) = (log_path.to_str().unwrap(), svc_path.to_str().unwrap());
    let mut run = Run::testprog_with("peers", env!("CARGO_BIN_EXE_tp-external"), &[lp, sp]);
    let mut buf = [0u8; 64];
    let line = |c: &std::os::unix::net::UnixStream| {
        let mut l = String::new();
        std::io::BufReader::new(c).read_line(&mut l).map(|_| l)
    };
    let (first, _) = svc.accept().unwrap();
    assert_eq!(line(&first).unwrap(), "hello-before\n");
    let got = |buf: &mut [u8; 64]| log.recv(buf).map(|n| buf[..n].to_vec()).unwrap();
    assert_eq!(got(&mut buf), b"before");

    let image = run.image.to_str().unwrap().to_string();
    run.checkpoint_refused("--external-unix");
    run.checkpoint(&["--external-unix"]);

    // The service gone at restore: refused before any process exists.
    let away = d.0.join("svc.away");
    std::fs::rename(&svc_path, &away).unwrap();
    let (code, _, err) = cryopod(&["restore", &image, "--detach"], &[]);
    assert!(code != 0 && err.contains("no socket there now") && err.trim().lines().count() == 1, "{err}");
    assert!(!std::path::Path::new(&format!("/proc/{}", run.pid)).exists(), "a process of the image was left");
    std::fs::rename(&away, &svc_path).unwrap();

    let o = cryopod(&["restore", &image, "--detach"], &[]);
    assert!(o.0 == 0, "restore failed: {}", o.2);
    svc.set_nonblocking(true).unwrap();
    let service = std::thread::spawn(move || {
        let t = std::time::Instant::now();
        let c = loop {
            match svc.accept() {
                Ok((c, _)) => break c,
                Err(_) if t.elapsed() < Duration::from_secs(10) => std::thread::sleep(Duration::from_millis(5)),
                Err(e) => panic!("no new client: {e}"),
            }
        };
        c.set_nonblocking(false).unwrap();
        c.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        let l = line(&c).unwrap();
        (&c).write_all(b"welcome\n").unwrap();
        l
    });
    run.go_and_expect_pass();
    assert_eq!(service.join().unwrap(), "hello-after\n");
    assert_eq!(got(&mut buf), b"after");
}

/// Half-closed TCP connections and big queues (`tp-tcpstates`): FIN_WAIT2
/// and CLOSE_WAIT ends of one connection, a FIN_WAIT1 end whose FIN waits
/// behind megabytes its peer has not read; all in their states, every
/// byte and each end of stream where it was.
///
/// And a connection from a client outside the tree (this test), which
/// sent a line and shut its side: the program reads the line and the end
/// after the restore (the peer's FIN handed over again), and its reply
/// reaches the client, then its end. A second one, shut and then given a
/// filter that drops every segment (it acknowledges nothing), leaves the
/// program's end in LAST_ACK, which it is in again after the restore; a
/// third, dropping everything from the start and shut after the program,
/// leaves it in CLOSING, and CLOSING it is again.
#[test]
fn half_closed_connections_and_big_queues_come_back() {
    use std::io::{Read, Write};
    let out = format!("/tmp/cryopod-test-tcpstates-{}/out", std::process::id());
    let client = std::thread::spawn(move || {
        let t = std::time::Instant::now();
        let port = loop {
            let s = std::fs::read_to_string(&out).unwrap_or_default();
            if let Some(p) = s.lines().find_map(|l| l.strip_prefix("PORT ")?.trim().parse::<u16>().ok()) {
                break p;
            }
            assert!(t.elapsed() < std::time::Duration::from_secs(20), "no PORT from tp-tcpstates");
            std::thread::sleep(std::time::Duration::from_millis(5));
        };
        let mut c = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
        c.write_all(b"outside-line\n").unwrap();
        c.shutdown(std::net::Shutdown::Write).unwrap();
        let e = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
        e.shutdown(std::net::Shutdown::Write).unwrap();
        std::thread::sleep(std::time::Duration::from_millis(50));
        // A filter that drops every segment: this end acknowledges nothing.
        use cryopod_testprogs::net::drop_everything;
        use std::os::fd::AsRawFd;
        assert!(drop_everything(e.as_raw_fd()), "a filter on the test's end: {}", std::io::Error::last_os_error());
        std::fs::write(std::path::Path::new(&out).with_file_name("repaired"), b"").unwrap();
        // The third: dropping everything from the start; shut once the
        // program has shut its end.
        let g = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
        assert!(
            drop_everything(g.as_raw_fd()),
            "a filter on the test's third end: {}",
            std::io::Error::last_os_error()
        );
        std::fs::write(std::path::Path::new(&out).with_file_name("g-filtered"), b"").unwrap();
        let shut = std::path::Path::new(&out).with_file_name("g-shut");
        let t = std::time::Instant::now();
        while !shut.exists() && t.elapsed() < std::time::Duration::from_secs(20) {
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
        g.shutdown(std::net::Shutdown::Write).unwrap();
        c.set_read_timeout(Some(std::time::Duration::from_secs(60))).unwrap();
        let mut reply = String::new();
        let r = c.read_to_string(&mut reply).map(|_| reply);
        drop((e, g));
        r
    });
    roundtrip("tcpstates", env!("CARGO_BIN_EXE_tp-tcpstates"));
    assert_eq!(client.join().unwrap().unwrap(), "outside-reply\n");
}

/// Connections that ended with an error the program has not read yet
/// (`tp-tcpstates errors`): reset, reset after the peer's FIN (EPIPE), a
/// refused connect and a time-out each give their error after the
/// restore, once, after their unread line.
#[test]
fn connections_ended_by_an_error_not_read_come_back() {
    roundtrip_with("tcpstates-errors", env!("CARGO_BIN_EXE_tp-tcpstates"), &["errors"]);
}

/// Netlink sockets (`tp-netlink`): port ids (the kernel's and the
/// program's), groups joined at bind and after, flags; answers come back
/// to the same port ids.
#[test]
fn netlink_sockets_come_back() {
    roundtrip("netlink", env!("CARGO_BIN_EXE_tp-netlink"));
    // An answer unread: refused in one sentence, and the program goes on.
    let mut run = Run::testprog_with("netlink-unread", env!("CARGO_BIN_EXE_tp-netlink"), &["unread"]);
    run.checkpoint_refused("netlink socket with messages unread");
    run.go_and_expect_pass();
}

/// Raw and packet sockets (`tp-rawsock`): a raw ICMP socket's filter, a
/// raw socket's IP_HDRINCL and peer, a packet socket's interface and
/// option, each working again on loopback; a multicast membership joined
/// twice and a fanout group. A packet socket with a ring is refused.
#[test]
fn raw_and_packet_sockets_come_back() {
    roundtrip("rawsock", env!("CARGO_BIN_EXE_tp-rawsock"));
    // A packet socket with a ring: refused in one sentence, the program
    // goes on.
    let mut run = Run::testprog_with("rawsock-ring", env!("CARGO_BIN_EXE_tp-rawsock"), &["ring"]);
    run.checkpoint_refused("packet socket with a ring");
    run.go_and_expect_pass();
}

/// A TCP connect in progress (`tp-connecting`): the test's listener has
/// its accept queue full, so the program's SYN goes unanswered. After the
/// restore the test makes room, and the connection completes from the
/// same local port; its line arrives.
#[test]
fn a_connect_in_progress_completes_after_restore() {
    use std::io::Read;
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    // Backlog 0: one connection waiting fills the queue.
    // SAFETY: listen on our own listener's descriptor.
    unsafe { libc::listen(std::os::fd::AsRawFd::as_raw_fd(&listener), 0) };
    let filler = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    let mut run = Run::testprog_with("connecting", env!("CARGO_BIN_EXE_tp-connecting"), &[&port.to_string()]);
    run.checkpoint(&[]);
    let o = cryopod(&["restore", run.image.to_str().unwrap(), "--detach"], &[]);
    assert!(o.0 == 0, "restore failed: {}", o.2);
    let taken = listener.accept().unwrap();
    drop((taken, filler));
    let reader = std::thread::spawn(move || {
        let (mut c, _) = listener.accept().unwrap();
        c.set_read_timeout(Some(std::time::Duration::from_secs(30))).unwrap();
        let mut b = [0u8; 10];
        c.read_exact(&mut b).map(|_| b.to_vec())
    });
    run.go_and_expect_pass();
    assert_eq!(reader.join().unwrap().unwrap(), b"connected\n");
}

/// A fanotify group (`tp-fanotify`): inode, directory, ignored and mount
/// marks come back as fdinfo showed them, and report as they did.
#[test]
fn fanotify_groups_come_back() {
    roundtrip("fanotify", env!("CARGO_BIN_EXE_tp-fanotify"));
}

/// BPF maps (`tp-bpfmap`): array (frozen), hash (with a read-only
/// descriptor of the same map) and per-CPU array, with every entry.
#[test]
fn bpf_maps_come_back() {
    roundtrip("bpfmap", env!("CARGO_BIN_EXE_tp-bpfmap"));
}

#[test]
fn inotify() {
    roundtrip("inotify", env!("CARGO_BIN_EXE_tp-inotify"));
}

#[test]
fn pidfd() {
    roundtrip("pidfd", env!("CARGO_BIN_EXE_tp-pidfd"));
}

#[test]
fn rseq() {
    roundtrip("rseq", env!("CARGO_BIN_EXE_tp-rseq"));
}

#[test]
fn rseq_left_running() {
    let mut run = Run::testprog("rseq-running", env!("CARGO_BIN_EXE_tp-rseq"));
    run.checkpoint(&["--leave-running"]);
    run.go_and_expect_pass();
}

/// Shared anonymous memory inherited by a child, and a shm_open file under
/// /dev/shm mapped by both: a file there is a file, not a device.
#[test]
fn shared_memory_and_dev_shm_files() {
    let mut run = Run::testprog("shm", env!("CARGO_BIN_EXE_tp-shm"));
    run.checkpoint(&[]);
    let out = run.restore_and_verify();
    assert!(out.contains("PASS"), "{out}");
}

/// Handlers with SA_ONSTACK in threads without an alternate stack (the
/// stub's own, from the restorer's Rust runtime, must not remain).
#[test]
fn onstack_handlers_without_altstack() {
    roundtrip("onstack", env!("CARGO_BIN_EXE_tp-onstack"));
}

/// epoll sets watching unix sockets (pairs shared with a child, a listener
/// with a waiting connection), TCP, pipes, event files, inotify and another
/// epoll; one-shot and edge-triggered entries.
#[test]
fn epoll_watching_every_kind() {
    let out = roundtrip("epoll", env!("CARGO_BIN_EXE_tp-epoll"));
    assert!(out.contains("ok child got its pair event"), "{out}");
}

/// What the kernel shows of a process and its threads that a fork of the
/// restorer could leak into: /proc/PID/status of the process and of each
/// thread (masks, dispositions, capabilities, no_new_privs, seccomp, THP,
/// affinity, umask), nice and scheduling policy, timer slack, core dump
/// filter, oom score, personality, limits, cgroup, environment, command
/// line, cwd, root, exe, auxv, audit ids.
fn attr_view(pid: i32) -> Vec<String> {
    let volatile = [
        "State",
        "Vm",
        "Rss",
        "Hugetlb",
        "voluntary_ctxt",
        "nonvoluntary_ctxt",
        "SigQ",
        "TracerPid",
        "CoreDumping",
        // The fd table's capacity: the stub's grew with the restorer's fds
        // (above every target fd) and a table never shrinks; not seen by
        // the program.
        "FDSize",
    ];
    let status = |path: String, who: &str| -> Vec<String> {
        std::fs::read_to_string(path)
            .unwrap_or_default()
            .lines()
            .filter(|l| !volatile.iter().any(|v| l.starts_with(v)))
            .map(|l| format!("{who} {l}"))
            .collect()
    };
    let mut v = status(format!("/proc/{pid}/status"), "process");
    let mut tids: Vec<i32> = std::fs::read_dir(format!("/proc/{pid}/task"))
        .unwrap()
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse().ok())
        .collect();
    tids.sort();
    for t in tids {
        v.extend(status(format!("/proc/{pid}/task/{t}/status"), &format!("thread {t}")));
        let stat = std::fs::read_to_string(format!("/proc/{pid}/task/{t}/stat")).unwrap_or_default();
        let f: Vec<&str> = stat.rsplit(") ").next().unwrap_or("").split_whitespace().collect();
        // Fields 18 priority, 19 nice, 40 rt_priority, 41 policy (from 3).
        let pick = |n: usize| f.get(n - 3).copied().unwrap_or("?");
        v.push(format!("thread {t} prio {} nice {} rt {} policy {}", pick(18), pick(19), pick(40), pick(41)));
    }
    for f in [
        "timerslack_ns",
        "coredump_filter",
        "oom_score_adj",
        "personality",
        "limits",
        "cgroup",
        "environ",
        "cmdline",
        "loginuid",
        // (Not "sessionid": the kernel gives a new audit session to every
        // login uid set, and no process can choose it.)
        "comm",
    ] {
        let s = std::fs::read(format!("/proc/{pid}/{f}")).map(|b| String::from_utf8_lossy(&b).into_owned());
        v.push(format!("{f}: {}", s.unwrap_or_else(|e| format!("({e})"))));
    }
    let auxv = std::fs::read(format!("/proc/{pid}/auxv")).unwrap_or_default();
    v.push(format!("auxv: {auxv:?}"));
    for l in ["cwd", "root", "exe"] {
        v.push(format!("{l}: {:?}", std::fs::read_link(format!("/proc/{pid}/{l}")).ok()));
    }
    v
}

/// Attributes set away from their defaults (per thread: alternate stack
/// off, mask, parent-death signal, timer slack, nice, name, scheduling
/// policy, I/O priority, memory policy; per process: dumpable, subreaper,
/// THP off, core dump filter, umask, OOM score adjustment, login uid,
/// membarrier registrations) are the same after a restore, as the program
/// reads them itself and as /proc shows them.
#[test]
fn no_stub_state_leaks() {
    let mut run = Run::testprog("attrs", env!("CARGO_BIN_EXE_tp-attrs"));
    let before = attr_view(run.pid);
    run.checkpoint(&[]);
    run.restore_and_verify_keep(|pid| {
        let after = attr_view(pid);
        let diff: Vec<String> = before
            .iter()
            .zip(&after)
            .filter(|(b, a)| b != a)
            .map(|(b, a)| format!("before: {b}\n after: {a}"))
            .collect();
        assert_eq!(before.len(), after.len(), "{before:#?}\n{after:#?}");
        assert!(diff.is_empty(), "differences:\n{}", diff.join("\n"));
    });
}

/// File locks (`tp-locks`): POSIX read and write locks on ranges, an open
/// file description lock, a lease, a child's flock, and the child waiting
/// in F_SETLKW for a range its parent holds: all held again after the
/// restore, as the same processes' (another description sees them so), and
/// the wait ends when the parent lets go.
#[test]
fn file_locks_come_back() {
    roundtrip("locks", env!("CARGO_BIN_EXE_tp-locks"));
}

/// Descriptors on /proc of the tree itself (`tp-procfd`): a process's
/// own stat and environ (shared with its child, with an offset), its
/// child's status, fd directory and task comm, the child's view of its
/// parent's cmdline: opened again once those processes exist, naming the
/// same processes, offsets kept.
#[test]
fn proc_files_of_the_tree_come_back() {
    roundtrip("procfd", env!("CARGO_BIN_EXE_tp-procfd"));
}

/// Socket options (`tp-sockopts`): a TCP listener, both ends of a
/// loopback connection and a UDP socket with options away from their
/// defaults (reuse, keepalive and its timings, no delay, cork, linger,
/// priority, mark, TOS, TTL, timeouts, user timeout, deferred accept,
/// congestion control, low-water mark, buffer sizes) read back the same;
/// buffer sizes the program did not set stay the kernel's to tune.
#[test]
fn socket_options_come_back() {
    roundtrip("sockopts", env!("CARGO_BIN_EXE_tp-sockopts"));
}

/// And a running checkpoint leaves them as they were in the program
/// itself (reading a connection in repair mode clears SO_REUSEADDR).
#[test]
fn socket_options_survive_a_running_checkpoint() {
    let mut run = Run::testprog("sockopts-lr", env!("CARGO_BIN_EXE_tp-sockopts"));
    run.checkpoint(&["--leave-running"]);
    run.go_and_expect_pass();
}

/// Locked memory and access advice (`tp-mlock`): areas locked with mlock
/// and mlock2(MLOCK_ONFAULT), advised sequential and random, come back
/// with their flags, as much memory locked, their contents intact; so do
/// mlockall(MCL_FUTURE) and its MCL_ONFAULT form (areas mapped later are
/// locked); areas' own memory policies too. Twice: read from smaps, then
/// (160 MiB more resident) through the BPF iterator.
#[test]
fn locked_and_advised_memory_comes_back() {
    roundtrip("mlock", env!("CARGO_BIN_EXE_tp-mlock"));
    roundtrip_with("mlock-big", env!("CARGO_BIN_EXE_tp-mlock"), &["big"]);
}

/// Copy-on-write sharing between a parent and its forked children
/// (`tp-cowshare`): 32 MiB a parent filled before forking two children
/// (one with a child of its own) stays shared by all four after the
/// restore, but for the pages each changed, which come back as they were.
#[test]
fn memory_shared_since_a_fork_stays_shared() {
    roundtrip("cowshare", env!("CARGO_BIN_EXE_tp-cowshare"));
}

/// A listener with connections waiting to be accepted at the checkpoint
/// (`tp-accept`): the checkpoint lets the tree go on until they are
/// accepted, then takes it; after the restore the server has them all.
/// The same for a unix listener whose clients sent data before.
#[test]
fn connections_waiting_at_a_listener_are_accepted_first() {
    // (Not `roundtrip`: the server accepts during the checkpoint, so its
    // fds at READY are not those it has after the restore.)
    let mut run = Run::testprog("accept", env!("CARGO_BIN_EXE_tp-accept"));
    run.checkpoint(&[]);
    run.restore_and_verify();
    drop(run);
    // A unix listener whose waiting clients sent their greetings already.
    let mut run = Run::testprog_with("accept-unix", env!("CARGO_BIN_EXE_tp-accept"), &["unix"]);
    run.checkpoint(&[]);
    run.restore_and_verify();
}

/// IPv4-mapped IPv6 (`tp-mapped`): a dual-stack listener's IPv4 client,
/// whose server end is an IPv6 socket with mapped addresses, and an IPv6
/// UDP socket's traffic class and hop limit.
#[test]
fn ipv4_mapped_connections_and_ipv6_options_come_back() {
    roundtrip("mapped", env!("CARGO_BIN_EXE_tp-mapped"));
}

/// Files that are gone (`tp-gone`): a FIFO with bytes queued and a directory, both removed
/// while open, a file renamed over, O_PATH descriptors (a file, a
/// directory, a symbolic link itself) and a child whose working directory
/// was removed all come back as they were, and no name made for the
/// restore is left.
#[test]
fn files_that_are_gone_come_back() {
    // (Not `roundtrip`: the replaced file's link names the place beside
    // its old name where it was made again.)
    let mut run = Run::testprog("gone", env!("CARGO_BIN_EXE_tp-gone"));
    run.checkpoint(&[]);
    run.restore_and_verify();
}

/// Pseudo-terminal pairs (`tp-tty`): a session on a pair whose master the
/// tree holds, with its settings, window, exclusive mode, foreground job
/// and a line its master had not read; a second pair locked in packet
/// mode. Each comes back at its index, the session with its controlling
/// terminal, the unread line once and as it was, and a round trip works.
#[test]
fn pseudo_terminals_come_back() {
    roundtrip("tty", env!("CARGO_BIN_EXE_tp-tty"));
}
