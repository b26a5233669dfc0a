//! Fuzz the decoding of a store's pack index: any bytes must give a valid
//! index (every entry inside its pack, sizes matching its codec) or an
//! error, never a panic or an allocation sized by what the bytes claim.
#![no_main]

use cryopod_image::shared::{decode_index, encode_index};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(ix) = decode_index(data, "fuzz") {
        // Whatever is accepted encodes back to bytes that decode the same.
        let again = encode_index(&ix).ok().and_then(|b| decode_index(&b, "fuzz").ok());
        assert_eq!(again.as_ref(), Some(&ix));
    }
});
