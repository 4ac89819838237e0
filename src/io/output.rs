//! The one output policy. Every path hft writes (checkpoints, run and grid directories, plans,
//! plots, reports, imports, logits) is checked here before the first byte is written:
//!
//! - an output that is, contains or lies inside an input (model, data, recipe, plan) is refused;
//! - an existing output that is not a regular file or directory (a device, FIFO, socket or
//!   symbolic link) is refused, `--force` or not;
//! - an existing output is replaced only with `--force`, and only if hft wrote it: a directory
//!   carries the marker file [`MARKER`], a file carries hft's signature (see [`signed`]);
//! - outputs are written under a temporary name and renamed into place when complete. The
//!   temporary names are registered here, so that an interrupted process removes them
//!   ([`remove_temporaries`], called from the CLI's signal handlers), and a later run reclaims
//!   the ones a killed process left ([`reclaim_stale`]).

use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use crate::error::{Error, Result};

/// The file that marks a directory as written by hft, so that `--force` may replace it.
pub const MARKER: &str = ".hft-output";

/// What kind of output a command writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    File,
    Dir,
}

/// Checks `out` against the inputs and against what already exists there. Nothing is written.
pub fn check(out: &Path, kind: Kind, inputs: &[&Path], force: bool) -> Result<()> {
    check_inputs(out, inputs)?;
    check_existing(out, kind, force)
}

/// Refuses an output that is, contains or lies inside an input. Paths are compared after
/// resolving symbolic links, so `out -> model/` is caught too.
pub fn check_inputs(out: &Path, inputs: &[&Path]) -> Result<()> {
    let o = resolve(out);
    // A link inside an input directory (a config.json or tokenizer linked from elsewhere, as in
    // the Hugging Face cache) makes its target an input too.
    let mut all: Vec<(&Path, PathBuf)> = Vec::new();
    for input in inputs {
        all.push((input, resolve(input)));
        if let Ok(entries) = std::fs::read_dir(input) {
            for e in entries.flatten() {
                if e.file_type().is_ok_and(|t| t.is_symlink()) {
                    if let Ok(target) = e.path().canonicalize() {
                        all.push((input, target));
                    }
                }
            }
        }
    }
    for (input, i) in all {
        let what = if o == i {
            "is"
        } else if o.starts_with(&i) {
            "lies inside"
        } else if i.starts_with(&o) {
            "contains"
        } else {
            continue;
        };
        return Err(Error::input(
            out,
            format!(
                "output {what} input `{}`; hft never writes over or around its inputs: choose \
                 another output",
                input.display()
            ),
        ));
    }
    Ok(())
}

/// Refuses an existing output that may not be replaced; see the module documentation.
pub fn check_existing(out: &Path, kind: Kind, force: bool) -> Result<()> {
    let meta = match std::fs::symlink_metadata(out) {
        Ok(m) => m,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(Error::io(out, e)),
    };
    let ft = meta.file_type();
    if ft.is_symlink() {
        return Err(Error::input(
            out,
            "output is a symbolic link; hft replaces only files and directories it wrote, \
             never a link: choose another output",
        ));
    }
    if !ft.is_file() && !ft.is_dir() {
        return Err(Error::input(
            out,
            "output exists and is not a regular file or directory (a device, FIFO or socket); \
             choose another output",
        ));
    }
    match (kind, ft.is_dir()) {
        (Kind::File, true) => {
            return Err(Error::input(
                out,
                "output is a directory; this command writes a file",
            ))
        }
        (Kind::Dir, false) => {
            return Err(Error::input(
                out,
                "output is a file; this command writes a directory",
            ))
        }
        _ => {}
    }
    if ft.is_dir() {
        let empty = std::fs::read_dir(out)
            .map_err(|e| Error::io(out, e))?
            .next()
            .is_none();
        if empty {
            return Ok(());
        }
        if !force {
            return Err(Error::input(
                out,
                "output exists and is not empty; choose another path, or pass option `force` \
                 to replace an earlier hft output",
            ));
        }
        if let Err(why) = owned(out, 0) {
            return Err(Error::input(
                out,
                format!(
                    "output exists and {why}; option `force` replaces only what hft wrote: \
                     move that out, or choose another path"
                ),
            ));
        }
        return Ok(());
    }
    if !force {
        return Err(Error::input(
            out,
            "output exists; choose another path, or pass option `force` to replace an earlier \
             hft output",
        ));
    }
    if !signed(out) {
        return Err(Error::input(
            out,
            "output exists and does not look like a file hft wrote; option `force` replaces \
             only hft's own outputs: remove it yourself or choose another path",
        ));
    }
    Ok(())
}

