//! The x86-64 AVX2 path of the depthwise kernel: the portable body compiled
//! with AVX2, its pair product one `vpmaddwd` per 8 channels.

use std::arch::x86_64::*;

use crate::depthwise::band::Madd;

/// `vpmaddwd` over `ymm`: 8 channels (16 `i16` pairs) at a time.
pub(crate) struct Avx2;
impl Madd for Avx2 {
    #[inline(always)]
    unsafe fn mac2<const CB: usize, const CB2: usize>(
        acc: &mut [i32; CB],
        x: &[i16; CB2],
        w: &[i16; CB2],
    ) {
        // SAFETY: `CB2 = 2·CB` and `CB` a multiple of 8: every access is in
        // bounds; AVX2 is on in the body that calls this (the contract).
        unsafe {
            for i in 0..CB / 8 {
                let xv = _mm256_loadu_si256(x.as_ptr().add(16 * i) as *const __m256i);
                let wv = _mm256_loadu_si256(w.as_ptr().add(16 * i) as *const __m256i);
                let a = acc.as_mut_ptr().add(8 * i) as *mut __m256i;
                _mm256_storeu_si256(
                    a,
                    _mm256_add_epi32(_mm256_loadu_si256(a), _mm256_madd_epi16(xv, wv)),
                );
            }
        }
    }
}

super::table!(avx2, Avx2);
