//! One error type for everything that reads user-supplied files: every variant names the file and the
//! field, so a user can tell what is wrong without a debugger.

use std::fmt;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The file's content is wrong: truncated, a bad magic, an unsupported type, a contradiction.
    #[error("{file}: {field}: {msg}")]
    Format {
        file: String,
        field: String,
        msg: String,
    },
    /// The OS refused to read or write the file.
    #[error("{file}: {source}")]
    Io {
        file: String,
        #[source]
        source: std::io::Error,
    },
    /// The GPU refused, failed, hung or was lost.
    #[error("GPU: {0}")]
    Gpu(String),
    /// A bad argument or configuration that is not tied to a file.
    #[error("{0}")]
    Invalid(String),
}

pub type Result<T> = std::result::Result<T, Error>;

impl Error {
    pub fn format(file: &str, field: impl fmt::Display, msg: impl fmt::Display) -> Self {
        Error::Format {
            file: file.to_string(),
            field: field.to_string(),
            msg: msg.to_string(),
        }
    }

    pub fn io(file: &str, source: std::io::Error) -> Self {
        Error::Io {
            file: file.to_string(),
            source,
        }
    }
}

/// Reads a whole file, naming it in the error.
pub fn read_file(path: &std::path::Path) -> Result<Vec<u8>> {
    std::fs::read(path).map_err(|e| Error::io(&path.display().to_string(), e))
}
