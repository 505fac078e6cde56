//! Atomic file output: write to a temporary file beside the target, then
//! rename it into place, so readers see either the old file or the whole
//! new one.

use std::path::Path;

use tempfile::NamedTempFile;

use crate::error::{Error, Result};

/// Creates a temporary file in the directory of `path`, readable by
/// everyone (mode 0644 on Unix) like an ordinary new file.
pub fn temp_file_for(path: &Path) -> Result<NamedTempFile> {
    let dir = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    let mut builder = tempfile::Builder::new();
    builder.prefix(".gato-").suffix(".tmp");
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        builder.permissions(std::fs::Permissions::from_mode(0o644));
    }
    let temp = builder
        .tempfile_in(dir)
        .map_err(|e| Error::output(dir, format!("cannot create a temporary file: {e}")))?;
    crate::interrupt::track(temp.path());
    Ok(temp)
}

/// Renames a finished temporary file to `path`.
pub fn persist(temp: NamedTempFile, path: &Path) -> Result<()> {
    crate::interrupt::untrack(temp.path());
    temp.persist(path)
        .map(|_| ())
        .map_err(|e| Error::output(path, format!("cannot rename into place: {e}")))
}

/// Writes `bytes` to `path` atomically.
pub fn write(path: &Path, bytes: &[u8]) -> Result<()> {
    use std::io::Write;
    let mut temp = temp_file_for(path)?;
    temp.write_all(bytes).map_err(|e| Error::output(path, e.to_string()))?;
    persist(temp, path)
}
