//! The x86-64 AVX-512 VNNI path of the depthwise kernel: the portable body
//! with its pair product and the add one `vpdpwssd` per 16 channels (8 in
//! `ymm` for a block of 8).

use std::arch::x86_64::*;

use crate::depthwise::band::Madd;

/// `vpdpwssd`: `acc += x[2j]·w[2j] + x[2j+1]·w[2j+1]` in one instruction.
pub(crate) struct Vnni;
impl Madd for Vnni {
    #[inline(always)]
    unsafe fn mac2<const CB: usize, const CB2: usize>(
        acc: &mut [i32; CB],
        x: &[i16; CB2],
        w: &[i16; CB2],
    ) {
        // SAFETY: `CB2 = 2·CB`, `CB` a multiple of 8 (of 16 for the zmm
        // loop): in bounds; AVX-512 VNNI and VL are on in the calling body.
        unsafe {
            if CB % 16 != 0 {
                for i in 0..CB / 8 {
                    let xv = _mm256_loadu_si256(x.as_ptr().add(16 * i) as *const __m256i);
                    let wv = _mm256_loadu_si256(w.as_ptr().add(16 * i) as *const __m256i);
                    let a = acc.as_mut_ptr().add(8 * i) as *mut __m256i;
                    _mm256_storeu_si256(a, _mm256_dpwssd_epi32(_mm256_loadu_si256(a), xv, wv));
                }
                return;
            }
            for i in 0..CB / 16 {
                let xv = _mm512_loadu_si512(x.as_ptr().add(32 * i) as *const _);
                let wv = _mm512_loadu_si512(w.as_ptr().add(32 * i) as *const _);
                let a = acc.as_mut_ptr().add(16 * i);
                _mm512_storeu_si512(
                    a as *mut _,
                    _mm512_dpwssd_epi32(_mm512_loadu_si512(a as *const _), xv, wv),
                );
            }
        }
    }
}

super::table!(avx512vnni, Vnni);
