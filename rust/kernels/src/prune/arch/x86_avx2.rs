//! The x86-64 AVX2 path of the pruning family: the generic selection pass
//! compiled with AVX2.

super::table!(avx2);
