//! Unix sockets connected to peers outside the checkpoint (issue 11, class
//! 3), as a daemon's /dev/log and a service's socket: `tp-external DIR LOG
//! SVC` connects a datagram socket to the datagram socket bound at LOG and
//! a stream socket to the listener at SVC, and sends a line on each. After
//! a restore that connected them again by name (`--external-unix`), it
//! sends again on both and reads the service's greeting on the stream.

use cryopod_testprogs::*;
use std::io::{Read, Write};
use std::os::unix::net::{UnixDatagram, UnixStream};
use std::time::Duration;

fn main() {
    let dir = work_dir();
    let args: Vec<String> = std::env::args().collect();
    let (Some(log_path), Some(svc_path)) = (args.get(2), args.get(3)) else {
        println!("FAIL (setup: usage: tp-external DIR LOG SVC)");
        std::process::exit(1);
    };
    let mut c = Checks::new();
    let log = UnixDatagram::unbound().and_then(|s| s.connect(log_path).map(|_| s));
    let svc = UnixStream::connect(svc_path);
    let (Ok(log), Ok(mut svc)) = (log, svc) else {
        println!("FAIL (setup: cannot reach {log_path} or {svc_path})");
        std::process::exit(1);
    };
    if log.send(b"before").is_err() || svc.write_all(b"hello-before\n").is_err() {
        println!("FAIL (setup: the first messages)");
        std::process::exit(1);
    }
    ready_and_wait(&dir);

    c.check("the log takes a line again", log.send(b"after").is_ok(), "send failed");
    c.check("the service takes a line again", svc.write_all(b"hello-after\n").is_ok(), "write failed");
    let _ = svc.set_read_timeout(Some(Duration::from_secs(5)));
    let mut greeting = [0u8; 8];
    let got = svc.read_exact(&mut greeting).map(|_| String::from_utf8_lossy(&greeting).into_owned());
    c.eq("the service's greeting", got.ok(), Some("welcome\n".into()));
    c.finish()
}
