//! Exact int8 GEMM: packing, per-ISA micro-kernels, dispatch and the fused output step.
