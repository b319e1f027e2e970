//! Why a configuration was refused: the one error type of [`crate::config`] and
//! [`crate::firewall`] validation, on its own so both modules use it without importing each
//! other.

/// Why a configuration was refused; the text names the file, line and field.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("{file}: cannot read: {source}")]
    Read {
        file: String,
        #[source]
        source: std::io::Error,
    },
    /// The TOML parser's (or the schema's) refusal: the documented first line, then the
    /// place drawn with carets (`excerpt`, empty when the parser gave no position).
    #[error("{file}:{line}: {field}: {message}{excerpt}")]
    Syntax {
        file: String,
        line: usize,
        field: String,
        message: String,
        excerpt: String,
    },
    /// A file the configuration names (certificate, key, CA bundle) cannot be used.
    #[error("{file}: {message}")]
    Load { file: String, message: String },
    #[error("{file}:{line}: {field}: {message}")]
    Invalid {
        file: String,
        line: usize,
        field: String,
        message: String,
    },
}
