//! The encrypted link between two hosts: a byte stream (`Read` and
//! `Write`) over a TCP connection (or any stream), opened only between
//! hosts that hold the same key file.
//!
//! Opening, on both sides at once:
//!
//! ```text
//!   initiator (migrate)                      responder (serve)
//!   "CRYOPODM" version  ------------------->
//!                       <-------------------  "CRYOPODM" version
//!   (each refuses another version in one sentence)
//!   Noise NNpsk0 -> e     ------------------->  fails unless same key:
//!                                              refused, nothing read
//!                       <-------------------  <- e, ee
//!   fails unless same key
//!   then both: [u16 length][ciphertext] messages, each at most 65535
//!   bytes, each authenticated, in order (a dropped, repeated, reordered
//!   or changed message fails)
//! ```
//!
//! Noise `NNpsk0_25519_ChaChaPoly_BLAKE2s`: the pre-shared key (a subkey
//! of the key file, [`ImageKey::peer_psk`]) is mixed in before the first
//! message, so a peer without it cannot produce a first message that
//! decrypts, nor read our answer; ephemeral X25519 keys give each
//! connection fresh keys (recorded traffic stays secret even if the key
//! file leaks later). Both versions are in the Noise prologue: a peer that
//! lied about its version fails the handshake.

use crate::{MigrateError, Result};
use cryopod_image::ImageKey;
use std::io::{Read, Write};

/// Magic of the clear preamble.
pub const MAGIC: [u8; 8] = *b"CRYOPODM";
/// The link and frame protocol version this cryopod speaks (2: each image
/// stream follows an `Image` frame, so that live rounds can be sent; 3:
/// lazy moves, with `Left`, `Pages`, `Want` and `Filled`; 4: `Holds`,
/// what the destination's store holds, after `Accept`).
pub const VERSION: u16 = 4;
const PATTERN: &str = "Noise_NNpsk0_25519_ChaChaPoly_BLAKE2s";
/// A Noise message's largest size, and its authentication tag.
const MAX_MESSAGE: usize = 65535;
const TAG: usize = 16;
/// Bytes read from the stream at a time.
const READ_BUF: usize = 256 << 10;
/// Plain bytes per message at most.
pub const MAX_PLAIN: usize = MAX_MESSAGE - TAG;

/// An open link over `S`. Writes are buffered into messages of up to
/// [`MAX_PLAIN`] bytes: `flush` sends what is buffered.
pub struct Link<S: Read + Write> {
    /// Read in large pieces (a message's length and body would otherwise
    /// cost a call each).
    io: std::io::BufReader<S>,
    noise: snow::TransportState,
    /// Decrypted bytes not yet read, from `rpos`.
    rbuf: Vec<u8>,
    rpos: usize,
    /// Plain bytes not yet sent.
    wbuf: Vec<u8>,
    /// Scratch for one message on the wire.
    msg: Vec<u8>,
    peer: String,
}

impl<S: Read + Write> Link<S> {
    /// Open a link as the side that connected; `peer` names the other side
    /// in messages.
    pub fn connect(io: S, key: &ImageKey, peer: &str) -> Result<Self> {
        Self::open(io, key, peer, true)
    }

    /// Open a link as the side that accepted the connection.
    pub fn accept(io: S, key: &ImageKey, peer: &str) -> Result<Self> {
        Self::open(io, key, peer, false)
    }

