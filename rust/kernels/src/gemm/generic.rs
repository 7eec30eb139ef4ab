//! Portable micro-kernel over the shared packed layout: the reference path and
//! the path on CPUs without AVX2. Plain Rust the compiler can auto-vectorise.

use super::kernel::Kernel;

/// Portable kernel: 4 rows × 1 panel (16 columns) per tile.
pub(crate) struct Generic;

impl Kernel for Generic {
    const MR: usize = 4;
    const NP: usize = 1;
    const NP_ROW: usize = 1;
    type AElem = u8;

    fn widen(src: &[u8], dst: &mut [u8]) {
        dst.copy_from_slice(src);
    }

    unsafe fn tile(mr: usize, np: usize, kg: usize, a: *const u8, lda: usize, b: *const i8, bs: usize, acc: *mut i32, ld: usize, load: bool) {
        debug_assert!(mr >= 1 && mr <= Self::MR && np >= 1 && np <= Self::NP);
        for r in 0..mr {
            // SAFETY: the driver passes `kg * 4` readable elements per row of A
            // and `kg * 64` bytes per panel of B, and a tile-sized `acc`.
            let arow = std::slice::from_raw_parts(a.add(r * lda), kg * 4);
            for p in 0..np {
                let panel = std::slice::from_raw_parts(b.add(p * bs), kg * 64);
                let mut s = [0i32; 16];
                if load {
                    std::ptr::copy_nonoverlapping(acc.add(r * ld + p * 16), s.as_mut_ptr(), 16);
                }
                for (av, grp) in arow.chunks_exact(4).zip(panel.chunks_exact(64)) {
                    for (c, col) in grp.chunks_exact(4).enumerate() {
                        let mut d = 0i32;
                        for t in 0..4 {
                            d += av[t] as i32 * col[t] as i32; // |d| <= 4*255*128: no overflow
                        }
                        s[c] = s[c].wrapping_add(d);
                    }
                }
                std::ptr::copy_nonoverlapping(s.as_ptr(), acc.add(r * ld + p * 16), 16);
            }
        }
    }
}
