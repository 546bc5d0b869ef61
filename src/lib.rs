//! # replens
//!
//! Measure what happens inside language models: load real models on CPU, run them with
//! TransformerLens-style hook points, get every layer's activations as polars DataFrames,
//! and compute representation metrics from five papers.
//!
//! ```no_run
//! use replens::prelude::*;
//! let model = Model::load("smollm2-135m")?;
//! let run = model.run(&["Hello world."], &HookSpec::all_residual())?;
//! let frame = replens::frame::run_to_frame(&run)?;
//! println!("{frame}");
//! # Ok::<(), replens::Error>(())
//! ```

pub mod data;
pub mod display;
pub mod error;
pub mod frame;
pub mod hooks;
pub mod metrics;
pub mod model;
pub mod plot;
pub mod progress;
pub mod studies;
pub mod train;

pub use candle_core;
pub use candle_nn;
pub use polars;
pub use tokenizers;

pub use error::{Error, Result};

/// Everything a notebook needs in one import.
pub mod prelude {
    pub use crate::display::show;
    pub use crate::error::{Error, Result};
    pub use crate::frame::{pool, run_to_frame, Pooling};
    pub use crate::hooks::{ActivationCache, HookPoint, HookSpec};
    pub use crate::model::{Model, Run, RunOptions};
    pub use crate::plot::{Chart, HeatmapChart, HistogramChart, LineChart, RocChart, ScatterChart};
    pub use candle_core::{DType, Device, Tensor};
    pub use polars::prelude::DataFrame;
}
