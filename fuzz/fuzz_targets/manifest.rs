//! Fuzz the image manifest decoder: any byte string must give a manifest or
//! an error, never a panic, a hang or a huge allocation. Inputs that decode
//! are re-encoded and must decode to the same manifest.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(m) = cryopod_image::decode_manifest(data) {
        let again = cryopod_image::encode_manifest(&m).expect("re-encode");
        assert_eq!(cryopod_image::decode_manifest(&again).expect("re-decode"), m);
    }
});