/// What a marked directory is, and so which entries in it are hft's.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Marked {
    /// A checkpoint: exactly the entries the marker lists.
    Checkpoint,
    /// A run (`hft run`): its state, reports and plots, `diffs/`, and marked directories
    /// (stage checkpoints).
    Run,
    /// A grid of runs: its reports and plots, and directories that are (or only hold) runs.
    Grid,
}

impl Marked {
    fn name(self) -> &'static str {
        match self {
            Marked::Checkpoint => "checkpoint",
            Marked::Run => "run",
            Marked::Grid => "grid",
        }
    }
}

/// The files a run or grid directory holds beside its subdirectories.
const RUN_FILES: &[&str] = &[
    "run.json",
    "report.json",
    "report.md",
    "loss.svg",
    "learn-forget.svg",
    "learn-forget-prior-em.svg",
    "learn-forget-prior-loss.svg",
    "heatmap.svg",
];

/// Writes the marker into a directory hft is creating: who wrote it, with what command, what
/// kind of output it is and (for a checkpoint) the entries it holds.
pub fn mark(dir: &Path, command: &str, kind: Marked) -> Result<()> {
    let mut v = serde_json::json!({
        "written_by": format!("hft {}", env!("CARGO_PKG_VERSION")),
        "command": command,
        "kind": kind.name(),
    });
    if kind == Marked::Checkpoint {
        let mut names: Vec<String> = std::fs::read_dir(dir)
            .map_err(|e| Error::io(dir, e))?
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|n| n != MARKER)
            .collect();
        names.sort();
        v["entries"] = serde_json::json!(names);
    }
    let p = dir.join(MARKER);
    std::fs::write(&p, v.to_string() + "\n").map_err(|e| Error::io(&p, e))
}

/// Whether everything in `dir` is hft's: a valid marker, and no entry hft did not write.
/// Directories inside a grid that only group runs (`full/`, `lr=1e-3/`) carry no marker of
/// their own and are hft's when everything in them is. `Err` says what is not hft's.
fn owned(dir: &Path, depth: usize) -> std::result::Result<(), String> {
    let shown = |p: &Path| p.display().to_string();
    let marker = std::fs::read_to_string(dir.join(MARKER)).ok();
    let kind = marker
        .as_deref()
        .and_then(|t| serde_json::from_str::<serde_json::Value>(t).ok())
        .filter(|v| {
            v["written_by"]
                .as_str()
                .is_some_and(|w| w.starts_with("hft "))
        })
        .map(|v| {
            let kind = match v["kind"].as_str() {
                Some("checkpoint") => Some(Marked::Checkpoint),
                Some("run") => Some(Marked::Run),
                Some("grid") => Some(Marked::Grid),
                _ => None,
            };
            let entries: Vec<String> = v["entries"]
                .as_array()
                .map(|a| {
                    a.iter()
                        .filter_map(|e| e.as_str().map(String::from))
                        .collect()
                })
                .unwrap_or_default();
            (kind, entries)
        });
    let (kind, entries) = match kind {
        Some((Some(k), e)) => (Some(k), e),
        _ if depth > 0 && marker.is_none() => (None, Vec::new()),
        _ => return Err(format!("{} holds no valid {MARKER} of hft's", shown(dir))),
    };
    let listing = std::fs::read_dir(dir).map_err(|e| format!("{}: {e}", shown(dir)))?;
    for e in listing.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        let path = e.path();
        if name == MARKER {
            continue;
        }
        let is_dir = e.file_type().is_ok_and(|t| t.is_dir());
        let ok = match kind {
            Some(Marked::Checkpoint) => entries.contains(&name),
            Some(Marked::Run) | Some(Marked::Grid) if RUN_FILES.contains(&name.as_str()) => true,
            Some(Marked::Run) | Some(Marked::Grid) if name == "diffs" && is_dir => only_json(&path),
            // Stage checkpoints, runs of a grid, and the directories that group them (`full/`,
            // `lr=1e-3/`, `post/`): hft's by the same rule, which names the first thing that
            // is not.
            _ if is_dir && depth < MAX_DEPTH => {
                owned(&path, depth + 1)?;
                true
            }
            _ => false,
        };
        if !ok {
            return Err(format!("holds {}, which hft did not write", shown(&path)));
        }
    }
    Ok(())
}

