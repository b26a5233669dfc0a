//! What the destination already holds: right after `Accept`, a host that
//! serves with a chunk store (`cryopod serve --store DIR`) describes it
//! (`Holds`, then the description as a stream; an empty stream: no
//! store). The source's checkpoints then name those chunks instead of
//! sending them (`cryopod_image::chain::FarStore`); the destination reads
//! them from its store, checking each one's hash, and holds the store's
//! lock (shared) from its description until the pod's memory is all in,
//! so that its gc frees none of them meanwhile.
//!
//! The description is the store's path and identity, its packs, and a
//! record per plain chunk (sealed chunks never match a migration's: their
//! hashes are keyed): about 60 bytes a chunk, bounded by [`MAX_BYTES`].

use crate::frame::{read_frame, send_frame, DataReader, DataWriter, Kind};
use crate::link::Link;
use crate::{MigrateError, Result};
use bincode::Options;
use cryopod_image::chain::FarStore;
use cryopod_image::shared::Store;
use cryopod_image::store::DigestMap;
use cryopod_image::{chunk_len_ok, Chunk, Pack, PackHome};
use serde::{Deserialize, Serialize};
use std::io::{Read, Write};
use std::net::TcpStream;

/// Bytes of a store's description at most (about 4 million chunks:
/// 256 GiB of memory held).
pub const MAX_BYTES: u64 = 256 << 20;
/// Packs in it at most.
const MAX_PACKS: usize = 1 << 20;

/// The description as it goes on the link.
#[derive(Serialize, Deserialize)]
struct Described {
    path: String,
    store_id: [u8; 16],
    /// Name and size of each pack.
    packs: Vec<(String, u64)>,
    /// `pack` indexes `packs`.
    chunks: Vec<Chunk>,
}

fn options() -> impl Options {
    bincode::DefaultOptions::new()
        .with_fixint_encoding()
        .with_little_endian()
        .with_limit(MAX_BYTES)
        .reject_trailing_bytes()
}

/// Describe `store` to the source (`Holds`, then the stream; `None`: an
/// empty one). Returns the chunks described.
pub fn send_holds(link: &mut Link<TcpStream>, store: Option<&Store>) -> Result<usize> {
    let mut n = 0;
    let body = match store {
        None => Vec::new(),
        Some(s) => {
            let (packs, known) = s.known()?;
            let chunks: Vec<Chunk> = known.into_values().filter(|c| !c.codec.is_sealed()).collect();
            n = chunks.len();
            let d = Described {
                path: s.path().to_str().map(str::to_string).ok_or_else(|| {
                    MigrateError::Protocol(format!("the store path {} is not UTF-8", s.path().display()))
                })?,
                store_id: s.id(),
                packs: packs.into_iter().map(|p| (p.name, p.size)).collect(),
                chunks,
            };
            options()
                .serialize(&d)
                .map_err(|e| MigrateError::Protocol(format!("describing the store {}: {e}", s.path().display())))?
        }
    };
    send_frame(link, Kind::Holds, &[])?;
    let mut w = DataWriter::new(link);
    w.write_all(&body).map_err(|e| MigrateError::io("describing the store", e))?;
    w.finish()?;
    Ok(n)
}

/// Read what the destination holds (`Holds` and its stream), each record
/// checked; `None` if it has no store.
pub fn receive_holds(link: &mut Link<TcpStream>) -> Result<Option<FarStore>> {
    let f = read_frame(link, "while waiting for what the destination holds")?;
    match f.kind {
        Kind::Holds => {}
        Kind::Abort => return Err(MigrateError::Aborted("the destination".into(), f.text())),
        k => return Err(MigrateError::Protocol(format!("a {k:?} frame where Holds was due"))),
    }
    let mut body = Vec::new();
    DataReader::new(link)
        .take(MAX_BYTES + 1)
        .read_to_end(&mut body)
        .map_err(|e| MigrateError::io("receiving what the destination holds", e))?;
    // (Within the bound, the read stopped at the stream's End.)
    if body.len() as u64 > MAX_BYTES {
        return Err(MigrateError::Protocol(format!("a store description over {MAX_BYTES} bytes")));
    }
    match body.is_empty() {
        true => Ok(None),
        false => decode(&body).map(Some),
    }
}

