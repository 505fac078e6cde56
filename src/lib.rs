//! gato learns event categories that maximise the expected significance of
//! a High Energy Physics analysis.
//!
//! ```text
//! pipeline.yaml ─► config ─► Pipeline
//!   source    Parquet files or a built-in toy generator, one table `events`
//!   select    DataFusion SQL or Polars: selection, discriminants, weight
//!   model     sigmoid cuts or a Gaussian mixture on burn tensors
//!   objective soft yields ─► Asimov significance − penalties
//!   optimize  RMSprop or Adam with annealed schedules, restarts
//!   evaluate  hard categories on every event, baselines, DP optimum
//!   apply     input rows + `category`, written atomically as Parquet
//!   report    summary.json, tables on the terminal, plots and report.html
//! ```

pub mod apply;
pub mod atomic;
pub mod config;
pub mod device;
pub mod error;
pub mod evaluate;
pub mod interrupt;
pub mod model;
pub mod objective;
pub mod optimize;
pub mod plot;
pub mod polars_select;
pub mod remote;
pub mod report;
pub mod run;
pub mod select;
pub mod sideband;
pub mod significance;
pub mod source;
pub mod store;
pub mod toy;
pub mod warnings;

pub use burn;
pub use datafusion;
pub use polars;
pub use error::{Error, Result};
