//! Executors of planned graphs: a fixed sequence of kernel calls over
//! buffers the plan owns, run in one call so that no per-node dispatch
//! happens in Python.
//!
//! [`GraphPlan`] ([`graph`]): a whole graph of runtime ops (int8, int4 and
//! sparse dense layers, convolutions, depthwise convolutions, pooling, residual adds,
//! element-wise ops, BatchNorm affines, layout changes) over buffers planned
//! by value lifetimes and reused from call to call. A chain of int8 Linear
//! layers (an MLP) is the simplest such plan.

pub mod attention_ops;
pub mod graph;

pub use graph::{
    DType, Gemm, GraphPlan, Int4Dense, Node, Op, SparseDense, Storage, Unary, ValueId,
};