/// A description, checked as the destination's own store checks its index
/// (`shared::pack_name_ok`, `chunk_len_ok`, `Codec::stored_ok`): an
/// absolute path, plain pack names, each chunk within a listed pack, of 1
/// to 16 whole pages, stored plain.
pub fn decode(body: &[u8]) -> Result<FarStore> {
    let bad = |what: String| MigrateError::Protocol(format!("the destination's store description: {what}"));
    let d: Described = options().deserialize(body).map_err(|e| bad(format!("it does not decode ({e})")))?;
    if !d.path.starts_with('/') || d.path.contains('\0') {
        return Err(bad(format!("{:?} is not an absolute path", d.path)));
    }
    if d.packs.len() > MAX_PACKS {
        return Err(bad(format!("{} packs (at most {MAX_PACKS})", d.packs.len())));
    }
    let mut packs = Vec::with_capacity(d.packs.len());
    for (name, size) in d.packs {
        if !cryopod_image::shared::pack_name_ok(&name) {
            return Err(bad(format!("{name:?} is not a pack name")));
        }
        packs.push(Pack { name, size, home: PackHome::Store });
    }
    let mut known: DigestMap<Chunk> = DigestMap::default();
    known.reserve(d.chunks.len());
    for c in d.chunks {
        let fits = packs
            .get(c.pack as usize)
            .is_some_and(|p| c.offset.checked_add(u64::from(c.stored)).is_some_and(|e| e <= p.size));
        if !fits || !chunk_len_ok(c.len) || c.codec.is_sealed() || !c.codec.stored_ok(c.len, c.stored) {
            return Err(bad(format!("a chunk record that does not hold ({c:?})")));
        }
        known.insert(c.hash, c);
    }
    Ok(FarStore { path: d.path, store_id: d.store_id, packs, known: std::sync::Arc::new(known) })
}

#[cfg(test)]
mod tests {
    use super::*;
    use cryopod_image::Codec;

    fn described(chunks: Vec<Chunk>) -> Vec<u8> {
        let d = Described {
            path: "/var/lib/store".into(),
            store_id: [7; 16],
            packs: vec![("a-1.pack".into(), 1 << 20)],
            chunks,
        };
        options().serialize(&d).unwrap()
    }

    fn chunk(pack: u32, offset: u64, codec: Codec) -> Chunk {
        Chunk { hash: [(offset >> 12) as u8; 32], pack, offset, len: 4096, codec, stored: 4096 }
    }

    #[test]
    fn a_description_round_trips() {
        let far = decode(&described(vec![chunk(0, 0, Codec::Raw), chunk(0, 4096, Codec::Raw)])).unwrap();
        assert_eq!(far.path, "/var/lib/store");
        assert_eq!(far.packs.len(), 1);
        assert_eq!(far.packs[0].home, PackHome::Store);
        assert_eq!(far.known.len(), 2);
    }

    #[test]
    fn records_that_do_not_hold_are_refused() {
        for bad in [
            chunk(1, 0, Codec::Raw),
            chunk(0, (1 << 20) - 100, Codec::Raw),
            chunk(0, u64::MAX - 10, Codec::Raw),
            chunk(0, 0, Codec::SealedRaw),
            Chunk { len: 100, ..chunk(0, 0, Codec::Raw) },
            Chunk { len: 0, stored: 0, ..chunk(0, 0, Codec::Raw) },
        ] {
            assert!(decode(&described(vec![bad.clone()])).is_err(), "{bad:?} was taken");
        }
        let mut b = described(vec![]);
        b.push(0);
        assert!(decode(&b).is_err(), "trailing bytes were taken");
        assert!(decode(&b[..b.len() - 3]).is_err(), "a cut description was taken");
        let d = Described { path: "relative".into(), store_id: [0; 16], packs: vec![], chunks: vec![] };
        assert!(decode(&options().serialize(&d).unwrap()).is_err(), "a relative path was taken");
        let d = Described { path: "/s".into(), store_id: [0; 16], packs: vec![("../x".into(), 1)], chunks: vec![] };
        assert!(decode(&options().serialize(&d).unwrap()).is_err(), "a pack name with a slash was taken");
    }
}
