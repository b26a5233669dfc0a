//! Fuzz what a migration peer can send once the link is open: frames read
//! from any bytes, as control frames and as a data stream, give frames
//! within their kind's bound or an error, never a panic or an allocation
//! larger than a data frame; a destination's store description (`Holds`)
//! decodes into records that each name a listed pack, or is refused.
#![no_main]

use cryopod_migrate::frame::{read_frame, DataReader, Kind, MAX_DATA};
use libfuzzer_sys::fuzz_target;
use std::io::Read;

fuzz_target!(|data: &[u8]| {
    let mut r = data;
    while let Ok(f) = read_frame(&mut r, "fuzz") {
        assert!(f.body.len() <= f.kind.max_len() as usize);
        assert!(f.body.len() <= MAX_DATA as usize);
        assert!(f.kind != Kind::End || f.body.is_empty());
    }
    let mut r = data;
    let mut out = Vec::new();
    let mut d = DataReader::new(&mut r);
    let n = d.read_to_end(&mut out).map(|_| out.len());
    // A stream is whole only after End, and never longer than its input.
    assert!(n.is_err() || d.ended());
    assert!(out.len() <= data.len());
    if let Ok(far) = cryopod_migrate::holds::decode(data) {
        for c in far.known.values() {
            let p = &far.packs[c.pack as usize];
            assert!(c.offset + u64::from(c.stored) <= p.size);
        }
    }
});
