//! A TCP listener with connections waiting to be accepted when the
//! checkpoint comes (issue 11, class 1). `tp-accept DIR`: the server looks
//! for connections every 300 ms; right after one look, its child connects
//! three clients, each sending a greeting, and the program says READY:
//! the harness checkpoints while the three wait in the accept queue. The
//! checkpoint lets the tree go on until the server has accepted them, and
//! takes it then. After the restore the server has all three, with their
//! greetings, and answers each; every client gets its answer. PASS only if
//! all of that holds. With `unix`, the same over a unix stream listener
//! (`DIR/sock`): data sent before the accept waits where no fd reaches.

use cryopod_testprogs::*;
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::os::unix::net::{UnixListener, UnixStream};
use std::time::{Duration, Instant};

/// A connection, whichever its family.
trait Conn: Read + Write {
    fn blocking_with_timeout(&mut self, secs: u64);
}

impl Conn for TcpStream {
    fn blocking_with_timeout(&mut self, secs: u64) {
        let _ = self.set_nonblocking(false);
        let _ = self.set_read_timeout(Some(Duration::from_secs(secs)));
    }
}

impl Conn for UnixStream {
    fn blocking_with_timeout(&mut self, secs: u64) {
        let _ = self.set_nonblocking(false);
        let _ = self.set_read_timeout(Some(Duration::from_secs(secs)));
    }
}

/// The listener and a way to connect a client to it.
enum Listener {
    Tcp(TcpListener),
    Unix(UnixListener),
}

impl Listener {
    fn accept(&self) -> Option<Box<dyn Conn>> {
        match self {
            Listener::Tcp(l) => l.accept().ok().map(|(s, _)| Box::new(s) as Box<dyn Conn>),
            Listener::Unix(l) => l.accept().ok().map(|(s, _)| Box::new(s) as Box<dyn Conn>),
        }
    }

    fn connect(&self, dir: &std::path::Path) -> Option<Box<dyn Conn>> {
        match self {
            Listener::Tcp(l) => Some(Box::new(TcpStream::connect(l.local_addr().ok()?).ok()?)),
            Listener::Unix(_) => Some(Box::new(UnixStream::connect(dir.join("sock")).ok()?)),
        }
    }
}

fn main() {
    let dir = work_dir();
    let mut c = Checks::new();
    let l = match std::env::args().nth(2).as_deref() {
        Some("unix") => UnixListener::bind(dir.join("sock")).map(|l| {
            let _ = l.set_nonblocking(true);
            Listener::Unix(l)
        }),
        _ => TcpListener::bind("127.0.0.1:0").map(|l| {
            let _ = l.set_nonblocking(true);
            Listener::Tcp(l)
        }),
    }
    .unwrap_or_else(|e| {
        println!("FAIL (setup: bind: {e})");
        std::process::exit(1)
    });
    let mut accepted: Vec<Box<dyn Conn>> = Vec::new();
    let sweep = |l: &Listener, into: &mut Vec<Box<dyn Conn>>| {
        while let Some(s) = l.accept() {
            into.push(s);
        }
    };
    sweep(&l, &mut accepted);
    let mut pipe = [0i32; 2];
    // SAFETY: pipe fills two ints; the child connects, reports, then waits
    // for its answers.
    let child = unsafe {
        libc::pipe(pipe.as_mut_ptr());
        libc::fork()
    };
    if child == 0 {
        let mut clients: Vec<Box<dyn Conn>> = (0..3)
            .filter_map(|i| {
                let mut s = l.connect(&dir)?;
                s.write_all(format!("hello {i}\n").as_bytes()).ok()?;
                Some(s)
            })
            .collect();
        // SAFETY: a write from a live buffer.
        unsafe { libc::write(pipe[1], [clients.len() as u8].as_ptr().cast(), 1) };
        wait_go(&dir);
        let mut ok = clients.len() == 3;
        for (i, s) in clients.iter_mut().enumerate() {
            s.blocking_with_timeout(10);
            let mut b = [0u8; 32];
            let n = s.read(&mut b).unwrap_or(0);
            ok &= b[..n] == *format!("answer {i}\n").as_bytes();
        }
        // SAFETY: ends the child.
        unsafe { libc::_exit(if ok { 0 } else { 1 }) };
    }
    let mut n = [0u8; 1];
    // SAFETY: one byte into a live buffer.
    unsafe { libc::read(pipe[0], n.as_mut_ptr().cast(), 1) };
    if n[0] != 3 {
        println!("FAIL (setup: {} clients connected)", n[0]);
        std::process::exit(1);
    }
    println!("READY");
    let _ = std::io::stdout().flush();
    // The server's loop: a look every 300 ms until `go`.
    let go = dir.join("go");
    while !go.exists() {
        std::thread::sleep(Duration::from_millis(300));
        sweep(&l, &mut accepted);
    }
    let t = Instant::now();
    while accepted.len() < 3 && t.elapsed() < Duration::from_secs(5) {
        sweep(&l, &mut accepted);
        std::thread::sleep(Duration::from_millis(10));
    }
    c.eq("the three connections, accepted", accepted.len(), 3);
    let mut greetings: Vec<String> = accepted
        .iter_mut()
        .map(|s| {
            s.blocking_with_timeout(5);
            let mut b = [0u8; 32];
            let n = s.read(&mut b).unwrap_or(0);
            String::from_utf8_lossy(&b[..n]).into_owned()
        })
        .collect();
    let order = greetings.clone();
    greetings.sort();
    c.eq("their greetings", greetings, vec!["hello 0\n".to_string(), "hello 1\n".into(), "hello 2\n".into()]);
    for (s, g) in accepted.iter_mut().zip(&order) {
        let i = g.trim().rsplit(' ').next().unwrap_or("?");
        let _ = s.write_all(format!("answer {i}\n").as_bytes());
    }
    let mut st = 0;
    // SAFETY: waits for our child.
    unsafe { libc::waitpid(child, &mut st, 0) };
    c.check("every client got its answer", libc::WIFEXITED(st) && libc::WEXITSTATUS(st) == 0, format!("{st:#x}"));
    c.finish()
}
