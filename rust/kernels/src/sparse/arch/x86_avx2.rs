//! The x86-64 AVX2 + FMA path of the sparse family: the generic bodies
//! compiled for it (the compiler vectorises them over the batch).

super::table!(avx2, true);
