//! Real servers in pods, with load generators on the host against the
//! pod's address (issue 8): redis-server under redis-benchmark, nginx with
//! two workers under wrk, PostgreSQL 15 (default configuration) under
//! pgbench, a JVM HTTP server, a node server and a python3 server with
//! signal handlers under wrk. Each: three `checkpoint --leave-running`
//! under load, then a checkpoint (the pod ends) and restore under load,
//! zero client errors in both; its data intact through one more checkpoint
//! and restore with its clients connected; and a streaming client that
//! sends numbered values over one connection through all of it, every one
//! received once, in order. Each test has its own /24 (10.77.80-85).
//! `scripts/setup.sh` installs the servers and load generators.

mod common;

use common::run_within;
use common::servers::*;
use common::streams::{psql_query, Http, Lines, Psql, Redis, Stream};
use std::process::Command;
use std::time::Duration;

fn scripts(file: &str) -> String {
    format!("{}/scripts/{file}", env!("CARGO_MANIFEST_DIR"))
}

/// Run a host command to its end (bounded), insisting on success.
fn host(cmd: &mut Command, secs: u64) -> String {
    let what = format!("{cmd:?}");
    let c = std::mem::replace(cmd, Command::new("true"));
    let o = run_within(c, secs);
    assert_eq!(o.0, 0, "{what} failed:\n{}{}", o.1, o.2);
    o.1
}

fn redis_cli(s: &ServerEnv, args: &[&str]) -> String {
    host(Command::new("redis-cli").args(["-h", &s.ip, "-p", "6379"]).args(args), 30).trim().to_string()
}

/// The end of a test: the stream's verdict, the pod stopped, every
/// check reported.
fn finish(mut s: ServerEnv, stream: Stream) {
    stream_ok(&mut s, stream);
    s.stop();
    s.done();
}

/// Assert the stream client got through everything; note its summary.
fn stream_ok(s: &mut ServerEnv, stream: Stream) {
    let sent = stream.sent();
    match stream.finish() {
        Ok(v) => s.note(format!("stream: {v}")),
        Err(e) => s.fail(format!(
            "streaming client ({sent} values sent): {e}\nlog of pod {}:\n{}\nTCP in the pod:\n{}\nTCP on the host:\n{}",
            s.name,
            s.logs(),
            s.env.cryopod(&["exec", &s.name, "--", "ss", "-tnoi"]).1,
            String::from_utf8_lossy(
                &Command::new("ss").args(["-tnoi", "dst", &s.ip]).output().map(|o| o.stdout).unwrap_or_default()
            )
        )),
    }
}

#[test]
fn redis_under_redis_benchmark() {
    let mut s = ServerEnv::new("srv-redis", "redis", "10.77.80");
    let data = s.path("redis");
    std::fs::create_dir_all(&data).unwrap();
    let mut redis = REDIS_SERVER.to_vec();
    redis.extend(["--dir", &data]);
    s.run(&redis);
    s.wait_port(6379, 20);
    assert_eq!(redis_cli(&s, &["DEBUG", "POPULATE", "20000", "key", "100"]), "OK");
    let stream = Stream::start(Redis::connect(s.addr(6379)));
    s.leave_running_under(start_load(&s, Tool::RedisBenchmark, "bench1"));
    s.restore_under(start_load(&s, Tool::RedisBenchmark, "bench2"));
    // The data set through one more checkpoint and restore, the stream's
    // connection open (paused so that nothing changes the data).
    stream.pause();
    let before = (redis_cli(&s, &["DEBUG", "DIGEST"]), redis_cli(&s, &["DBSIZE"]));
    s.checkpoint_and_restore();
    let after = (redis_cli(&s, &["DEBUG", "DIGEST"]), redis_cli(&s, &["DBSIZE"]));
    assert_eq!(before, after, "DEBUG DIGEST and DBSIZE before the checkpoint and after the restore");
    s.note(format!("data: {} keys, digest equal", after.1));
    stream.resume();
    std::thread::sleep(Duration::from_millis(300));
    finish(s, stream);
}