    fn open(mut io: S, key: &ImageKey, peer: &str, initiator: bool) -> Result<Self> {
        let peer = peer.to_string();
        let mut ours = [0u8; 10];
        ours[..8].copy_from_slice(&MAGIC);
        ours[8..].copy_from_slice(&VERSION.to_be_bytes());
        io.write_all(&ours).and_then(|_| io.flush()).map_err(|e| MigrateError::io(format!("greeting {peer}"), e))?;
        let mut theirs = [0u8; 10];
        read_exact(&mut io, &mut theirs, &peer, "before greeting us")?;
        if theirs[..8] != MAGIC {
            return Err(MigrateError::Protocol(format!("{peer} is not a cryopod host (it did not greet as one)")));
        }
        let found = u16::from_be_bytes([theirs[8], theirs[9]]);
        if found != VERSION {
            return Err(MigrateError::Version { found, supported: VERSION });
        }
        let prologue: Vec<u8> = match initiator {
            true => [ours, theirs].concat(),
            false => [theirs, ours].concat(),
        };
        let crypto = |e: snow::Error| MigrateError::Crypto(e.to_string());
        let params: snow::params::NoiseParams = PATTERN.parse().map_err(crypto)?;
        let builder =
            snow::Builder::new(params).psk(0, key.peer_psk()).map_err(crypto)?.prologue(&prologue).map_err(crypto)?;
        let mut hs = match initiator {
            true => builder.build_initiator(),
            false => builder.build_responder(),
        }
        .map_err(crypto)?;
        let mut msg = vec![0u8; MAX_MESSAGE];
        let mut payload = vec![0u8; MAX_MESSAGE];
        let unauthentic = || MigrateError::Unauthenticated(peer.clone());
        if initiator {
            let n = hs.write_message(&[], &mut msg).map_err(crypto)?;
            send_message(&mut io, &msg[..n], &peer)?;
            let got = recv_message(&mut io, &mut msg, &peer, "during the handshake")?.ok_or_else(unauthentic)?;
            hs.read_message(&msg[..got], &mut payload).map_err(|_| unauthentic())?;
        } else {
            let got = recv_message(&mut io, &mut msg, &peer, "during the handshake")?.ok_or_else(unauthentic)?;
            hs.read_message(&msg[..got], &mut payload).map_err(|_| unauthentic())?;
            let n = hs.write_message(&[], &mut msg).map_err(crypto)?;
            send_message(&mut io, &msg[..n], &peer)?;
        }
        let noise = hs.into_transport_mode().map_err(crypto)?;
        // (Room for a message's length before it.)
        msg.resize(MAX_MESSAGE + 2, 0);
        Ok(Link {
            io: std::io::BufReader::with_capacity(READ_BUF, io),
            noise,
            rbuf: Vec::with_capacity(MAX_MESSAGE),
            rpos: 0,
            wbuf: Vec::with_capacity(MAX_PLAIN),
            msg,
            peer,
        })
    }

    /// The other side, as named when opened.
    pub fn peer(&self) -> &str {
        &self.peer
    }

    /// The stream underneath (e.g. to set a timeout on it).
    pub fn get_ref(&self) -> &S {
        self.io.get_ref()
    }

    /// The raw stream, to drop what a peer still sends after we gave up
    /// (see `receive`); nothing read through it is decrypted.
    pub fn get_mut_io(&mut self) -> &mut std::io::BufReader<S> {
        &mut self.io
    }

    /// Has the peer sent something not read yet? (Without waiting.)
    pub fn pending(&self) -> bool
    where
        S: std::os::fd::AsFd,
    {
        if !self.io.buffer().is_empty() || self.rpos < self.rbuf.len() {
            return true;
        }
        let mut p = [rustix::event::PollFd::new(self.io.get_ref(), rustix::event::PollFlags::IN)];
        let zero = rustix::event::Timespec { tv_sec: 0, tv_nsec: 0 };
        matches!(rustix::event::poll(&mut p, Some(&zero)), Ok(n) if n > 0)
    }

    /// Encrypt and send what is buffered as one message.
    fn send_buffered(&mut self) -> std::io::Result<()> {
        if self.wbuf.is_empty() {
            return Ok(());
        }
        let wbuf = std::mem::take(&mut self.wbuf);
        let sent = self.send_message(&wbuf);
        self.wbuf = wbuf;
        self.wbuf.clear();
        sent
    }

    /// Encrypt `plain` (at most `MAX_PLAIN` bytes) and send it as one
    /// message.
    fn send_message(&mut self, plain: &[u8]) -> std::io::Result<()> {
        let n = self
            .noise
            .write_message(plain, &mut self.msg[2..])
            .map_err(|e| std::io::Error::other(format!("encrypting a message: {e}")))?;
        // Length and message in one write (one segment with TCP_NODELAY).
        self.msg[..2].copy_from_slice(&(n as u16).to_be_bytes());
        self.io.get_mut().write_all(&self.msg[..n + 2])
    }
}

