//! Frames: what a link carries. A frame is a kind (one byte), a body
//! length (four bytes, big-endian) and the body. Each kind has its own
//! bound on the length, checked before the body is allocated or read, so
//! a peer cannot make us allocate more than a data frame; an unknown kind
//! ends the link. New kinds get new numbers; a kind's body never changes
//! meaning within a protocol version ([`crate::link::VERSION`]).
//!
//! [`DataWriter`] and [`DataReader`] carry a byte stream (an image stream,
//! see `cryopod_image::stream`) as a run of `Data` frames closed by `End`.

use crate::{MigrateError, Result};
use std::io::{Read, Write};

/// Bytes of a frame header.
pub const HEADER: usize = 5;
/// The largest body of a data frame, and of any other frame.
pub const MAX_DATA: u32 = 1 << 20;
pub const MAX_CONTROL: u32 = 64 << 10;
/// An offer lists the files the pod maps: up to `files::MAX_FILES` paths.
pub const MAX_OFFER: u32 = 1 << 20;

/// Every kind of frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Kind {
    /// What the sender wants (a migration offer: the pod, the mode).
    Offer = 1,
    /// The receiver agrees; the transfer may start.
    Accept = 2,
    /// The receiver will not (the body: one sentence, UTF-8).
    Refuse = 3,
    /// Part of a byte stream.
    Data = 4,
    /// The end of a byte stream (empty body).
    End = 5,
    /// The receiver's outcome: the pod runs there (body: a report).
    Done = 6,
    /// A side gives up (body: why, one sentence); the other undoes what
    /// it made.
    Abort = 7,
    /// The receiver made the pod and holds it, frozen and unattached.
    Ready = 8,
    /// The sender let its copy go (its address answers nothing): the
    /// receiver may let the pod run.
    Commit = 9,
    /// An image stream follows (Data frames up to End); the body says
    /// which (see [`ImageHead`]).
    Image = 10,
    /// Ethernet frames that reached the pod at the source while it was
    /// held, to be delivered to it at the destination (body: each frame
    /// as a u16 length and its bytes).
    Frames = 11,
    /// Ethernet frames the pod sent at the source while it was held (a
    /// locked port dropped them), to be sent on at the destination, on its
    /// bridge (the same body).
    FramesOut = 12,
    /// A lazy move's list of the pages its last image left out follows,
    /// as a stream (Data frames up to End; see `crate::postcopy`).
    Left = 13,
    /// Pages from the source, after the commit of a lazy move (body: the
    /// process as the image names it, where they were, the bytes).
    Pages = 14,
    /// Pages a fault waits on at the destination (body: process, address,
    /// pages; repeated).
    Want = 15,
    /// The destination has every page; the source may end its copy (body:
    /// a report).
    Filled = 16,
    /// What the destination holds already follows, as a stream (Data
    /// frames up to End; empty: nothing; see `crate::holds`).
    Holds = 17,
}

/// Pack `frames` into `Frames` bodies of at most `MAX_CONTROL` bytes.
pub fn pack_frames(frames: &[Vec<u8>]) -> Vec<Vec<u8>> {
    let mut out: Vec<Vec<u8>> = Vec::new();
    for f in frames.iter().filter(|f| f.len() + 2 <= MAX_CONTROL as usize) {
        if out.last().is_none_or(|b| b.len() + 2 + f.len() > MAX_CONTROL as usize) {
            out.push(Vec::new());
        }
        if let Some(b) = out.last_mut() {
            b.extend_from_slice(&(f.len() as u16).to_be_bytes());
            b.extend_from_slice(f);
        }
    }
    out
}

/// The frames of a `Frames` body, appended to `out`.
pub fn unpack_frames(body: &[u8], out: &mut Vec<Vec<u8>>) -> Result<()> {
    let mut rest = body;
    while !rest.is_empty() {
        let (len, tail) = match rest {
            [a, b, tail @ ..] => (usize::from(u16::from_be_bytes([*a, *b])), tail),
            _ => return Err(MigrateError::Protocol("a Frames body cut inside a length".into())),
        };
        let f = tail.get(..len).ok_or_else(|| MigrateError::Protocol("a Frames body cut inside a frame".into()))?;
        out.push(f.to_vec());
        rest = &tail[len..];
    }
    Ok(())
}

/// The body of an `Image` frame: the round it is (0, 1, ...: each round's
/// image is a child of the one before, named `r<round>` on both sides),
/// and whether it is the last, the one to restore.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ImageHead {
    pub round: u32,
    pub last: bool,
}

impl ImageHead {
    pub const LEN: usize = 5;

    pub fn encode(self) -> [u8; Self::LEN] {
        let mut b = [0u8; Self::LEN];
        b[..4].copy_from_slice(&self.round.to_be_bytes());
        b[4] = u8::from(self.last);
        b
    }

