//! Fuzz the manifest body decoder and structural validation: the input is
//! wrapped in a valid header (magic, version, length, checksum), so that
//! every input reaches the bincode decoder and `Manifest::validate`.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|body: &[u8]| {
    let mut img = Vec::with_capacity(body.len() + 56);
    img.extend_from_slice(b"CRYOPOD\0");
    img.extend_from_slice(&1u32.to_le_bytes());
    img.extend_from_slice(&0u32.to_le_bytes());
    img.extend_from_slice(&(body.len() as u64).to_le_bytes());
    img.extend_from_slice(blake3::hash(body).as_bytes());
    img.extend_from_slice(body);
    if let Ok(m) = cryopod_image::decode_manifest(&img) {
        let again = cryopod_image::encode_manifest(&m).expect("re-encode");
        assert_eq!(cryopod_image::decode_manifest(&again).expect("re-decode"), m);
    }
});