/// How deep [`owned`] looks: grid / strategy / setting / seed / run / post / checkpoint is 6.
const MAX_DEPTH: usize = 8;

fn only_json(dir: &Path) -> bool {
    std::fs::read_dir(dir).is_ok_and(|d| {
        d.flatten().all(|e| {
            e.file_type().is_ok_and(|t| t.is_file())
                && e.file_name().to_string_lossy().ends_with(".json")
        })
    })
}

/// Text that opens an SVG hft writes (and that [`signed`] looks for).
pub const SVG_SIGNATURE: &str = "<!-- written by hft -->";

/// Whether a file carries hft's signature: a safetensors header with `hft_version` in its
/// metadata, a PNG with hft's `Software` text chunk, an SVG, plan or export that opens with
/// hft's comment or a plan file's own opening, or, for the exports that have no room for a
/// comment, text shaped like them: every line a tensor name, or one anchored regex.
pub fn signed(path: &Path) -> bool {
    let Ok(mut f) = std::fs::File::open(path) else {
        return false;
    };
    let mut head = Vec::with_capacity(4096);
    if f.by_ref().take(4096).read_to_end(&mut head).is_err() {
        return false;
    }
    if head.starts_with(b"\x89PNG") {
        return contains(&head, PNG_SOFTWARE);
    }
    if path.extension().is_some_and(|e| e == "safetensors") {
        return safetensors_signed(path);
    }
    let text = String::from_utf8_lossy(&head);
    let first = text.lines().next().unwrap_or("");
    if first.starts_with(SVG_SIGNATURE)
        || first.contains(" hft plan: ")
        || text.starts_with("format: 1\nstrategy: ")
        || text.starts_with("{\n  \"format\": 1,\n  \"strategy\": ")
    {
        return true;
    }
    // Names and regex exports: whole file, one token per line, nothing else.
    let Ok(meta) = f.metadata() else { return false };
    if meta.len() > 64 << 20 {
        return false;
    }
    let Ok(all) = std::fs::read_to_string(path) else {
        return false;
    };
    let tensor_name = |l: &str| {
        l.contains('.')
            && l.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'_' || b == b'-')
    };
    let regex = |l: &str| l.starts_with('^') && l.ends_with('$') && !l.contains(' ');
    !all.is_empty()
        && all.ends_with('\n')
        && (all.lines().all(tensor_name) || all.lines().count() == 1 && all.lines().all(regex))
}

/// The PNG `tEXt` payload hft adds to its plots.
pub const PNG_SOFTWARE: &[u8] = b"tEXtSoftware\0hft";

fn contains(hay: &[u8], needle: &[u8]) -> bool {
    hay.windows(needle.len()).any(|w| w == needle)
}

fn safetensors_signed(path: &Path) -> bool {
    let Ok(mut f) = std::fs::File::open(path) else {
        return false;
    };
    let mut len = [0u8; 8];
    if f.read_exact(&mut len).is_err() {
        return false;
    }
    let n = u64::from_le_bytes(len);
    if n > 100 << 20 {
        return false;
    }
    let mut header = vec![0u8; n as usize];
    if f.read_exact(&mut header).is_err() {
        return false;
    }
    serde_json::from_slice::<serde_json::Value>(&header).is_ok_and(|v| {
        v.get("__metadata__")
            .and_then(|m| m.get("hft_version"))
            .is_some()
    })
}

/// Canonical form of a path that may not exist yet: its deepest existing ancestor is
/// canonicalised and the rest appended.
pub fn resolve(p: &Path) -> PathBuf {
    use std::path::Component;
    let p = if p.is_absolute() {
        p.to_path_buf()
    } else {
        std::env::current_dir().unwrap_or_default().join(p)
    };
    let comps: Vec<Component> = p.components().collect();
    for k in (1..=comps.len()).rev() {
        let prefix: PathBuf = comps[..k].iter().collect();
        if let Ok(mut r) = prefix.canonicalize() {
            // The rest does not exist, so it holds no links: `..` and `.` resolve by name.
            for c in &comps[k..] {
                match c {
                    Component::ParentDir => {
                        r.pop();
                    }
                    Component::Normal(n) => r.push(n),
                    _ => {}
                }
            }
            return r;
        }
    }
    p
}