#[test]
fn nginx_two_workers_under_wrk() {
    let mut s = ServerEnv::new("srv-nginx", "nginx", "10.77.81");
    let p = s.path("nginx");
    for d in ["www", "tmp", "logs"] {
        std::fs::create_dir_all(format!("{p}/{d}")).unwrap();
    }
    std::fs::write(format!("{p}/www/index.html"), "<html>cryopod</html>\n".repeat(50)).unwrap();
    let conf = format!(
        "worker_processes 2;\ndaemon off;\npid {p}/nginx.pid;\nerror_log {p}/logs/error.log info;\n\
         events {{ worker_connections 256; }}\n\
         http {{\n  access_log off;\n  client_body_temp_path {p}/tmp/body;\n  proxy_temp_path {p}/tmp/proxy;\n\
         keepalive_requests 1000000;\n  keepalive_timeout 60s;\n  log_format uri $request_uri;\n\
         server {{\n    listen 80;\n    location = /status {{ stub_status; }}\n\
         location = /seq {{ access_log {p}/logs/seq.log uri; return 200 \"$arg_n\\n\"; }}\n\
         location / {{ root {p}/www; }}\n  }}\n}}\n"
    );
    std::fs::write(format!("{p}/nginx.conf"), conf).unwrap();
    host(Command::new("nginx").args(["-t", "-p", &p, "-c", &format!("{p}/nginx.conf")]), 30);
    s.run(&["nginx", "-p", &p, "-c", &format!("{p}/nginx.conf")]);
    s.wait_port(80, 20);
    let workers = |s: &ServerEnv| pod_commands(s).iter().filter(|c| *c == "nginx").count();
    // (The master listens before it has forked both workers.)
    let t = std::time::Instant::now();
    while workers(&s) < 3 && t.elapsed() < Duration::from_secs(10) {
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(workers(&s), 3, "expected nginx's master and 2 workers: {:?}", pod_commands(&s));
    let stream = Stream::start(Http::connect(s.addr(80), format!("{p}/logs/seq.log").into()));
    s.leave_running_under(start_load(&s, Tool::Wrk(80, "/"), "wrk1"));
    s.restore_under(start_load(&s, Tool::Wrk(80, "/"), "wrk2"));
    // stub_status's counters (shared by the workers) go on from where they
    // were: one more connection and request, the one asking.
    stream.pause();
    let status = |s: &ServerEnv| -> Vec<u64> {
        let b = http_get(s, 80, "/status");
        b.lines().nth(2).unwrap_or_default().split_whitespace().filter_map(|x| x.parse().ok()).collect()
    };
    let before = status(&s);
    s.checkpoint_and_restore();
    let after = status(&s);
    assert_eq!(before.len(), 3, "stub_status: {before:?}");
    let want: Vec<u64> = before.iter().map(|x| x + 1).collect();
    assert_eq!(after, want, "accepts, handled, requests after the restore (before: {before:?})");
    assert_eq!(workers(&s), 3, "master and workers after the restore: {:?}", pod_commands(&s));
    s.note(format!("data: stub_status accepts/handled/requests {before:?} -> {after:?}"));
    stream.resume();
    std::thread::sleep(Duration::from_millis(300));
    finish(s, stream);
}

#[test]
fn postgresql_under_pgbench() {
    let mut s = ServerEnv::new("srv-pg", "pg", "10.77.82");
    let bin = "/usr/lib/postgresql/15/bin";
    let pg = s.path("pg");
    let data = format!("{pg}/data");
    std::fs::create_dir_all(&pg).unwrap();
    let id = |opt: &str| host(Command::new("id").args([opt, "postgres"]), 10).trim().parse::<u32>().unwrap();
    std::os::unix::fs::chown(&pg, Some(id("-u")), Some(id("-g"))).unwrap();
    let as_postgres = ["setpriv", "--reuid=postgres", "--regid=postgres", "--init-groups"];
    host(
        Command::new(as_postgres[0]).args(&as_postgres[1..]).arg(format!("{bin}/initdb")).args([
            "-D",
            &data,
            "--auth=trust",
            "--no-sync",
        ]),
        120,
    );
    // The default configuration, but reachable from the host.
    let mut hba = std::fs::read_to_string(format!("{data}/pg_hba.conf")).unwrap();
    hba.push_str("host all all 0.0.0.0/0 trust\n");
    std::fs::write(format!("{data}/pg_hba.conf"), hba).unwrap();
    let postgres = format!("{bin}/postgres");
    let mut cmd = as_postgres.to_vec();
    cmd.extend_from_slice(&[&postgres, "-D", &data, "-k", &pg, "-c", "listen_addresses=*"]);
    s.run(&cmd);
    s.wait_port(5432, 60);
    host(Command::new("pgbench").args(["-h", &s.ip, "-U", "postgres", "-i", "-s", "1", "-q", "postgres"]), 120);
    psql_query(&s.ip, "CREATE TABLE stream (id bigserial PRIMARY KEY, v bigint NOT NULL)").unwrap();
    let stream = Stream::start(Psql::start(&s.ip));
    s.leave_running_under(start_load(&s, Tool::Pgbench, "pgbench1"));
    s.restore_under(start_load(&s, Tool::Pgbench, "pgbench2"));
    // The tables pgbench wrote, through one more checkpoint and restore
    // (the stream's psql connected and inserting).
    let q = "SELECT (SELECT count(*) || ' ' || sum(abalance) FROM pgbench_accounts), \
             (SELECT count(*) || ' ' || coalesce(sum(delta), 0) FROM pgbench_history)";
    let before = psql_query(&s.ip, q).unwrap_or_else(|e| panic!("{e}\nlog:\n{}", s.logs()));
    s.checkpoint_and_restore();
    let after = psql_query(&s.ip, q).unwrap_or_else(|e| panic!("{e}\nlog:\n{}", s.logs()));
    assert_eq!(before, after, "accounts (count sum) | history (count sum) before the checkpoint and after the restore");
    s.note(format!("data: accounts|history {after}"));
    std::thread::sleep(Duration::from_millis(300));
    finish(s, stream);
}

/// The common part of the JVM, node and python servers (scripts/
/// CounterServer.java, counter_server.js, signal_server.py): HTTP on 8080
/// (/inc, /stat) under wrk, the stream on 9000.
fn counter_server_phases(s: &mut ServerEnv) -> Stream {
    s.wait_port(8080, 60);
    s.wait_port(9000, 60);
    s.note("server ready".into());
    let count = |s: &ServerEnv| -> u64 {
        let b = http_get(s, 8080, "/stat");
        b.split_whitespace().find_map(|w| w.strip_prefix("count=")?.parse().ok()).expect("count= in /stat")
    };
    let stream = Stream::start(Lines::connect(s.addr(9000)));
    // Every /inc wrk got an answer for counted once (and at most one more
    // per connection: a request under way when wrk stopped).
    let check = |s: &ServerEnv, from: u64, r: &LoadReport| {
        let to = count(s);
        assert!(
            to - from >= r.requests && to - from <= r.requests + CLIENTS as u64,
            "the counter went from {from} to {to} for {} requests answered",
            r.requests
        );
        to
    };
    let c0 = count(s);
    let r = s.leave_running_under(start_load(s, Tool::Wrk(8080, "/inc"), "wrk1"));
    let c1 = check(s, c0, &r);
    let r = s.restore_under(start_load(s, Tool::Wrk(8080, "/inc"), "wrk2"));
    let c2 = check(s, c1, &r);
    // The state through one more checkpoint and restore, the stream's
    // connection open and sending (once the server closed what wrk left).
    s.checkpoint_and_restore();
    assert_eq!(count(s), c2, "the counter after the restore");
    assert_eq!(http_get(s, 8080, "/inc"), format!("{}\n", c2 + 1), "the counter goes on");
    s.note(format!("data: counter {c2} kept"));
    stream
}

#[test]
fn jvm_http_server_under_wrk() {
    let mut s = ServerEnv::new("srv-jvm", "jvm", "10.77.83");
    let classes = s.path("classes");
    host(Command::new("javac").args(["-d", &classes, &scripts("CounterServer.java")]), 180);
    // nodelay: headers and body are two writes (Nagle would hold answers).
    s.run(&["java", "-Xmx256m", "-Dsun.net.httpserver.nodelay=true", "-cp", &classes, "CounterServer", "8080", "9000"]);
    let stream = counter_server_phases(&mut s);
    finish(s, stream);
}

#[test]
fn node_http_server_under_wrk() {
    let mut s = ServerEnv::new("srv-node", "node", "10.77.84");
    s.run(&["node", &scripts("counter_server.js"), "8080", "9000"]);
    let stream = counter_server_phases(&mut s);
    finish(s, stream);
}

#[test]
fn python_server_with_signal_handlers_under_wrk() {
    let mut s = ServerEnv::new("srv-python", "python", "10.77.85");
    let dir = s.path("py");
    std::fs::create_dir_all(&dir).unwrap();
    s.run(&["python3", &scripts("signal_server.py"), "8080", "9000", &dir]);
    s.wait_port(8080, 30);
    // SIGUSR1 reaches the handler of the signal module, before and after
    // the checkpoints; SIGTERM's handler runs when the pod is stopped.
    let usr1 = |s: &mut ServerEnv, times: u32, want: u32| {
        for i in 0..times {
            let o = s.env.cryopod(&["exec", &s.name, "--", "sh", "-c", &format!("kill -USR1 $(cat {dir}/pid)")]);
            if o.0 != 0 {
                let log = s.logs();
                s.fail(format!("SIGUSR1 #{} of {times} (want usr1={want}): {}log:\n{log}", i + 1, o.2));
                s.done();
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let t = std::time::Instant::now();
        loop {
            let st = http_get(s, 8080, "/stat");
            if st.contains(&format!("usr1={want} ")) || st.trim_end().ends_with(&format!("usr1={want}")) {
                s.note(format!("SIGUSR1 handled {want} times"));
                return;
            }
            if t.elapsed() > Duration::from_secs(5) {
                let log = s.logs();
                return s
                    .fail(format!("after {times} more SIGUSR1 /stat says {st:?}, expected usr1={want}\nlog:\n{log}"));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    };
    usr1(&mut s, 3, 3);
    let stream = counter_server_phases(&mut s);
    usr1(&mut s, 2, 5);
    stream_ok(&mut s, stream);
    let count = http_get(&s, 8080, "/stat");
    s.stop();
    let term = std::fs::read_to_string(format!("{dir}/term")).unwrap_or_default();
    let want = format!("TERM {}", count.trim());
    if term.trim() != want {
        s.fail(format!("the SIGTERM handler's record is {:?}, expected {want:?}", term.trim()));
    }
    s.done();
}
