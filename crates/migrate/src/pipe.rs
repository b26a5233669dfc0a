//! A byte stream over a link with the link's own work on a second thread:
//! the image stream is read, hashed and checked on one core while its
//! frames are encrypted and sent (or received and decrypted) on another.
//! One thread did both, one after the other, and a move's stop waited on
//! the sum.
//!
//! The framing itself is [`DataWriter`]'s and [`DataReader`]'s: only
//! whole streams end with `End` (a producer that fails leaves the stream
//! without it, and the receiver then never takes it as whole), and a
//! consumer is told of the end only once `End` came.

use crate::frame::{DataReader, DataWriter, MAX_DATA};
use crate::{MigrateError, Result};
use std::io::{Read, Write};
use std::sync::mpsc::{sync_channel, Receiver, SyncSender};

/// Buffers of up to `MAX_DATA` bytes in flight between the threads.
const DEPTH: usize = 4;

enum Piece {
    Data(Vec<u8>),
    End,
}

/// Send what `produce` writes as `Data` frames, then `End` if it
/// succeeded; returns the bytes carried.
pub fn send_stream<L: Write + Send>(link: &mut L, produce: impl FnOnce(&mut dyn Write) -> Result<()>) -> Result<u64> {
    std::thread::scope(|s| {
        let (tx, rx) = sync_channel::<Piece>(DEPTH);
        let sender = s.spawn(move || -> Result<u64> {
            let mut w = DataWriter::new(link);
            for p in rx {
                match p {
                    Piece::Data(b) => w.write_body(&b).map_err(|e| MigrateError::io("sending data", e))?,
                    Piece::End => return w.finish(),
                }
            }
            // Given up before its end: dropped unfinished, no End goes out.
            Ok(0)
        });
        let mut w = ChannelWriter { tx, buf: Vec::with_capacity(MAX_DATA as usize) };
        let produced = produce(&mut w).and_then(|_| w.end());
        drop(w);
        let sent = sender.join().unwrap_or_else(|_| Err(MigrateError::Protocol("the sending thread panicked".into())));
        match (produced, sent) {
            (Ok(()), Ok(n)) => Ok(n),
            // The link stopped first: its error is the cause.
            (_, Err(e)) => Err(e),
            (Err(e), Ok(_)) => Err(e),
        }
    })
}

struct ChannelWriter {
    tx: SyncSender<Piece>,
    buf: Vec<u8>,
}

impl ChannelWriter {
    fn pass(&mut self, piece: Piece) -> std::io::Result<()> {
        self.tx
            .send(piece)
            .map_err(|_| std::io::Error::new(std::io::ErrorKind::BrokenPipe, "the link stopped taking data"))
    }

    fn end(&mut self) -> Result<()> {
        self.flush().and_then(|_| self.pass(Piece::End)).map_err(|e| MigrateError::io("sending data", e))
    }
}

impl Write for ChannelWriter {
    fn write(&mut self, data: &[u8]) -> std::io::Result<usize> {
        let n = data.len().min(MAX_DATA as usize - self.buf.len());
        self.buf.extend_from_slice(&data[..n]);
        if self.buf.len() == MAX_DATA as usize {
            self.flush()?;
        }
        Ok(n)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        if self.buf.is_empty() {
            return Ok(());
        }
        let full = std::mem::replace(&mut self.buf, Vec::with_capacity(MAX_DATA as usize));
        self.pass(Piece::Data(full))
    }
}

/// Give `consume` the byte stream of `Data` frames up to `End`; its result
/// once the stream was whole (`End` came).
pub fn receive_stream<L: Read + Send, T>(link: &mut L, consume: impl FnOnce(&mut dyn Read) -> Result<T>) -> Result<T> {
    std::thread::scope(|s| {
        let (tx, rx) = sync_channel::<std::result::Result<Piece, String>>(DEPTH);
        let reader = s.spawn(move || -> Result<()> {
            let mut d = DataReader::new(link);
            loop {
                // (Each frame's body as it came: not copied again.)
                let piece = match d.next_body() {
                    Ok(None) => Piece::End,
                    Ok(Some(b)) => Piece::Data(b),
                    Err(e) => {
                        let _ = tx.send(Err(e.to_string()));
                        return Err(match d.aborted() {
                            Some(why) => MigrateError::Aborted("the source".into(), why.to_string()),
                            None => MigrateError::io("receiving a data stream", e),
                        });
                    }
                };
                let end = matches!(piece, Piece::End);
                // (The consumer stopped: so do we.)
                if tx.send(Ok(piece)).is_err() || end {
                    return Ok(());
                }
            }
        });
        let mut r = ChannelReader { rx, cur: Vec::new(), pos: 0, ended: false };
        let res = consume(&mut r);
        let ended = r.ended;
        drop(r);
        let read =
            reader.join().unwrap_or_else(|_| Err(MigrateError::Protocol("the receiving thread panicked".into())));
        match (res, read) {
            (Ok(t), Ok(())) if ended => Ok(t),
            (Ok(_), Ok(())) => Err(MigrateError::Closed("before the end of a data stream".into())),
            // The link's own error is the cause.
            (_, Err(e)) => Err(e),
            (Err(e), Ok(())) => Err(e),
        }
    })
}

struct ChannelReader {
    rx: Receiver<std::result::Result<Piece, String>>,
    cur: Vec<u8>,
    pos: usize,
    ended: bool,
}

impl Read for ChannelReader {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        while self.pos == self.cur.len() {
            if self.ended {
                return Ok(0);
            }
            match self.rx.recv() {
                Ok(Ok(Piece::Data(b))) => {
                    self.cur = b;
                    self.pos = 0;
                }
                Ok(Ok(Piece::End)) => self.ended = true,
                Ok(Err(why)) => return Err(std::io::Error::other(why)),
                Err(_) => {
                    return Err(std::io::Error::new(std::io::ErrorKind::UnexpectedEof, "the data stream was cut short"))
                }
            }
        }
        let n = buf.len().min(self.cur.len() - self.pos);
        buf[..n].copy_from_slice(&self.cur[self.pos..self.pos + n]);
        self.pos += n;
        Ok(n)
    }
}