// ---------------------------------------------------------------------------------------------
// Temporary names.

static TEMPORARIES: Mutex<Vec<PathBuf>> = Mutex::new(Vec::new());

const TMP_TAG: &str = ".hft-tmp-";
const OLD_TAG: &str = ".hft-old-";

/// The temporary name an output is built under: `.NAME.hft-tmp-PID` beside it. Registered
/// for removal on interruption; call [`release`] once it is renamed or removed.
pub fn temporary(dest: &Path) -> Result<PathBuf> {
    temp_name(dest, TMP_TAG)
}

/// The name a replaced output is moved to before it is deleted: `.NAME.hft-old-PID`.
pub fn retired(dest: &Path) -> Result<PathBuf> {
    temp_name(dest, OLD_TAG)
}

fn temp_name(dest: &Path, tag: &str) -> Result<PathBuf> {
    let base = dest
        .file_name()
        .ok_or_else(|| Error::usage(format!("`{}` is not a file path", dest.display())))?
        .to_string_lossy()
        .into_owned();
    // The temporary adds a dot and `.hft-tmp-PID`: a base name near the file system's limit
    // (255 bytes) is cut to 200 bytes so that the temporary still fits.
    let mut base = base;
    if base.len() > 200 {
        let mut cut = 200;
        while !base.is_char_boundary(cut) {
            cut -= 1;
        }
        base.truncate(cut);
    }
    let dir = parent(dest);
    reclaim_stale(&dir, &base);
    let p = dir.join(format!(".{base}{tag}{}", std::process::id()));
    if let Ok(mut t) = TEMPORARIES.lock() {
        t.push(p.clone());
    }
    Ok(p)
}

/// The directory a path lies in (`.` for a bare name).
pub fn parent(p: &Path) -> PathBuf {
    match p.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
        _ => PathBuf::from("."),
    }
}

/// Forgets a temporary that was renamed into place or removed.
pub fn release(p: &Path) {
    if let Ok(mut t) = TEMPORARIES.lock() {
        t.retain(|x| x != p);
    }
}

/// Removes every registered temporary (the process is being interrupted). Never blocks: if
/// the registry is busy, nothing is removed.
pub fn remove_temporaries() {
    if let Ok(t) = TEMPORARIES.try_lock() {
        for p in t.iter() {
            let _ = remove(p);
        }
    }
}

/// Removes a file or a directory tree.
pub fn remove(p: &Path) -> std::io::Result<()> {
    match std::fs::symlink_metadata(p) {
        Ok(m) if m.is_dir() => std::fs::remove_dir_all(p),
        Ok(_) => std::fs::remove_file(p),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e),
    }
}

/// Removes the temporaries of `base` in `dir` that a killed hft process left behind (their
/// process no longer exists). Returns what was removed.
pub fn reclaim_stale(dir: &Path, base: &str) -> Vec<PathBuf> {
    let mut gone = Vec::new();
    let Ok(entries) = std::fs::read_dir(dir) else {
        return gone;
    };
    let prefix = format!(".{base}");
    for e in entries.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        let Some(rest) = name.strip_prefix(&prefix) else {
            continue;
        };
        let pid = rest
            .strip_prefix(TMP_TAG)
            .or_else(|| rest.strip_prefix(OLD_TAG))
            .and_then(|p| p.parse::<u32>().ok());
        if let Some(pid) = pid {
            if pid != std::process::id() && !alive(pid) && remove(&e.path()).is_ok() {
                gone.push(e.path());
            }
        }
    }
    gone
}

