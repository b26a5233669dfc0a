//! The client of the live-migration benchmark: `tp-pinger ADDR:PORT STOP`
//! sends an 8-byte request every millisecond over one TCP connection and
//! waits for its echo, until the file STOP appears. It prints the number
//! of exchanges, the longest time between two answers (a migration's
//! downtime as a client sees it, plus the 1 ms pace) and any error, then
//! PASS (no error, no wrong answer) or FAIL.

use std::io::{Read, Write};
use std::time::{Duration, Instant};

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let (addr, stop) = (&args[1], std::path::Path::new(&args[2]));
    let t = Instant::now();
    let mut c = loop {
        match std::net::TcpStream::connect(addr.as_str()) {
            Ok(c) => break c,
            Err(e) if t.elapsed() > Duration::from_secs(20) => {
                println!("FAIL cannot connect to {addr}: {e}");
                std::process::exit(1);
            }
            Err(_) => std::thread::sleep(Duration::from_millis(50)),
        }
    };
    let _ = c.set_nodelay(true);
    let _ = c.set_read_timeout(Some(Duration::from_secs(60)));
    println!("CONNECTED");
    let _ = std::io::stdout().flush();
    let (mut n, mut longest, mut last) = (0u64, Duration::ZERO, Instant::now());
    let start = Instant::now();
    let mut failure = None;
    while !stop.exists() {
        let req = n.to_le_bytes();
        let mut got = [0u8; 8];
        if let Err(e) = c.write_all(&req).and_then(|_| c.read_exact(&mut got)) {
            failure = Some(format!("exchange {n}: {e}"));
            break;
        }
        if got != req {
            failure = Some(format!("exchange {n}: answered {:?}", u64::from_le_bytes(got)));
            break;
        }
        let now = Instant::now();
        longest = longest.max(now - last);
        last = now;
        n += 1;
        let due = start + Duration::from_millis(n);
        if let Some(d) = due.checked_duration_since(Instant::now()) {
            std::thread::sleep(d);
        }
    }
    println!("exchanges {n} longest_gap_ms {:.2}", longest.as_secs_f64() * 1e3);
    match failure {
        None => println!("PASS"),
        Some(f) => println!("FAIL {f}"),
    }
}
