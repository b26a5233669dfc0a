//! Images as one stream: `export` and `import`, and the `-` of `checkpoint
//! -o -` and `restore -`, which go through a private temporary image
//! directory (an image is read at random while restored, and its manifest
//! is known only once the checkpoint ends; see `cryopod_image::stream`).

use anyhow::{Context, Result};
use std::path::Path;

pub fn is_stdio(p: &Path) -> bool {
    p.as_os_str() == "-"
}

pub use cryopod_engine::outdir::TempImage;

/// Write image `dir` to `out` (a new file, or `-` for stdout).
pub fn export(dir: &Path, out: &Path) -> Result<u64> {
    let img = cryopod_image::ImageDir::open(dir).with_context(|| format!("cannot export {}", dir.display()))?;
    let n = if is_stdio(out) {
        let mut w = std::io::BufWriter::with_capacity(1 << 20, std::io::stdout().lock());
        cryopod_image::stream::export(&img, &mut w)
    } else {
        use std::os::unix::fs::OpenOptionsExt;
        let f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(out)
            .with_context(|| format!("creating {}", out.display()))?;
        let mut w = std::io::BufWriter::with_capacity(1 << 20, f);
        let n = cryopod_image::stream::export(&img, &mut w);
        if n.is_err() {
            let _ = std::fs::remove_file(out);
        }
        n
    };
    n.with_context(|| format!("cannot export {}", dir.display()))
}

/// Read a stream from `input` (a file, or `-` for stdin) into the new image
/// directory `dir`, checked as it comes: on any failure nothing is left. A
/// sealed image comes as it is (its key opens it later).
pub fn import(input: &Path, dir: &Path) -> Result<cryopod_image::stream::Imported> {
    let what = if is_stdio(input) { "standard input".to_string() } else { input.display().to_string() };
    let m = if is_stdio(input) {
        let mut r = std::io::BufReader::with_capacity(1 << 20, std::io::stdin().lock());
        cryopod_engine::outdir::import_stream(dir, &mut r)
    } else {
        let f = std::fs::File::open(input).with_context(|| format!("opening {what}"))?;
        let mut r = std::io::BufReader::with_capacity(1 << 20, f);
        cryopod_engine::outdir::import_stream(dir, &mut r)
    };
    m.with_context(|| format!("cannot import the image stream from {what}"))
}
