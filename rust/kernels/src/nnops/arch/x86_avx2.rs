//! The x86-64 AVX2 path of the float row ops: the generic bodies compiled with AVX2.

super::table!(avx2);
