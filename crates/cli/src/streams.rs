//! Images as one stream: `export` and `import`, and the `-` of `checkpoint
//! -o -` and `restore -`, which go through a private temporary image
//! directory (an image is read at random while restored, and its manifest
//! is known only once the checkpoint ends; see `cryopod_image::stream`).

use anyhow::{Context, Result};
use std::path::{Path, PathBuf};

pub fn is_stdio(p: &Path) -> bool {
    p.as_os_str() == "-"
}

/// A private directory for an image on its way to or from a stream,
/// removed with everything in it when dropped.
pub struct TempImage {
    root: PathBuf,
}

impl TempImage {
    /// A new, not yet existing, path inside a fresh directory of mode 0700.
    pub fn new() -> Result<TempImage> {
        use std::os::unix::fs::DirBuilderExt;
        let nanos =
            std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_nanos()).unwrap_or(0);
        let root = std::env::temp_dir().join(format!("cryopod-stream-{}-{nanos}", std::process::id()));
        std::fs::DirBuilder::new().mode(0o700).create(&root).with_context(|| format!("creating {}", root.display()))?;
        Ok(TempImage { root })
    }

    pub fn image(&self) -> PathBuf {
        self.root.join("image")
    }

    /// Keep the directory (an image that could not be streamed and exists
    /// nowhere else); returns the image's path.
    pub fn keep(self) -> PathBuf {
        let path = self.image();
        std::mem::forget(self);
        path
    }
}

impl Drop for TempImage {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.root);
    }
}

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
    let out = cryopod_engine::outdir::OutDir::prepare(dir)?;
    let mut create = |name: &str| -> cryopod_image::Result<Box<dyn cryopod_image::stream::Sink>> {
        out.create(name)
            .map(|f| Box::new(f) as Box<dyn cryopod_image::stream::Sink>)
            .map_err(|e| cryopod_image::ImageError::Unsafe(format!("cannot create {name}: {e}")))
    };
    let m = if is_stdio(input) {
        let mut r = std::io::BufReader::with_capacity(1 << 20, std::io::stdin().lock());
        cryopod_image::stream::import(&mut r, &mut create)
    } else {
        let f = std::fs::File::open(input).with_context(|| format!("opening {what}"))?;
        let mut r = std::io::BufReader::with_capacity(1 << 20, f);
        cryopod_image::stream::import(&mut r, &mut create)
    }
    .with_context(|| format!("cannot import the image stream from {what}"))?;
    out.commit_manifest_bytes(&m.manifest_bytes)?;
    Ok(m)
}
