//! Opening what the user gives us: only regular files are read (a FIFO would block forever, a
//! device like `/dev/zero` never ends), text must be UTF-8, and no text input is read past a
//! size cap. Each refusal is one line naming the file.

use std::fs::File;
use std::io::Read;
use std::path::Path;

use crate::error::{Error, Result};

/// Cap on small text inputs: configs, recipes, plans, name lists, indexes, tokenizers.
pub const SMALL: u64 = 256 << 20;
/// Cap on data files (JSONL training and eval sets), read whole into memory.
pub const DATA: u64 = 8 << 30;

/// Opens a regular file for reading; anything else is refused before it is opened.
pub fn open(path: &Path) -> Result<File> {
    regular(path)?;
    File::open(path).map_err(|e| Error::io(path, e))
}

/// Refuses a path that is not a regular file (after following links), without opening it.
pub fn regular(path: &Path) -> Result<std::fs::Metadata> {
    let meta = std::fs::metadata(path).map_err(|e| Error::io(path, e))?;
    if meta.is_dir() {
        return Err(Error::input(
            path,
            "is a directory; a file is expected here",
        ));
    }
    if !meta.is_file() {
        return Err(Error::input(
            path,
            "is not a regular file (a FIFO, device or socket); hft reads only regular files",
        ));
    }
    Ok(meta)
}

/// Reads a whole UTF-8 text file of at most `cap` bytes.
pub fn read_text(path: &Path, cap: u64) -> Result<String> {
    let f = open(path)?;
    let len = f.metadata().map_err(|e| Error::io(path, e))?.len();
    if len > cap {
        return Err(too_big(path, cap));
    }
    let mut bytes = Vec::with_capacity(len as usize);
    f.take(cap + 1)
        .read_to_end(&mut bytes)
        .map_err(|e| Error::io(path, e))?;
    if bytes.len() as u64 > cap {
        return Err(too_big(path, cap));
    }
    String::from_utf8(bytes).map_err(|e| {
        let at = e.utf8_error().valid_up_to();
        let line = e.as_bytes()[..at].iter().filter(|&&b| b == b'\n').count() + 1;
        Error::input(
            path,
            format!("line {line}: not UTF-8 text (invalid byte at offset {at})"),
        )
    })
}

fn too_big(path: &Path, cap: u64) -> Error {
    Error::input(
        path,
        format!(
            "is larger than the {} MiB hft reads from such a file",
            cap >> 20
        ),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_regular_utf8_files_within_the_cap_are_read() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("a.txt");
        std::fs::write(&p, "ok\n").unwrap();
        assert_eq!(read_text(&p, 10).unwrap(), "ok\n");
        assert!(read_text(&p, 2).unwrap_err().to_string().contains("larger"));
        std::fs::write(&p, b"fine\n\xff\xfe").unwrap();
        let e = read_text(&p, 100).unwrap_err().to_string();
        assert!(e.contains("line 2: not UTF-8"), "{e}");
        let e = read_text(d.path(), 100).unwrap_err().to_string();
        assert!(e.contains("is a directory"), "{e}");
        let e = read_text(Path::new("/dev/zero"), 100).unwrap_err();
        assert!(e.to_string().contains("not a regular file"), "{e}");
        assert_eq!(e.exit_code(), 2);
    }
}
