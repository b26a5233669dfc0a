//! The link and its frames between two threads over loopback TCP: only
//! holders of the same key file get a link; every byte on the wire is
//! authenticated; frames are bounded before they are read.

use cryopod_image::ImageKey;
use cryopod_migrate::frame::{read_frame, write_frame, DataReader, DataWriter, Kind, MAX_DATA};
use cryopod_migrate::link::{Link, MAGIC, VERSION};
use cryopod_migrate::MigrateError;
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::time::Duration;

fn key(b: u8) -> ImageKey {
    ImageKey::from_bytes(&[b; 32])
}

/// A connected pair of loopback sockets (with timeouts: a test never hangs).
fn pair() -> (TcpStream, TcpStream) {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let a = TcpStream::connect(l.local_addr().unwrap()).unwrap();
    let (b, _) = l.accept().unwrap();
    for s in [&a, &b] {
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    }
    (a, b)
}

/// Noise-like bytes that no compression or pattern hides.
fn noise(n: usize) -> Vec<u8> {
    let mut x = 0x9e3779b97f4a7c15u64;
    (0..n)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

#[test]
fn same_key_links_and_carries_frames_and_streams_both_ways() {
    let (a, b) = pair();
    let data = noise(3 * MAX_DATA as usize + 12345);
    let sent = data.clone();
    let server = std::thread::spawn(move || {
        let mut l = Link::accept(b, &key(7), "client").unwrap();
        let f = read_frame(&mut l, "waiting for an offer").unwrap();
        assert_eq!((f.kind, f.text().as_str()), (Kind::Offer, "pod web"));
        write_frame(&mut l, Kind::Accept, b"").unwrap();
        l.flush().unwrap();
        let mut got = Vec::new();
        let mut r = DataReader::new(&mut l);
        r.read_to_end(&mut got).unwrap();
        assert!(r.ended());
        assert_eq!(got, sent);
        write_frame(&mut l, Kind::Done, b"running").unwrap();
        l.flush().unwrap();
    });
    let mut l = Link::connect(a, &key(7), "server").unwrap();
    write_frame(&mut l, Kind::Offer, b"pod web").unwrap();
    l.flush().unwrap();
    assert_eq!(read_frame(&mut l, "waiting for an answer").unwrap().kind, Kind::Accept);
    let mut w = DataWriter::new(&mut l);
    // Odd write sizes: frames and messages are cut wherever they fill.
    for part in data.chunks(70_001) {
        w.write_all(part).unwrap();
    }
    assert_eq!(w.finish().unwrap(), data.len() as u64);
    let done = read_frame(&mut l, "waiting for the outcome").unwrap();
    assert_eq!((done.kind, done.text().as_str()), (Kind::Done, "running"));
    server.join().unwrap();
}

#[test]
fn another_key_is_refused_before_anything_is_read() {
    let (a, b) = pair();
    let server = std::thread::spawn(move || Link::accept(b, &key(1), "client").err());
    let client = Link::connect(a, &key(2), "server").err();
    let refused = server.join().unwrap().expect("the server must refuse another key");
    assert!(matches!(refused, MigrateError::Unauthenticated(_)), "{refused}");
    assert!(refused.to_string().contains("did not prove it holds the same key file"), "{refused}");
    // The client learns it too: the server closed without answering.
    let client = client.expect("the client must not get a link");
    assert!(matches!(client, MigrateError::Unauthenticated(_) | MigrateError::Closed(_)), "{client}");
}

#[test]
fn a_peer_that_is_not_cryopod_or_of_another_version_is_refused() {
    let (mut a, b) = pair();
    let server = std::thread::spawn(move || Link::accept(b, &key(1), "client").err());
    a.write_all(b"GET / HTTP/1.1\r\n\r\n").unwrap();
    let e = server.join().unwrap().unwrap();
    assert!(e.to_string().contains("is not a cryopod host"), "{e}");

    let (mut a, b) = pair();
    let server = std::thread::spawn(move || Link::accept(b, &key(1), "client").err());
    let mut hello = MAGIC.to_vec();
    hello.extend_from_slice(&(VERSION + 1).to_be_bytes());
    a.write_all(&hello).unwrap();
    let e = server.join().unwrap().unwrap();
    assert!(matches!(e, MigrateError::Version { found, supported } if found == VERSION + 1 && supported == VERSION));
}

/// A relay between the two sides that can flip one byte of what the
/// client sends, `at` bytes into the connection.
fn relay(flip_at: Option<usize>) -> (TcpStream, TcpStream, std::thread::JoinHandle<()>) {
    let (client, mut relay_in) = pair();
    let (mut relay_out, server) = pair();
    let h = std::thread::spawn(move || {
        let mut back_in = relay_in.try_clone().unwrap();
        let mut back_out = relay_out.try_clone().unwrap();
        let back = std::thread::spawn(move || {
            let _ = std::io::copy(&mut back_out, &mut back_in);
        });
        let mut buf = [0u8; 4096];
        let mut seen = 0usize;
        loop {
            let n = match relay_in.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => n,
            };
            if let Some(at) = flip_at.filter(|&at| at >= seen && at < seen + n) {
                buf[at - seen] ^= 0x20;
            }
            seen += n;
            if relay_out.write_all(&buf[..n]).is_err() {
                break;
            }
        }
        let _ = relay_out.shutdown(std::net::Shutdown::Write);
        let _ = back.join();
    });
    (client, server, h)
}

