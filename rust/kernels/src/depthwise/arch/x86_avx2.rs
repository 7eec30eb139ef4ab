//! The x86-64 AVX2 path of the depthwise kernel: the portable body compiled with AVX2.

super::table!(avx2);
