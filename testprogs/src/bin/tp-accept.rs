//! A TCP listener with connections waiting to be accepted when the
//! checkpoint comes (issue 11, class 1). `tp-accept DIR`: the server looks
//! for connections every 300 ms; right after one look, its child connects
//! three clients, each sending a greeting, and the program says READY:
//! the harness checkpoints while the three wait in the accept queue. The
//! checkpoint lets the tree go on until the server has accepted them, and
//! takes it then. After the restore the server has all three, with their
//! greetings, and answers each; every client gets its answer. PASS only if
//! all of that holds.

use cryopod_testprogs::*;
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::time::{Duration, Instant};

fn main() {
    let dir = work_dir();
    let mut c = Checks::new();
    let l = TcpListener::bind("127.0.0.1:0").unwrap_or_else(|e| {
        println!("FAIL (setup: bind: {e})");
        std::process::exit(1)
    });
    l.set_nonblocking(true).unwrap_or_default();
    let addr = l.local_addr().map(|a| a.to_string()).unwrap_or_default();
    let mut accepted: Vec<TcpStream> = Vec::new();
    let sweep = |l: &TcpListener, into: &mut Vec<TcpStream>| {
        while let Ok((s, _)) = l.accept() {
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
        let mut clients: Vec<TcpStream> = (0..3)
            .filter_map(|i| {
                let mut s = TcpStream::connect(&addr).ok()?;
                s.write_all(format!("hello {i}\n").as_bytes()).ok()?;
                Some(s)
            })
            .collect();
        // SAFETY: a write from a live buffer.
        unsafe { libc::write(pipe[1], [clients.len() as u8].as_ptr().cast(), 1) };
        wait_go(&dir);
        let mut ok = clients.len() == 3;
        for (i, s) in clients.iter_mut().enumerate() {
            let _ = s.set_read_timeout(Some(Duration::from_secs(10)));
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
            let _ = s.set_nonblocking(false);
            let _ = s.set_read_timeout(Some(Duration::from_secs(5)));
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
