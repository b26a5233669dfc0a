//! Fuzz opening sealed things with a key: a sealed manifest (the input is
//! framed with a valid header, sealed flag and checksum, so that it reaches
//! the key identifier, the outline and the authentication), a sealed page
//! chunk of 1 to 16 pages (either codec), and a sealed file. Any bytes
//! must give an error or what was sealed, never a panic, a hang or an
//! allocation by a length the bytes claim.
#![no_main]

use cryopod_image::codec::Decoder;
use cryopod_image::{manifest, Chunk, Codec, ImageKey};
use libfuzzer_sys::fuzz_target;
use std::sync::{Arc, OnceLock};

fn key() -> &'static Arc<ImageKey> {
    static KEY: OnceLock<Arc<ImageKey>> = OnceLock::new();
    KEY.get_or_init(|| Arc::new(ImageKey::from_bytes(&[7; 32])))
}

/// `body` behind a header that says "sealed", with its checksum.
fn framed(body: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(56 + body.len());
    out.extend_from_slice(&manifest::MAGIC);
    out.extend_from_slice(&manifest::FORMAT_VERSION.to_le_bytes());
    out.extend_from_slice(&manifest::FLAG_SEALED.to_le_bytes());
    out.extend_from_slice(&(body.len() as u64).to_le_bytes());
    out.extend_from_slice(blake3::hash(body).as_bytes());
    out.extend_from_slice(body);
    out
}

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else { return };
    match mode % 3 {
        0 => {
            let bytes = framed(rest);
            // (Forging a seal is not expected of a fuzzer: this never
            // opens, but must fail cleanly at every step.)
            let _ = cryopod_image::decode_manifest_keyed(&bytes, Some(key()));
            let _ = cryopod_image::decode_manifest(&bytes);
            let _ = manifest::outline(&bytes);
            let _ = cryopod_image::decode_manifest_keyed(rest, Some(key()));
        }
        1 => {
            let Some((&pages, stored)) = rest.split_first() else { return };
            let len = (u32::from(pages % 16) + 1) * 4096;
            let codec = if pages & 0x80 != 0 { Codec::SealedZstd } else { Codec::SealedRaw };
            let Ok(n) = u32::try_from(stored.len()) else { return };
            let c = Chunk { hash: [0; 32], pack: 0, offset: 0, len, codec, stored: n };
            let mut out = vec![0u8; len as usize];
            if let Ok(mut d) = Decoder::with_key(Some(key().clone())) {
                let _ = d.decode(&c, stored, &mut out);
            }
        }
        _ => {
            let _ = key().open_bytes("tmpfs.tar", rest);
        }
    }
});
