//! End-to-end reproductions of the studies in `STUDIES.md`: each module takes a loaded model and
//! a corpus, streams the corpus through the model(s) with hooks, and returns a result type that
//! carries the estimates with bootstrap confidence intervals, per-item tables (polars) and a
//! notebook display.
//!
//! * [`diff_erank`] — Diff-eRank and ΔL of a trained model against its untrained twin
//!   (Wei et al., NeurIPS 2024, arXiv 2401.17139).

pub mod adue;
pub mod diff_erank;
pub mod distribution_shift;
pub mod similarity;

pub use diff_erank::{
    run_diff_erank, run_diff_erank_with_twin, DiffErankConfig, DiffErankResult, Layers,
};