#[test]
fn a_changed_byte_on_the_wire_fails_authentication() {
    // Greeting (10) + handshake message (2 + 48): byte 200 is in the first
    // transport message, inside the data.
    let (client, server, r) = relay(Some(200));
    let srv = std::thread::spawn(move || {
        let mut l = Link::accept(server, &key(3), "client").unwrap();
        let mut got = Vec::new();
        DataReader::new(&mut l).read_to_end(&mut got).err().map(|e| e.to_string())
    });
    let mut l = Link::connect(client, &key(3), "server").unwrap();
    let mut w = DataWriter::new(&mut l);
    w.write_all(&noise(10_000)).unwrap();
    let _ = w.finish();
    drop(l);
    let e = srv.join().unwrap().expect("the server must refuse the changed message");
    assert!(e.contains("fails authentication"), "{e}");
    r.join().unwrap();

    // Unchanged through the same relay: all arrives.
    let (client, server, r) = relay(None);
    let srv = std::thread::spawn(move || {
        let mut l = Link::accept(server, &key(3), "client").unwrap();
        let mut got = Vec::new();
        DataReader::new(&mut l).read_to_end(&mut got).unwrap();
        got.len()
    });
    let mut l = Link::connect(client, &key(3), "server").unwrap();
    let mut w = DataWriter::new(&mut l);
    w.write_all(&noise(10_000)).unwrap();
    w.finish().unwrap();
    assert_eq!(srv.join().unwrap(), 10_000);
    drop(l);
    r.join().unwrap();
}

#[test]
fn frames_are_bounded_before_their_body_is_read() {
    // A data frame announcing more than MAX_DATA, then nothing: refused
    // from its header alone.
    let mut h = vec![Kind::Data as u8];
    h.extend_from_slice(&(MAX_DATA + 1).to_be_bytes());
    let e = read_frame(&mut &h[..], "test").unwrap_err();
    assert!(e.to_string().contains("at most 1048576 allowed"), "{e}");
    // Control frames are bounded lower; End has no body.
    let mut h = vec![Kind::Offer as u8];
    h.extend_from_slice(&(1u32 << 20).to_be_bytes());
    assert!(read_frame(&mut &h[..], "test").is_err());
    let h = [Kind::End as u8, 0, 0, 0, 1, 0];
    assert!(read_frame(&mut &h[..], "test").is_err());
    // Unknown kinds, cut headers and cut bodies.
    assert!(read_frame(&mut &[99u8, 0, 0, 0, 0][..], "test").unwrap_err().to_string().contains("unknown frame kind"));
    assert!(matches!(read_frame(&mut &[4u8, 0][..], "test"), Err(MigrateError::Closed(_))));
    assert!(matches!(read_frame(&mut &[4u8, 0, 0, 0, 9, 1, 2][..], "test"), Err(MigrateError::Closed(_))));
    assert!(matches!(read_frame(&mut &[][..], "test"), Err(MigrateError::Closed(_))));
    // Nor can one be sent.
    assert!(write_frame(&mut Vec::new(), Kind::Refuse, &vec![b'x'; 65 << 10]).is_err());
}

