//! The x86-64 AVX-512 path of the float row ops: the generic bodies compiled with AVX-512.

super::table!(avx512);
