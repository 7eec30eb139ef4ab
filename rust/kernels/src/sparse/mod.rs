//! Sparse formats (CSR, BSR, N:M) and their SpMM kernels.
