//! Fuzz the decoding of a stored chunk: any bytes, claimed to be a zstd
//! frame of any length up to a chunk, must decode into exactly that length
//! or give an error, never panic, write past the buffer or allocate by what
//! the frame claims.
#![no_main]

use cryopod_image::{codec, Chunk, Codec};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&pages, stored)) = data.split_first() else { return };
    let len = (u32::from(pages % 16) + 1) * 4096;
    let Ok(n) = u32::try_from(stored.len()) else { return };
    let c = Chunk { hash: [0; 32], pack: 0, offset: 0, len, codec: Codec::Zstd, stored: n };
    let mut out = vec![0u8; len as usize];
    let _ = codec::decode(&c, stored, &mut out);
});
