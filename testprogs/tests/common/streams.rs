//! Streaming clients ([`Stream`] and its [`Streamer`]s): numbered values
//! over one TCP connection into a server in a pod, each protocol checking
//! that the server got every value exactly once, in order.

use super::servers::epoch;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// One side of a streaming client: sends numbered values over one
/// connection (reading whatever answers they have) and checks the end.
pub trait Streamer: Send + 'static {
    /// Send the values `from..from + n`.
    fn send(&mut self, from: u64, n: u64) -> Result<(), String>;
    /// After the last value `last`: check that the server got 1..=last
    /// exactly once, in order; returns a summary.
    fn end(&mut self, last: u64) -> Result<String, String>;
    /// PIDs to kill so that a blocked `send` returns (a client process).
    fn pids(&self) -> Vec<i32> {
        Vec::new()
    }
}

/// A streaming client running in its own thread from [`Stream::start`]
/// until [`Stream::finish`]; it can be paused (connection kept open).
pub struct Stream {
    stop: Arc<AtomicBool>,
    pause: Arc<AtomicBool>,
    paused: Arc<AtomicBool>,
    sent: Arc<AtomicU64>,
    pids: Vec<i32>,
    thread: Option<JoinHandle<Sender>>,
}

/// What the sending thread gives back: the streamer and how it ended.
type Sender = (Box<dyn Streamer>, Result<(), String>);

/// Values per batch, and the pause between batches.
const BATCH: u64 = 8;
const PACE: Duration = Duration::from_millis(2);

impl Stream {
    pub fn start(s: impl Streamer) -> Stream {
        let (stop, pause, paused) = Default::default();
        let sent = Arc::new(AtomicU64::new(0));
        let pids = s.pids();
        let (st, pa, pd, se): (Arc<AtomicBool>, Arc<AtomicBool>, Arc<AtomicBool>, _) =
            (Arc::clone(&stop), Arc::clone(&pause), Arc::clone(&paused), Arc::clone(&sent));
        let mut s: Box<dyn Streamer> = Box::new(s);
        let thread = std::thread::spawn(move || {
            let mut next = 1;
            while !st.load(Ordering::SeqCst) {
                if pa.load(Ordering::SeqCst) {
                    pd.store(true, Ordering::SeqCst);
                    std::thread::sleep(Duration::from_millis(2));
                    continue;
                }
                pd.store(false, Ordering::SeqCst);
                if let Err(e) = s.send(next, BATCH) {
                    let at = epoch().elapsed().as_secs_f64();
                    return (s, Err(format!("at {at:.2}s, after {} values: {e}", next - 1)));
                }
                next += BATCH;
                se.store(next - 1, Ordering::SeqCst);
                std::thread::sleep(PACE);
            }
            (s, Ok(()))
        });
        Stream { stop, pause, paused, sent, pids, thread: Some(thread) }
    }

    /// Values sent (and answered, where the protocol answers) so far.
    pub fn sent(&self) -> u64 {
        self.sent.load(Ordering::SeqCst)
    }

    /// Stop sending (the connection stays open) once the batch under way
    /// is done; fails if that takes over 30 s (a hang).
    pub fn pause(&self) {
        self.pause.store(true, Ordering::SeqCst);
        let t = Instant::now();
        while !self.paused.load(Ordering::SeqCst) {
            let dead = self.thread.as_ref().is_none_or(|h| h.is_finished());
            assert!(!dead, "the streaming client ended while asked to pause (see finish for why)");
            assert!(t.elapsed() < Duration::from_secs(30), "the streaming client hangs (30 s in one batch)");
            std::thread::sleep(Duration::from_millis(2));
        }
    }

    pub fn resume(&self) {
        self.paused.store(false, Ordering::SeqCst);
        self.pause.store(false, Ordering::SeqCst);
    }

    /// Stop, then check with the server that it got every value once, in
    /// order. Returns a summary; Err says what went wrong.
    pub fn finish(mut self) -> Result<String, String> {
        self.stop.store(true, Ordering::SeqCst);
        let (mut s, r) = self.thread.take().unwrap().join().map_err(|_| "the streaming client panicked".to_string())?;
        r?;
        s.end(self.sent())
    }
}