#[test]
fn a_stream_cut_short_or_aborted_is_never_taken_as_whole() {
    // Data without End, then the connection closes.
    let mut wire = Vec::new();
    write_frame(&mut wire, Kind::Data, b"half of it").unwrap();
    let mut got = Vec::new();
    let e = DataReader::new(&mut &wire[..]).read_to_end(&mut got).unwrap_err();
    assert_eq!(e.kind(), std::io::ErrorKind::UnexpectedEof);
    // An Abort in the middle.
    write_frame(&mut wire, Kind::Abort, b"the source pod ended").unwrap();
    let e = DataReader::new(&mut &wire[..]).read_to_end(&mut Vec::new()).unwrap_err();
    assert!(e.to_string().contains("the peer gave up: the source pod ended"), "{e}");
}

/// Preflight: an offer of a pod that used CPU features this host lacks is
/// refused, in one sentence, before any state moves (nothing is made in
/// the destination's state directory).
#[test]
fn an_offer_needing_cpu_features_this_host_lacks_is_refused_first() {
    use cryopod_migrate::offer::{Mode, Offer};
    let dir = std::env::temp_dir().join(format!("cryopod-preflight-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let state = cryopod_pod::StateDir::new(&dir);
    let (a, b) = pair();
    let server = std::thread::spawn(move || {
        let o = cryopod_migrate::receive::ServeOptions {
            key: &key(9),
            threads: 1,
            timeout: Duration::from_secs(10),
            bridge: None,
            store: None,
        };
        cryopod_migrate::receive::receive(b, "source", &state, &o, &|_, _, _| {})
    });
    let mut cpu = cryopod_engine::cpu::record();
    // Every instruction set there is: none has them all.
    cpu.features.leaf7_ebx = u32::MAX;
    cpu.features.leaf7_ecx = u32::MAX;
    cpu.features.leaf7_edx = u32::MAX;
    let offer = Offer {
        pod: "web".into(),
        mode: Mode::Live,
        ip: None,
        rootfs: None,
        cpu,
        kernel: "6.18.0".into(),
        files: Vec::new(),
    };
    let mut l = Link::connect(a, &key(9), "server").unwrap();
    write_frame(&mut l, Kind::Offer, &offer.encode().unwrap()).unwrap();
    l.flush().unwrap();
    let f = read_frame(&mut l, "waiting for the answer").unwrap();
    assert_eq!(f.kind, Kind::Refuse, "{}", f.text());
    assert!(f.text().contains("CPU"), "{}", f.text());
    let e = server.join().unwrap().unwrap_err();
    assert!(matches!(e, MigrateError::Refused(..)), "{e}");
    let left: Vec<_> = std::fs::read_dir(&dir).unwrap().collect();
    assert!(left.is_empty(), "the destination made {left:?}");
    let _ = std::fs::remove_dir_all(&dir);
}

/// A stream sent and received with the link's work on a second thread on
/// each side arrives whole; one whose producer fails halfway never ends
/// (no `End`), and the receiver says so.
#[test]
fn streams_through_a_second_thread_arrive_whole_or_not_at_all() {
    use cryopod_migrate::pipe::{receive_stream, send_stream};
    let (a, b) = pair();
    let data = noise(5 * MAX_DATA as usize + 77);
    let sent = data.clone();
    let server = std::thread::spawn(move || {
        let mut l = Link::accept(b, &key(5), "client").unwrap();
        let whole = receive_stream(&mut l, |r| {
            let mut got = Vec::new();
            r.read_to_end(&mut got).map_err(|e| MigrateError::io("reading", e))?;
            Ok(got)
        })
        .unwrap();
        assert_eq!(whole, sent);
        let cut = receive_stream(&mut l, |r| {
            let mut got = Vec::new();
            r.read_to_end(&mut got).map_err(|e| MigrateError::io("reading", e))?;
            Ok(got)
        });
        assert!(cut.is_err(), "a stream without End was taken as whole");
    });
    let mut l = Link::connect(a, &key(5), "server").unwrap();
    let n = send_stream(&mut l, |w| w.write_all(&data).map_err(|e| MigrateError::io("writing", e))).unwrap();
    assert_eq!(n, data.len() as u64);
    let failed = send_stream(&mut l, |w| {
        w.write_all(&data[..3 * MAX_DATA as usize]).map_err(|e| MigrateError::io("writing", e))?;
        Err(MigrateError::Protocol("the producer failed".into()))
    });
    assert!(failed.is_err());
    // (The receiver, waiting for more, sees the link close.)
    drop(l);
    server.join().unwrap();
}

#[test]
fn a_list_of_left_pages_crosses_whole_and_a_run_that_does_not_hold_is_refused() {
    use cryopod_engine::lazy::LeftRun;
    use cryopod_migrate::frame::{read_frame, send_frame, DataWriter, Kind};
    use cryopod_migrate::postcopy::{receive_left, send_left};
    let (a, b) = pair();
    let left: Vec<LeftRun> = (0..5000u64)
        .map(|i| LeftRun { pid: 1 + (i % 3) as i32, host: 777, addr: 0x7f00_0000_0000 + i * 0x10000, pages: 16 })
        .collect();
    let sent = left.clone();
    let server = std::thread::spawn(move || {
        let mut l = Link::accept(b, &key(6), "client").unwrap();
        let mut got = Vec::new();
        for _ in 0..4 {
            assert_eq!(read_frame(&mut l, "test").unwrap().kind, Kind::Left);
            let r = receive_left(&mut l).map_err(|e| e.to_string());
            if r.is_err() {
                // (The stream's End, unread behind the run refused.)
                assert_eq!(read_frame(&mut l, "test").unwrap().kind, Kind::End);
            }
            got.push(r);
        }
        got
    });
    let mut l = Link::connect(a, &key(6), "server").unwrap();
    send_left(&mut l, &left).unwrap();
    // Runs that do not hold: no pages, more than a fetch may carry, an
    // address not on a page, one that wraps.
    for (pages, addr) in [(0u32, 0x1000u64), (1000, 0x1000), (1, 0x1001), (16, u64::MAX - 0xfff)] {
        send_frame(&mut l, Kind::Left, &[]).unwrap();
        let mut w = DataWriter::new(&mut l);
        let mut b = Vec::new();
        b.extend_from_slice(&1i32.to_be_bytes());
        b.extend_from_slice(&pages.to_be_bytes());
        b.extend_from_slice(&addr.to_be_bytes());
        std::io::Write::write_all(&mut w, &b).unwrap();
        w.finish().unwrap();
    }
    let got = server.join().unwrap();
    let whole = got[0].as_ref().unwrap();
    // (The source's host PIDs stay at the source.)
    assert_eq!(whole.len(), sent.len());
    assert!(whole
        .iter()
        .zip(&sent)
        .all(|(g, s)| g.pid == s.pid && g.addr == s.addr && g.pages == s.pages && g.host == 0));
    for bad in &got[1..] {
        assert!(bad.as_ref().is_err_and(|e| e.contains("does not hold")), "{bad:?}");
    }
}
