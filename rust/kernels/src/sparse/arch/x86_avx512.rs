//! The x86-64 AVX-512 F/BW/VL path of the sparse family: the generic bodies
//! compiled for it (the int8 4-deep dot included, auto-vectorised).

super::table!(avx512, true);