impl Drop for Stream {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        for &p in &self.pids {
            // SAFETY: kill by the PID of a client process this test started.
            unsafe { libc::kill(p, libc::SIGKILL) };
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// A TCP connection to the pod for a [`Streamer`]: no read or write may
/// block for more than 10 s (a hang is an error, not a stuck test), and a
/// small send buffer so that a stalled connection blocks the writer soon.
pub fn connect(addr: SocketAddr) -> TcpStream {
    let c = TcpStream::connect_timeout(&addr, Duration::from_secs(5)).unwrap_or_else(|e| panic!("connect {addr}: {e}"));
    let size: libc::c_int = 32 << 10;
    // SAFETY: setsockopt on a socket we own, with an int option value.
    let r = unsafe {
        libc::setsockopt(
            std::os::fd::AsRawFd::as_raw_fd(&c),
            libc::SOL_SOCKET,
            libc::SO_SNDBUF,
            (&size as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    assert_eq!(r, 0, "SO_SNDBUF: {}", std::io::Error::last_os_error());
    c.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    c.set_write_timeout(Some(Duration::from_secs(10))).unwrap();
    c.set_nodelay(true).unwrap();
    c
}

fn io(what: &str) -> impl Fn(std::io::Error) -> String + '_ {
    move |e| format!("{what}: {e}")
}

/// Lines "1\n", "2\n", ... then "end\n", answered by the server with
/// "got=G bad=B last=L" (testprogs/scripts' counter servers).
pub struct Lines {
    w: TcpStream,
    r: BufReader<TcpStream>,
}

impl Lines {
    pub fn connect(addr: SocketAddr) -> Lines {
        let c = connect(addr);
        Lines { w: c.try_clone().unwrap(), r: BufReader::new(c) }
    }
}

impl Streamer for Lines {
    fn send(&mut self, from: u64, n: u64) -> Result<(), String> {
        let s: String = (from..from + n).map(|i| format!("{i}\n")).collect();
        self.w.write_all(s.as_bytes()).map_err(io("write"))
    }

    fn end(&mut self, last: u64) -> Result<String, String> {
        self.w.write_all(b"end\n").map_err(io("write end"))?;
        let mut line = String::new();
        self.r.read_line(&mut line).map_err(io("read the verdict"))?;
        let want = format!("got={last} bad=0 last={last}");
        if line.trim() == want {
            Ok(want)
        } else {
            Err(format!("the server says {:?}, the client sent 1..={last} (expected {want:?})", line.trim()))
        }
    }
}

/// `RPUSH cryopod:stream i`, pipelined by batch; each answer must be the
/// list's new length (= i), and at the end LRANGE must be 1..=last.
pub struct Redis {
    w: TcpStream,
    r: BufReader<TcpStream>,
}

impl Redis {
    pub fn connect(addr: SocketAddr) -> Redis {
        let c = connect(addr);
        Redis { w: c.try_clone().unwrap(), r: BufReader::new(c) }
    }

    fn line(&mut self) -> Result<String, String> {
        let mut l = String::new();
        match self.r.read_line(&mut l) {
            Ok(0) => Err("connection closed by the server".into()),
            Ok(_) => Ok(l.trim_end().to_string()),
            Err(e) => Err(format!("read: {e}")),
        }
    }
}

impl Streamer for Redis {
    fn send(&mut self, from: u64, n: u64) -> Result<(), String> {
        let s: String = (from..from + n).map(|i| format!("RPUSH cryopod:stream {i}\r\n")).collect();
        self.w.write_all(s.as_bytes()).map_err(io("write"))?;
        for i in from..from + n {
            let l = self.line()?;
            if l != format!(":{i}") {
                return Err(format!("RPUSH of {i} answered {l:?} (a value lost or repeated)"));
            }
        }
        Ok(())
    }

    fn end(&mut self, last: u64) -> Result<String, String> {
        self.w.write_all(b"LRANGE cryopod:stream 0 -1\r\n").map_err(io("write"))?;
        let head = self.line()?;
        if head != format!("*{last}") {
            return Err(format!("LRANGE answered {head:?} for {last} values sent"));
        }
        for i in 1..=last {
            let _len = self.line()?;
            let v = self.line()?;
            if v != i.to_string() {
                return Err(format!("element {i} of the list is {v:?}"));
            }
        }
        Ok(format!("list of {last} values 1..={last}"))
    }
}

/// Pipelined keep-alive `GET /seq?n=i` (nginx answers "i\n"); the answers
/// must come in order, and the server's own log (`log`: one request URI
/// per line) must hold every request once, in order.
pub struct Http {
    w: TcpStream,
    r: BufReader<TcpStream>,
    log: std::path::PathBuf,
}

impl Http {
    pub fn connect(addr: SocketAddr, log: std::path::PathBuf) -> Http {
        let c = connect(addr);
        Http { w: c.try_clone().unwrap(), r: BufReader::new(c), log }
    }

    fn response(&mut self) -> Result<(String, String), String> {
        let mut status = String::new();
        if self.r.read_line(&mut status).map_err(io("read"))? == 0 {
            return Err("connection closed by the server".into());
        }
        let mut len = 0;
        loop {
            let mut h = String::new();
            self.r.read_line(&mut h).map_err(io("read a header"))?;
            let h = h.trim_end();
            if h.is_empty() {
                break;
            }
            if let Some(v) = h.to_ascii_lowercase().strip_prefix("content-length:") {
                len = v.trim().parse().map_err(|_| format!("bad header {h:?}"))?;
            }
        }
        let mut body = vec![0; len];
        self.r.read_exact(&mut body).map_err(io("read a body"))?;
        Ok((status.trim_end().to_string(), String::from_utf8_lossy(&body).into_owned()))
    }
}

impl Streamer for Http {
    fn send(&mut self, from: u64, n: u64) -> Result<(), String> {
        let s: String = (from..from + n).map(|i| format!("GET /seq?n={i} HTTP/1.1\r\nHost: pod\r\n\r\n")).collect();
        self.w.write_all(s.as_bytes()).map_err(io("write"))?;
        for i in from..from + n {
            let (status, body) = self.response()?;
            if !status.contains(" 200 ") || body != format!("{i}\n") {
                return Err(format!("request {i} answered {status:?} {body:?}"));
            }
        }
        Ok(())
    }

    fn end(&mut self, last: u64) -> Result<String, String> {
        // The log line is written once the answer is sent: wait a little.
        let t = Instant::now();
        loop {
            let log = std::fs::read_to_string(&self.log).unwrap_or_default();
            let got: Vec<&str> = log.lines().collect();
            if got.len() as u64 >= last || t.elapsed() > Duration::from_secs(5) {
                let want: Vec<String> = (1..=last).map(|i| format!("/seq?n={i}")).collect();
                if got == want {
                    return Ok(format!("{last} requests logged once each, in order"));
                }
                let first = got.iter().zip(&want).position(|(a, b)| a != b).unwrap_or(got.len().min(want.len()));
                return Err(format!(
                    "the server logged {} requests for {last} sent; first difference at #{}: {:?} (expected {:?})",
                    got.len(),
                    first + 1,
                    got.get(first),
                    want.get(first)
                ));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

/// A `psql` on the host fed `INSERT INTO stream(v) VALUES (i);` on its
/// stdin (one connection; it exits at the first error or a lost
/// connection); at the end the table must hold 1..=last in order of id.
pub struct Psql {
    child: Child,
    stdin: Option<ChildStdin>,
    host: String,
}

impl Psql {
    pub fn start(host: &str) -> Psql {
        let mut child = Command::new("psql")
            .args(["-h", host, "-U", "postgres", "-X", "-q", "-v", "ON_ERROR_STOP=1", "postgres"])
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start psql");
        let stdin = child.stdin.take();
        Psql { child, stdin, host: host.into() }
    }
}

impl Streamer for Psql {
    fn send(&mut self, from: u64, n: u64) -> Result<(), String> {
        let s: String = (from..from + n).map(|i| format!("INSERT INTO stream(v) VALUES ({i});\n")).collect();
        let w = self.stdin.as_mut().ok_or("psql's stdin is closed")?;
        w.write_all(s.as_bytes()).map_err(io("write to psql (it ended)"))
    }

    fn end(&mut self, last: u64) -> Result<String, String> {
        drop(self.stdin.take());
        let t = Instant::now();
        let status = loop {
            if let Some(s) = self.child.try_wait().map_err(io("wait for psql"))? {
                break s;
            }
            if t.elapsed() > Duration::from_secs(30) {
                return Err("psql still runs 30 s after its input ended (a hang)".into());
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        let mut err = String::new();
        if let Some(mut e) = self.child.stderr.take() {
            let _ = e.read_to_string(&mut err);
        }
        if !status.success() {
            return Err(format!("psql ended with {status}: {}", err.trim()));
        }
        let q = "SELECT count(*), count(DISTINCT v), min(v), max(v), \
                 (SELECT count(*) FROM (SELECT v - lag(v) OVER (ORDER BY id) AS d FROM stream) s WHERE d <> 1) \
                 FROM stream";
        let got = psql_query(&self.host, q)?;
        let want = format!("{last}|{last}|1|{last}|0");
        if got == want {
            Ok(format!("{last} rows 1..={last} in order"))
        } else {
            Err(format!("count, distinct, min, max, steps other than 1: {got:?} (expected {want:?})"))
        }
    }

    fn pids(&self) -> Vec<i32> {
        vec![self.child.id() as i32]
    }
}

impl Drop for Psql {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `psql -At -c QUERY` against the pod (bounded: 30 s); its output.
pub fn psql_query(host: &str, query: &str) -> Result<String, String> {
    let mut cmd = Command::new("psql");
    cmd.args(["-h", host, "-U", "postgres", "-X", "-At", "-v", "ON_ERROR_STOP=1", "-c", query, "postgres"]);
    cmd.env("PGCONNECT_TIMEOUT", "10");
    let o = super::run_within(cmd, 30);
    if o.0 == 0 {
        Ok(o.1.trim().to_string())
    } else {
        Err(format!("psql {query:?}: {}", o.2.trim()))
    }
}
