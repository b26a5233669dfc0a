//! Memory that compresses and memory that does not: 48 MiB of text-like
//! bytes (words from a small vocabulary) and 16 MiB of noise, each with its
//! checksum; after the restore both must be exactly as they were.

use cryopod_testprogs::*;

const MB: usize = 1 << 20;

fn sum(b: &[u8]) -> u64 {
    b.chunks(8).fold(0xcbf2_9ce4_8422_2325u64, |h, c| {
        let mut w = [0u8; 8];
        w[..c.len()].copy_from_slice(c);
        (h ^ u64::from_le_bytes(w)).wrapping_mul(0x100_0000_01b3)
    })
}

fn main() {
    let dir = work_dir();
    let words: [&[u8]; 10] =
        [b"checkpoint ", b"restore ", b"pod ", b"memory ", b"page ", b"chunk ", b"migrate ", b"the ", b"of ", b"a "];
    let mut text = Vec::with_capacity(48 * MB);
    let mut x = 7u64;
    while text.len() < 48 * MB {
        x = x.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        text.extend_from_slice(words[(x >> 60) as usize % words.len()]);
    }
    text.truncate(48 * MB);
    let mut y = 0x9e37_79b9_7f4a_7c15u64;
    let noise: Vec<u8> = (0..16 * MB)
        .map(|_| {
            y ^= y << 13;
            y ^= y >> 7;
            y ^= y << 17;
            y as u8
        })
        .collect();
    let (t0, n0) = (sum(&text), sum(&noise));
    ready_and_wait(&dir);
    let mut c = Checks::new();
    c.eq("text memory", sum(&text), t0);
    c.eq("noise memory", sum(&noise), n0);
    c.finish();
}