    pub fn decode(body: &[u8]) -> Result<ImageHead> {
        match body {
            [a, b, c, d, last @ (0 | 1)] => {
                Ok(ImageHead { round: u32::from_be_bytes([*a, *b, *c, *d]), last: *last == 1 })
            }
            _ => {
                Err(MigrateError::Protocol(format!("an Image frame body of {} bytes that does not decode", body.len())))
            }
        }
    }

    /// The image's directory name.
    pub fn name(self) -> String {
        format!("r{}", self.round)
    }
}

impl Kind {
    fn from_byte(b: u8) -> Option<Kind> {
        Some(match b {
            1 => Kind::Offer,
            2 => Kind::Accept,
            3 => Kind::Refuse,
            4 => Kind::Data,
            5 => Kind::End,
            6 => Kind::Done,
            7 => Kind::Abort,
            8 => Kind::Ready,
            9 => Kind::Commit,
            10 => Kind::Image,
            11 => Kind::Frames,
            12 => Kind::FramesOut,
            13 => Kind::Left,
            14 => Kind::Pages,
            15 => Kind::Want,
            16 => Kind::Filled,
            17 => Kind::Holds,
            _ => return None,
        })
    }

    /// The largest body a frame of this kind may have.
    pub fn max_len(self) -> u32 {
        match self {
            Kind::Data | Kind::Pages => MAX_DATA,
            Kind::Offer => MAX_OFFER,
            Kind::End | Kind::Commit | Kind::Left | Kind::Holds => 0,
            Kind::Image => ImageHead::LEN as u32,
            _ => MAX_CONTROL,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Frame {
    pub kind: Kind,
    pub body: Vec<u8>,
}

impl Frame {
    pub fn new(kind: Kind, body: impl Into<Vec<u8>>) -> Frame {
        Frame { kind, body: body.into() }
    }

    /// The body as one sentence (Refuse, Abort, Done), bounded and lossy
    /// for bytes that are not UTF-8.
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

/// Write one frame (not flushed).
pub fn write_frame<W: Write>(w: &mut W, kind: Kind, body: &[u8]) -> Result<()> {
    let len = u32::try_from(body.len()).ok().filter(|&l| l <= kind.max_len()).ok_or_else(|| {
        MigrateError::Protocol(format!("a {kind:?} frame of {} bytes is too long to send", body.len()))
    })?;
    let mut h = [0u8; HEADER];
    h[0] = kind as u8;
    h[1..].copy_from_slice(&len.to_be_bytes());
    w.write_all(&h).and_then(|_| w.write_all(body)).map_err(|e| MigrateError::io("sending a frame", e))
}

/// Write one frame and send it at once (flushed).
pub fn send_frame<W: Write>(w: &mut W, kind: Kind, body: &[u8]) -> Result<()> {
    write_frame(w, kind, body)?;
    w.flush().map_err(|e| MigrateError::io("sending a frame", e))
}

/// Tell the peer we give up and why (an `Abort` frame), if it still
/// listens: errors are ignored, since the link may be what failed.
pub fn give_up<W: Write>(w: &mut W, why: &str) {
    let _ = send_frame(w, Kind::Abort, why.as_bytes());
}

/// Read the next frame; `Closed` if the stream ended before its first byte
/// (`when` says at which point of the exchange).
pub fn read_frame<R: Read>(r: &mut R, when: &str) -> Result<Frame> {
    let mut h = [0u8; HEADER];
    let mut got = 0;
    while got < HEADER {
        match r.read(&mut h[got..]) {
            Ok(0) if got == 0 => return Err(MigrateError::Closed(when.to_string())),
            Ok(0) => return Err(MigrateError::Closed(format!("in the middle of a frame header, {when}"))),
            Ok(n) => got += n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(MigrateError::io(format!("receiving a frame {when}"), e)),
        }
    }
    let kind = Kind::from_byte(h[0]).ok_or_else(|| MigrateError::Protocol(format!("unknown frame kind {}", h[0])))?;
    let len = u32::from_be_bytes([h[1], h[2], h[3], h[4]]);
    if len > kind.max_len() {
        return Err(MigrateError::Protocol(format!(
            "a {kind:?} frame of {len} bytes (at most {} allowed)",
            kind.max_len()
        )));
    }
    // Bounded above: at most MAX_DATA.
    let mut body = vec![0u8; len as usize];
    r.read_exact(&mut body).map_err(|e| match e.kind() {
        std::io::ErrorKind::UnexpectedEof => MigrateError::Closed(format!("in the middle of a {kind:?} frame, {when}")),
        _ => MigrateError::io(format!("receiving a {kind:?} frame {when}"), e),
    })?;
    Ok(Frame { kind, body })
}

/// A byte stream sent as `Data` frames; [`finish`](DataWriter::finish)
/// sends `End`. Dropped unfinished, the receiver sees no `End`: the stream
/// is incomplete, never mistaken for a whole one.
pub struct DataWriter<'a, W: Write> {
    w: &'a mut W,
    buf: Vec<u8>,
    sent: u64,
}

impl<'a, W: Write> DataWriter<'a, W> {
    pub fn new(w: &'a mut W) -> Self {
        DataWriter { w, buf: Vec::with_capacity(MAX_DATA as usize), sent: 0 }
    }

    fn send(&mut self) -> std::io::Result<()> {
        if !self.buf.is_empty() {
            write_frame(self.w, Kind::Data, &self.buf).map_err(std::io::Error::other)?;
            self.sent += self.buf.len() as u64;
            self.buf.clear();
        }
        Ok(())
    }

    /// Send `body` (at most `MAX_DATA` bytes) as one `Data` frame, after
    /// what is buffered: a whole buffer is not copied again.
    pub fn write_body(&mut self, body: &[u8]) -> std::io::Result<()> {
        self.send()?;
        if !body.is_empty() {
            write_frame(self.w, Kind::Data, body).map_err(std::io::Error::other)?;
            self.sent += body.len() as u64;
        }
        Ok(())
    }

    /// Send the rest and `End`, flushed; returns the bytes carried.
    pub fn finish(mut self) -> Result<u64> {
        self.send().map_err(|e| MigrateError::io("sending data", e))?;
        write_frame(self.w, Kind::End, &[])?;
        self.w.flush().map_err(|e| MigrateError::io("sending data", e))?;
        Ok(self.sent)
    }
}

impl<W: Write> Write for DataWriter<'_, W> {
    fn write(&mut self, data: &[u8]) -> std::io::Result<usize> {
        let n = data.len().min(MAX_DATA as usize - self.buf.len());
        self.buf.extend_from_slice(&data[..n]);
        if self.buf.len() == MAX_DATA as usize {
            self.send()?;
        }
        Ok(n)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.send()?;
        self.w.flush()
    }
}

/// The byte stream of `Data` frames up to `End`: reads return 0 only after
/// `End`. Any other frame in between (an `Abort`) is an error naming it.
pub struct DataReader<'a, R: Read> {
    r: &'a mut R,
    frame: Vec<u8>,
    pos: usize,
    ended: bool,
    received: u64,
    aborted: Option<String>,
}

impl<'a, R: Read> DataReader<'a, R> {
    pub fn new(r: &'a mut R) -> Self {
        DataReader { r, frame: Vec::new(), pos: 0, ended: false, received: 0, aborted: None }
    }

