//! prune kernels (filled in by its issue).
