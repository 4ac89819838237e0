//! Small output files (reports, plans, plots) written so that a reader never sees half a file:
//! the bytes go to a temporary name in the same directory, then a rename puts them in place.

use std::path::Path;

use super::output;
use crate::error::{Error, Result};

/// Writes `bytes` to `path` through a temporary name. The caller has applied the output
/// policy ([`super::output::check`]) where `path` is an output the user named.
pub fn write_file(path: &Path, bytes: &[u8]) -> Result<()> {
    let dir = output::parent(path);
    if !dir.is_dir() {
        std::fs::create_dir_all(&dir).map_err(|e| Error::io(&dir, e))?;
    }
    let tmp = output::temporary(path)?;
    let r = std::fs::write(&tmp, bytes)
        .map_err(|e| Error::io(&tmp, e))
        .and_then(|_| std::fs::rename(&tmp, path).map_err(|e| Error::io(path, e)));
    if r.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    output::release(&tmp);
    r
}

#[cfg(test)]
mod tests {
    #[test]
    fn replaces_the_file_and_leaves_no_temporary() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("out.txt");
        std::fs::write(&p, "old").unwrap();
        super::write_file(&p, b"new").unwrap();
        assert_eq!(std::fs::read_to_string(&p).unwrap(), "new");
        assert_eq!(std::fs::read_dir(d.path()).unwrap().count(), 1);
    }
}
