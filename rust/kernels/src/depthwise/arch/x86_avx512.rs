//! The x86-64 AVX-512 path of the depthwise kernel: the portable body
//! compiled with AVX-512 F/BW/VL, its pair product one `vpmaddwd` per 16
//! channels (the AVX2 one for a block of 8).

use std::arch::x86_64::*;

use super::x86_avx2::Avx2;
use crate::depthwise::band::Madd;

/// `vpmaddwd` over `zmm`: 16 channels (32 `i16` pairs) at a time.
pub(crate) struct Avx512;
impl Madd for Avx512 {
    #[inline(always)]
    unsafe fn mac2<const CB: usize, const CB2: usize>(
        acc: &mut [i32; CB],
        x: &[i16; CB2],
        w: &[i16; CB2],
    ) {
        if CB % 16 != 0 {
            // SAFETY: AVX2 is part of this path.
            return unsafe { Avx2::mac2(acc, x, w) };
        }
        // SAFETY: `CB2 = 2·CB`, `CB` a multiple of 16: in bounds; AVX-512 BW on.
        unsafe {
            for i in 0..CB / 16 {
                let xv = _mm512_loadu_si512(x.as_ptr().add(32 * i) as *const _);
                let wv = _mm512_loadu_si512(w.as_ptr().add(32 * i) as *const _);
                let a = acc.as_mut_ptr().add(16 * i);
                _mm512_storeu_si512(
                    a as *mut _,
                    _mm512_add_epi32(_mm512_loadu_si512(a as *const _), _mm512_madd_epi16(xv, wv)),
                );
            }
        }
    }
}

super::table!(avx512, Avx512);
