//! hwreg-kernels: the compute core of hwreg_rs.
//!
//! Pure Rust, no Python: every kernel takes slices and shapes and returns
//! `Result<_, Error>`. The `hwreg-python` crate wraps these for NumPy.
//!
//! CPU features and the one dispatch table of every kernel family live in
//! [`cpu`] (the only place an instruction set is matched; each family keeps
//! its per-ISA code in an `arch/` folder); every call that may run threads
//! takes an [`exec::Ctx`] (its thread count; [`exec`] holds the pool and
//! the team that run the work).

pub mod conv;
pub mod cpu;
pub mod depthwise;
pub mod error;
pub mod exec;
pub mod gemm;
pub mod int4;
pub mod nnops;
pub mod optim;
pub mod plan;
pub mod prune;
pub mod quant;
pub mod sparse;

pub use error::{Error, Result};
