//! Fuzz the manifest body decoder and structural validation: the input is
//! wrapped in a valid header (magic, version, length, checksum), so that
//! every input reaches the bincode decoder and `Manifest::validate`.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|body: &[u8]| {
    let img = cryopod_image::seal(body);
    if let Ok(m) = cryopod_image::decode_manifest(&img) {
        let again = cryopod_image::encode_manifest(&m).expect("re-encode");
        assert_eq!(cryopod_image::decode_manifest(&again).expect("re-decode"), m);
    }
});
