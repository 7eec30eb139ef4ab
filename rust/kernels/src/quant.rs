//! quant kernels (filled in by its issue).