/// Whether a process runs. Without /proc nothing can be known, so everything counts as alive.
fn alive(pid: u32) -> bool {
    !Path::new("/proc/self").exists() || Path::new(&format!("/proc/{pid}")).exists()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn inputs_are_never_outputs_nor_around_them() {
        let d = tempfile::tempdir().unwrap();
        let model = d.path().join("model");
        std::fs::create_dir(&model).unwrap();
        let cases = [
            (model.clone(), "is"),
            (model.join("model.safetensors"), "lies inside"),
            (d.path().to_path_buf(), "contains"),
        ];
        for (out, what) in cases {
            let e = check_inputs(&out, &[&model]).unwrap_err().to_string();
            assert!(e.contains(what), "{e}");
        }
        check_inputs(&d.path().join("other"), &[&model]).unwrap();
    }

    #[test]
    fn dot_dot_after_missing_directories_resolves_by_name() {
        let d = tempfile::tempdir().unwrap();
        let model = d.path().join("model");
        std::fs::create_dir(&model).unwrap();
        let sneaky = d.path().join("a/b/../../model/x.safetensors");
        assert_eq!(resolve(&sneaky), resolve(&model).join("x.safetensors"));
        assert!(check_inputs(&sneaky, &[&model]).is_err());
        // A link in the input directory pointing into the output makes the output an input.
        let ext = d.path().join("ext");
        std::fs::create_dir(&ext).unwrap();
        std::fs::write(ext.join("config.json"), "{}").unwrap();
        std::os::unix::fs::symlink(ext.join("config.json"), model.join("config.json")).unwrap();
        assert!(check_inputs(&ext, &[&model]).is_err());
    }

    #[test]
    fn force_replaces_only_what_hft_wrote() {
        let d = tempfile::tempdir().unwrap();
        let dir = d.path().join("out");
        std::fs::create_dir(&dir).unwrap();
        check_existing(&dir, Kind::Dir, false).unwrap(); // empty: fine
        std::fs::write(dir.join("notes.txt"), "mine").unwrap();
        assert!(check_existing(&dir, Kind::Dir, false).is_err());
        let e = check_existing(&dir, Kind::Dir, true).unwrap_err();
        assert!(e.to_string().contains(MARKER), "{e}");
        // A marker alone does not make the user's notes hft's.
        mark(&dir, "hft test", Marked::Run).unwrap();
        let e = check_existing(&dir, Kind::Dir, true).unwrap_err();
        assert!(
            e.to_string().contains("notes.txt, which hft did not write"),
            "{e}"
        );
        std::fs::write(dir.join(MARKER), "").unwrap();
        assert!(check_existing(&dir, Kind::Dir, true).is_err());
        std::fs::remove_file(dir.join("notes.txt")).unwrap();
        std::fs::write(dir.join("run.json"), "{}").unwrap();
        mark(&dir, "hft test", Marked::Run).unwrap();
        check_existing(&dir, Kind::Dir, true).unwrap();
        assert!(check_existing(&dir, Kind::File, true).is_err());

        let f = d.path().join("README.md");
        std::fs::write(&f, "# My notes\nhello world\n").unwrap();
        assert!(check_existing(&f, Kind::File, false).is_err());
        assert!(check_existing(&f, Kind::File, true).is_err());
        std::fs::write(&f, "model.layers.0.mlp.up_proj.weight\nlm_head.weight\n").unwrap();
        check_existing(&f, Kind::File, true).unwrap();
        std::fs::write(&f, format!("{SVG_SIGNATURE}\n<svg/>")).unwrap();
        check_existing(&f, Kind::File, true).unwrap();
    }

    #[test]
    fn links_and_special_files_are_refused() {
        let d = tempfile::tempdir().unwrap();
        let l = d.path().join("link");
        std::os::unix::fs::symlink(d.path().join("nowhere"), &l).unwrap();
        assert!(check_existing(&l, Kind::File, true).is_err());
        let e = check_existing(Path::new("/dev/null"), Kind::Dir, true).unwrap_err();
        assert!(e.to_string().contains("not a regular file"), "{e}");
    }

    #[test]
    fn stale_temporaries_of_dead_processes_are_reclaimed() {
        let d = tempfile::tempdir().unwrap();
        // PIDs above the kernel's maximum (4194304) never run.
        let dead = d.path().join(".out.hft-tmp-4999999");
        std::fs::create_dir(&dead).unwrap();
        std::fs::write(dead.join("x"), "x").unwrap();
        let mine = d
            .path()
            .join(format!(".out.hft-tmp-{}", std::process::id()));
        std::fs::create_dir(&mine).unwrap();
        let other = d.path().join(".other.hft-tmp-4999999");
        std::fs::create_dir(&other).unwrap();
        let gone = reclaim_stale(d.path(), "out");
        assert_eq!(gone, vec![dead.clone()]);
        assert!(!dead.exists() && mine.exists() && other.exists());
    }
}
