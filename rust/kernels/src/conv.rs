//! conv kernels (filled in by its issue).
