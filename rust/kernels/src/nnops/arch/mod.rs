//! The per-ISA code of the float row ops: the GELU, Softmax / LogSoftmax and
//! LayerNorm forward bodies (`gelu::gelu_chunk`, `softmax::softmax_chunk`,
//! `norm::layer_norm_chunk`) and the attention plan's float product
//! (`plan::attention_ops::product`), and the static int8 plan's uint8 max
//! pool (`conv::nhwc::max_pool_u8_rows`, exact on every path), compiled for each path (`generic.rs`,
//! `x86_avx2.rs`, `x86_avx512.rs`), chosen by [`crate::cpu::dispatch`]. The
//! bodies are the same scalar code on every path; Rust never contracts
//! `a * b + c` into an FMA nor reorders float sums, so every path gives the
//! same bits, only 2-4x more lanes wide than the baseline SSE2.

use super::gelu::Approximate;

pub(crate) mod generic;
#[cfg(target_arch = "x86_64")]
pub(crate) mod x86_avx2;
#[cfg(target_arch = "x86_64")]
pub(crate) mod x86_avx512;

/// `(x, y, approximate)`: GELU of every element of `x` into `y`.
#[doc(hidden)]
pub type GeluFn = fn(&[f32], &mut [f32], Approximate);
/// `(x, y, d, log)`: Softmax (LogSoftmax when `log`) of each `d`-element row.
#[doc(hidden)]
pub type SoftmaxFn = fn(&[f32], &mut [f32], usize, bool);
/// `(x, y, d, weight, bias, eps, mean, inv_std)`: LayerNorm of each row; the
/// row statistics land in `mean` / `inv_std` unless they are empty.
#[doc(hidden)]
pub type LayerNormFn =
    fn(&[f32], &mut [f32], usize, Option<&[f32]>, Option<&[f32]>, f64, &mut [f32], &mut [f32]);

/// `(a, b, m, k, n, trans_b, y)`: one float32 product `(m, k) x (k, n)` (`b` as
/// `(n, k)` rows with `trans_b`), the attention plan's MatMul.
#[doc(hidden)]
pub type ProductFn = fn(&[f32], &[f32], usize, usize, usize, bool, &mut [f32]);

/// `(x, out, win, oy0)`: uint8 max pooling of output rows `oy0..` of one NHWC
/// image (`conv::nhwc::max_pool_u8_rows`), the static int8 plan's max pool.
#[doc(hidden)]
pub type MaxPoolU8Fn = fn(&[u8], &mut [u8], &crate::conv::Window, usize);

/// The float row-op entry points of one path (see [`crate::cpu::Dispatch`]).
#[doc(hidden)]
#[derive(Clone, Copy)]
pub struct Kernels {
    pub(crate) gelu: GeluFn,
    pub(crate) softmax: SoftmaxFn,
    pub(crate) layer_norm: LayerNormFn,
    pub(crate) product: ProductFn,
    pub(crate) max_pool_u8: MaxPoolU8Fn,
}

/// `table!(isa)`: the `#[target_feature]` wrappers of the row ops for `isa`
/// and the module's safe `KERNELS` table of them (handed out by
/// [`crate::cpu::dispatch`] only on CPUs that have `isa`).
macro_rules! table {
    ($isa:ident) => {
        mod tf {
            use $crate::nnops::gelu::{gelu_chunk, Approximate};
            use $crate::nnops::norm::layer_norm_chunk;
            use $crate::nnops::softmax::softmax_chunk;
            use $crate::plan::attention_ops::product;
            use $crate::conv::{nhwc::max_pool_u8_rows, Window};
            $crate::cpu::isa_fns!($isa;
                pub(super) unsafe fn gelu(x: &[f32], y: &mut [f32], a: Approximate) {
                    gelu_chunk(x, y, a)
                }
                pub(super) unsafe fn softmax(x: &[f32], y: &mut [f32], d: usize, log: bool) {
                    softmax_chunk(x, y, d, log)
                }
                #[allow(clippy::too_many_arguments)]
                pub(super) unsafe fn layer_norm(
                    x: &[f32],
                    y: &mut [f32],
                    d: usize,
                    w: Option<&[f32]>,
                    b: Option<&[f32]>,
                    eps: f64,
                    mean: &mut [f32],
                    inv: &mut [f32],
                ) {
                    layer_norm_chunk(x, y, d, w, b, eps, mean, inv)
                }
                #[allow(clippy::too_many_arguments)]
                pub(super) unsafe fn product_f32(
                    a: &[f32],
                    b: &[f32],
                    m: usize,
                    k: usize,
                    n: usize,
                    trans_b: bool,
                    y: &mut [f32],
                ) {
                    product(a, b, m, k, n, trans_b, y)
                }
                pub(super) unsafe fn max_pool_u8(x: &[u8], out: &mut [u8], win: &Window, oy0: usize) {
                    max_pool_u8_rows(x, out, win, oy0)
                }
            );
        }

        // SAFETY (every entry): only handed out for a CPU that has `$isa`.
        pub(crate) const KERNELS: $crate::nnops::arch::Kernels = $crate::nnops::arch::Kernels {
            gelu: |x, y, a| unsafe { tf::gelu(x, y, a) },
            softmax: |x, y, d, log| unsafe { tf::softmax(x, y, d, log) },
            layer_norm: |x, y, d, w, b, eps, m, i| unsafe { tf::layer_norm(x, y, d, w, b, eps, m, i) },
            product: |a, b, m, k, n, t, y| unsafe { tf::product_f32(a, b, m, k, n, t, y) },
            max_pool_u8: |x, o, w, oy0| unsafe { tf::max_pool_u8(x, o, w, oy0) },
        };
    };
}
pub(crate) use table;
