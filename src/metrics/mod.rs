//! Representation metrics from the studies, and the statistics they share.
//!
//! * [`erank`](mod@erank) — effective rank and Diff-eRank (Wei et al., NeurIPS 2024, arXiv 2401.17139),
//!   including streaming accumulators and the multi-modal ratios.
//! * [`stats`] — percentile bootstrap CIs (one-sample and paired), Pearson correlation.

pub mod emergence;
pub mod erank;
pub mod linalg;
pub mod shift;
pub mod similarity;
pub mod stats;
pub mod uncertainty;

pub use erank::{diff_erank, erank, symmetric_eigenvalues};
pub use stats::{bootstrap_ci, paired_bootstrap_ci, pearson, Ci};
