//! Fuzz the image stream reader: any byte string must give an image (its
//! files written to a sink) or an error, never a panic, a hang or an
//! allocation by a size the stream claims.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let mut create =
        |_: &str| -> cryopod_image::Result<Box<dyn cryopod_image::stream::Sink>> { Ok(Box::new(std::io::sink())) };
    let _ = cryopod_image::stream::import(&mut &data[..], &mut create);
});
