//! The library's error type, [`Error`], with one variant per pipeline stage.
//!
//! Every message names the file, column, value or YAML position that caused
//! it, and what to do about it.

use std::path::PathBuf;

/// Result alias used throughout the library.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// An error from one stage of the pipeline.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The pipeline YAML is malformed, has an unknown key or a wrong type,
    /// or contains an impossible setting.
    #[error("{0}")]
    Config(String),

    /// An input file is missing, unreadable or not what gato expects.
    #[error("input {path}: {message}")]
    Input { path: PathBuf, message: String },

    /// The selection query failed or returned unusable columns.
    #[error("selection: {0}")]
    Select(String),

    /// Training could not proceed, for example because a loss became NaN.
    #[error("training: {0}")]
    Train(String),

    /// A saved model file is unreadable, of another version or invalid.
    #[error("model file {path}: {message}")]
    Model { path: PathBuf, message: String },

    /// Writing an output failed.
    #[error("output {path}: {message}")]
    Output { path: PathBuf, message: String },

    /// A broken internal invariant.
    #[error("internal error (this is a bug in gato, please report it): {0}")]
    Internal(String),

    /// An error from DataFusion, with the stage it happened in.
    #[error("{}: {}", .context, without_hidden_columns(&.source.to_string()))]
    DataFusion {
        context: String,
        #[source]
        source: datafusion::error::DataFusionError,
    },
}

impl Error {
    /// Builds an [`Error::Input`] for `path`.
    pub fn input(path: impl Into<PathBuf>, message: impl Into<String>) -> Self {
        Error::Input { path: path.into(), message: message.into() }
    }

    /// Builds an [`Error::Output`] for `path`.
    pub fn output(path: impl Into<PathBuf>, message: impl Into<String>) -> Self {
        Error::Output { path: path.into(), message: message.into() }
    }

    /// Wraps a DataFusion error with the stage it happened in.
    pub fn datafusion(
        context: impl Into<String>,
        source: datafusion::error::DataFusionError,
    ) -> Self {
        Error::DataFusion { context: context.into(), source }
    }
}

/// Removes gato's hidden bookkeeping columns from lists of column names in
/// a DataFusion message, so that it lists only the user's columns.
fn without_hidden_columns(message: &str) -> String {
    let mut out = message.to_string();
    for name in ["_gato_process", "_gato_input", "_gato_row"] {
        for pattern in [
            format!(", events.{name}"),
            format!(", {name}"),
            format!("events.{name}, "),
            format!("{name}, "),
        ] {
            out = out.replace(&pattern, "");
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hidden_columns_left_out_of_messages() {
        let message = "No field named x. Valid fields are events.score, events.weight, \
                       events._gato_process, events._gato_input, events._gato_row.";
        assert_eq!(
            without_hidden_columns(message),
            "No field named x. Valid fields are events.score, events.weight."
        );
    }
}