    /// The peer's reason, if it gave up (an `Abort`) inside the stream.
    pub fn aborted(&self) -> Option<&str> {
        self.aborted.as_deref()
    }

    /// Whether `End` came (all of the stream was read).
    pub fn ended(&self) -> bool {
        self.ended
    }

    pub fn received(&self) -> u64 {
        self.received
    }
}

impl<R: Read> DataReader<'_, R> {
    /// The next `Data` frame's body, whole (what `read` has not taken of
    /// the current one first); None once `End` came.
    pub fn next_body(&mut self) -> std::io::Result<Option<Vec<u8>>> {
        if self.pos < self.frame.len() {
            let rest = self.frame.split_off(self.pos);
            self.frame.clear();
            self.pos = 0;
            return Ok(Some(rest));
        }
        self.fill()?;
        match self.ended {
            true => Ok(None),
            false => {
                self.pos = 0;
                Ok(Some(std::mem::take(&mut self.frame)))
            }
        }
    }

    /// Read frames until one with data, or `End`.
    fn fill(&mut self) -> std::io::Result<()> {
        while self.pos == self.frame.len() {
            if self.ended {
                return Ok(());
            }
            let f = read_frame(self.r, "in the middle of a data stream").map_err(|e| match e {
                MigrateError::Closed(_) => std::io::Error::new(std::io::ErrorKind::UnexpectedEof, e.to_string()),
                // The cause's words too (an io error's own message is its
                // source's, which a plain to_string would drop).
                MigrateError::Io { what, source } => std::io::Error::new(source.kind(), format!("{what}: {source}")),
                e => std::io::Error::other(e.to_string()),
            })?;
            match f.kind {
                Kind::Data => {
                    self.received += f.body.len() as u64;
                    self.frame = f.body;
                    self.pos = 0;
                }
                Kind::End => self.ended = true,
                Kind::Abort => {
                    let why = f.text();
                    let e = std::io::Error::other(format!("the peer gave up: {why}"));
                    self.aborted = Some(why);
                    return Err(e);
                }
                k => return Err(std::io::Error::other(format!("protocol error: a {k:?} frame inside a data stream"))),
            }
        }
        Ok(())
    }
}

impl<R: Read> Read for DataReader<'_, R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        self.fill()?;
        if self.ended && self.pos == self.frame.len() {
            return Ok(0);
        }
        let n = buf.len().min(self.frame.len() - self.pos);
        buf[..n].copy_from_slice(&self.frame[self.pos..self.pos + n]);
        self.pos += n;
        Ok(n)
    }
}