impl<S: Read + Write> Write for Link<S> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        // A whole message's worth, nothing buffered: encrypted from where
        // it is (an image stream's megabytes are not copied once more).
        if self.wbuf.is_empty() && buf.len() >= MAX_PLAIN {
            self.send_message(&buf[..MAX_PLAIN])?;
            return Ok(MAX_PLAIN);
        }
        let room = MAX_PLAIN - self.wbuf.len();
        let n = buf.len().min(room);
        self.wbuf.extend_from_slice(&buf[..n]);
        if self.wbuf.len() == MAX_PLAIN {
            self.send_buffered()?;
        }
        Ok(n)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.send_buffered()?;
        self.io.get_mut().flush()
    }
}

impl<S: Read + Write> Read for Link<S> {
    /// Ok(0) only where the peer closed between two messages; a message
    /// that fails authentication is an `InvalidData` error.
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        while self.rpos == self.rbuf.len() {
            let got = match recv_message(&mut self.io, &mut self.msg, &self.peer, "in the middle of a message") {
                Ok(Some(n)) => n,
                Ok(None) => return Ok(0),
                Err(MigrateError::Io { source, .. }) => return Err(source),
                Err(e) => return Err(std::io::Error::new(std::io::ErrorKind::UnexpectedEof, e.to_string())),
            };
            let unauthentic = |_| {
                std::io::Error::new(
                    std::io::ErrorKind::InvalidData,
                    format!("a message from {} fails authentication: it was altered, dropped or replayed", self.peer),
                )
            };
            // Room for all of it: decrypted where it goes, not copied.
            if buf.len() >= got {
                match self.noise.read_message(&self.msg[..got], buf).map_err(unauthentic)? {
                    0 => continue,
                    n => return Ok(n),
                }
            }
            self.rbuf.resize(MAX_MESSAGE, 0);
            let n = self.noise.read_message(&self.msg[..got], &mut self.rbuf).map_err(unauthentic)?;
            self.rbuf.truncate(n);
            self.rpos = 0;
        }
        let n = buf.len().min(self.rbuf.len() - self.rpos);
        buf[..n].copy_from_slice(&self.rbuf[self.rpos..self.rpos + n]);
        self.rpos += n;
        Ok(n)
    }
}

fn send_message<S: Write>(io: &mut S, m: &[u8], peer: &str) -> Result<()> {
    let len = u16::try_from(m.len()).map_err(|_| MigrateError::Protocol("a message too long to send".into()))?;
    io.write_all(&len.to_be_bytes())
        .and_then(|_| io.write_all(m))
        .and_then(|_| io.flush())
        .map_err(|e| MigrateError::io(format!("sending to {peer}"), e))
}

/// The next message into `buf` (its length; at most 65535 by the length
/// field's width); None if the peer closed before its first byte.
fn recv_message<S: Read>(io: &mut S, buf: &mut [u8], peer: &str, when: &str) -> Result<Option<usize>> {
    let mut len = [0u8; 2];
    match io.read(&mut len[..1]) {
        Ok(0) => return Ok(None),
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::Interrupted => return recv_message(io, buf, peer, when),
        Err(e) => return Err(MigrateError::io(format!("receiving from {peer}"), e)),
    }
    read_exact(io, &mut len[1..], peer, when)?;
    let n = usize::from(u16::from_be_bytes(len));
    let dst = buf.get_mut(..n).ok_or_else(|| MigrateError::Protocol("a message longer than its buffer".into()))?;
    read_exact(io, dst, peer, when)?;
    Ok(Some(n))
}

fn read_exact<S: Read>(io: &mut S, buf: &mut [u8], peer: &str, when: &str) -> Result<()> {
    io.read_exact(buf).map_err(|e| match e.kind() {
        std::io::ErrorKind::UnexpectedEof => MigrateError::Closed(format!("({peer}) {when}")),
        _ => MigrateError::io(format!("receiving from {peer}"), e),
    })
}
