//! One error type for the whole crate. Every variant names the thing that was wrong
//! (file, tensor, hook, column) so that a notebook user can act on the message.

use std::path::PathBuf;

/// Errors returned by replens. Nothing in the public API panics on bad input.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("cannot read {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("invalid JSON in {path}: {source}")]
    Json {
        path: PathBuf,
        source: serde_json::Error,
    },
    #[error("{context}: {source}")]
    Candle {
        context: String,
        source: candle_core::Error,
    },
    #[error(transparent)]
    Polars(#[from] polars::error::PolarsError),
    #[error("tokenizer error: {0}")]
    Tokenizer(String),
    #[error("model '{name}' not found; tried:\n  {}", .tried.join("\n  "))]
    ModelNotFound { name: String, tried: Vec<String> },
    #[error("unknown architecture '{0}' (supported: gpt2, gpt_neox, llama, qwen2, bert, roberta)")]
    UnknownArchitecture(String),
    #[error("unknown hook point '{name}': {reason}")]
    UnknownHook { name: String, reason: String },
    #[error("text {index} has {len} tokens but the model's context window is {max}; shorten it or set truncation")]
    ContextTooLong {
        index: usize,
        len: usize,
        max: usize,
    },
    #[error("text {index} is empty (it produced no tokens)")]
    EmptyText { index: usize },
    #[error("{0}")]
    InvalidInput(String),
}

/// Result alias used throughout replens.
pub type Result<T> = std::result::Result<T, Error>;

impl From<candle_core::Error> for Error {
    fn from(source: candle_core::Error) -> Self {
        Error::Candle {
            context: "tensor operation failed".into(),
            source,
        }
    }
}

/// Attach a human-readable context to candle errors (e.g. which file or layer was being read).
pub trait Context<T> {
    fn context(self, what: impl FnOnce() -> String) -> Result<T>;
}

impl<T> Context<T> for std::result::Result<T, candle_core::Error> {
    fn context(self, what: impl FnOnce() -> String) -> Result<T> {
        self.map_err(|source| Error::Candle {
            context: what(),
            source,
        })
    }
}

/// Shorthand for `Err(Error::InvalidInput(..))`.
macro_rules! bail {
    ($($arg:tt)*) => { return Err($crate::error::Error::InvalidInput(format!($($arg)*))) };
}
pub(crate) use bail;
