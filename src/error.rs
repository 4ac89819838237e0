//! One error type for the whole library.
//!
//! Every variant names what the user can act on: the file, the tensor, the line. The CLI maps
//! [`Error::exit_code`] to the process status: 2 for bad input (the user can fix it), 1 for
//! failures of the machine or of `hft` itself.

use std::path::{Path, PathBuf};

pub type Result<T, E = Error> = std::result::Result<T, E>;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A file the user gave us is unreadable, malformed or does not fit the command.
    #[error("{}: {msg}", path.display())]
    Input { path: PathBuf, msg: String },
    /// Arguments that contradict each other or are out of range.
    #[error("{0}")]
    Usage(String),
    /// A value that is out of range or does not fit the others, named by its field in the
    /// library's words (`ratio`, `density`): the CLI says which flag that was, a recipe reader
    /// which file and line.
    #[error("{field}: {msg}")]
    Field { field: String, msg: String },
    /// The operating system refused a read or a write we needed (disk full, permissions).
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// A bug in `hft`: an invariant that input cannot break was broken.
    #[error("internal error: {0}")]
    Internal(String),
}

impl Error {
    pub fn input(path: impl AsRef<Path>, msg: impl Into<String>) -> Self {
        Error::Input {
            path: path.as_ref().to_path_buf(),
            msg: msg.into(),
        }
    }

    pub fn usage(msg: impl Into<String>) -> Self {
        Error::Usage(msg.into())
    }

    pub fn field(field: impl Into<String>, msg: impl Into<String>) -> Self {
        Error::Field {
            field: field.into(),
            msg: msg.into(),
        }
    }

    /// A field error placed in a file: `path: {context}{field}: {msg}` (a recipe's stage, say).
    /// Other errors pass unchanged.
    pub fn in_file(self, path: impl AsRef<Path>, context: &str) -> Self {
        match self {
            Error::Field { field, msg } => Error::input(path, format!("{context}{field}: {msg}")),
            other => other,
        }
    }

    /// An I/O error on a path. A missing, unreadable or malformed path is the user's to fix (not
    /// found, permission denied, a directory where a file belongs or the reverse, a symbolic
    /// link loop, a name too long, text that is not UTF-8), so it counts as bad input;
    /// anything else (disk full on write, ...) is a machine failure.
    pub fn io(path: impl AsRef<Path>, source: std::io::Error) -> Self {
        let path = path.as_ref().to_path_buf();
        use std::io::ErrorKind as K;
        if source.raw_os_error() == Some(libc::ELOOP) {
            return Error::Input {
                msg: source.to_string(),
                path,
            };
        }
        match source.kind() {
            K::NotFound
            | K::PermissionDenied
            | K::IsADirectory
            | K::NotADirectory
            | K::InvalidFilename
            | K::InvalidData => Error::Input {
                msg: source.to_string(),
                path,
            },
            _ => Error::Io { path, source },
        }
    }

    /// A YAML parse error in `path` as one line: `path: {context}line L column C: message`,
    /// without the source excerpt the parser draws (which names `<input>`, not the file).
    pub fn yaml(path: impl AsRef<Path>, context: &str, e: &serde_saphyr::Error) -> Self {
        let text = e.without_snippet().to_string();
        let head = text
            .lines()
            .map(str::trim)
            .find(|l| !l.is_empty())
            .unwrap_or("");
        let head = head.strip_prefix("error: ").unwrap_or(head);
        let located = match e.location() {
            Some(l) if !head.starts_with("line ") && !head.contains(" line ") => {
                format!("line {} column {}: {head}", l.line(), l.column())
            }
            _ => head.to_string(),
        };
        Error::input(path, format!("{context}{located}"))
    }

    pub fn exit_code(&self) -> i32 {
        match self {
            Error::Input { .. } | Error::Usage(_) | Error::Field { .. } => 2,
            Error::Io { .. } | Error::Internal(_) => 1,
        }
    }
}
