//! The x86-64 AVX-512 VNNI path of the depthwise kernel: the portable body
//! compiled with VNNI on, so each `pmaddwd` and the add after it become one
//! `vpdpwssd`.

super::table!(avx512vnni);
