//! hwreg-kernels: the compute core of hwreg_rs.
//!
//! Pure Rust, no Python: every kernel takes slices and shapes and returns
//! `Result<_, Error>`. The `hwreg-python` crate wraps these for NumPy.
//!
//! Runtime CPU dispatch lives in [`isa`]; thread policy in [`threads`] (rayon) and [`team`] (fork-join for GEMM).

pub mod conv;
pub mod depthwise;
pub mod error;
pub mod gemm;
pub mod isa;
pub mod nnops;
pub mod nhwc;
pub mod optim;
pub mod prune;
pub mod quant;
pub mod sparse;
pub mod team;
pub mod threads;

pub use error::{Error, Result};
