//! The x86-64 AVX-512 path of the depthwise kernel:
//! the portable body compiled with AVX-512 F/BW/VL.

super::table!(avx512);
