//! The one error type of the kernel crate.
//!
//! The binding crate maps each variant to one Python exception:
//! `Shape` and `Value` to `ValueError`, `Dtype` to `TypeError`, `Alloc` to
//! `MemoryError`.

use std::fmt;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Error {
    /// Shapes that do not fit together (mismatched K, wrong rank, wrong length).
    Shape(String),
    /// A value outside its domain (scale <= 0 or NaN, zero point out of range, ...).
    Value(String),
    /// An element type the kernel does not accept.
    Dtype(String),
    /// A buffer the input asks for that cannot be allocated (never an abort).
    Alloc(String),
}

pub type Result<T> = std::result::Result<T, Error>;

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::Shape(m) | Error::Value(m) | Error::Dtype(m) | Error::Alloc(m) => f.write_str(m),
        }
    }
}

impl std::error::Error for Error {}

/// `Err(Error::Shape(..))` with a formatted message.
#[macro_export]
macro_rules! shape_err {
    ($($t:tt)*) => { Err($crate::error::Error::Shape(format!($($t)*))) };
}

/// `Err(Error::Value(..))` with a formatted message.
#[macro_export]
macro_rules! value_err {
    ($($t:tt)*) => { Err($crate::error::Error::Value(format!($($t)*))) };
}

/// An empty vector with room for `len` elements, reserved fallibly: sizes that come from input
/// must not abort the process when memory runs out (`Error::Alloc`, a `MemoryError` in Python).
pub fn try_with_capacity<T>(len: usize, what: &str) -> Result<Vec<T>> {
    let mut v = Vec::new();
    if v.try_reserve_exact(len).is_err() {
        return Err(Error::Alloc(format!(
            "cannot allocate {len} elements of {} bytes for {what}",
            std::mem::size_of::<T>()
        )));
    }
    Ok(v)
}

/// `len` copies of `value`, allocated fallibly (see [`try_with_capacity`]).
pub fn try_vec<T: Clone>(len: usize, value: T, what: &str) -> Result<Vec<T>> {
    let mut v = try_with_capacity(len, what)?;
    v.resize(len, value);
    Ok(v)
}

/// `try_vec`'s length for `a * b` elements: an overflowing product is an `Error::Alloc` too
/// (no memory holds it), named like the buffer.
pub fn checked_len(a: usize, b: usize, what: &str) -> Result<usize> {
    a.checked_mul(b).ok_or_else(|| {
        Error::Alloc(format!(
            "{what} of {a} x {b} elements is larger than memory can address"
        ))
    })
}

#[cfg(test)]
mod tests {
    #[test]
    fn an_impossible_vec_is_an_error_not_an_abort() {
        let e = super::try_vec(usize::MAX / 8, 0u64, "a test").unwrap_err();
        assert!(matches!(e, super::Error::Alloc(_)), "{e:?}");
        assert_eq!(super::try_vec(3, 7u8, "a test").unwrap(), vec![7, 7, 7]);
    }
}

/// Every public kernel entry point fed sizes no memory can hold (2^46 elements and more, above
/// any address space, so no allocator and no overcommit setting can grant them) returns an
/// error instead of aborting; empty inputs of absurd declared extent allocate nothing.
#[cfg(test)]
mod absurd_sizes {
    use super::Error;
    use crate::conv::{self, nhwc, Window};
    use crate::exec::TEST;
    use crate::gemm::{self, output::OutputStep, output::Param, ASource, PackedB, ZeroPoint};

    const HUGE: usize = 1 << 46;

    fn refused<T: std::fmt::Debug>(r: crate::Result<T>, what: &str) {
        match r {
            Err(Error::Alloc(_)) | Err(Error::Shape(_)) | Err(Error::Value(_)) => {}
            other => panic!("{what}: expected an error, got {other:?}"),
        }
    }

    fn alloc_err<T: std::fmt::Debug>(r: crate::Result<T>, what: &str) {
        assert!(matches!(r, Err(Error::Alloc(_))), "{what}: {r:?}");
    }

    #[test]
    fn unfolds_with_huge_paddings() {
        let x = [1.0f32];
        for (p, alloc) in [
            ((1 << 22, 1 << 22), true),
            ((1 << 62, 1), false),
            ((1, usize::MAX / 2), false),
        ] {
            let win = Window::new(1, 1, 1, 1, (1, 1), (1, 1), p);
            let r = conv::im2col(&TEST, &x, win, 0.0);
            let q = nhwc::im2col(&TEST, &x, win, 0.0);
            if alloc {
                alloc_err(r, "nchw im2col");
                alloc_err(q, "nhwc im2col");
            } else {
                refused(r, "nchw im2col");
                refused(q, "nhwc im2col");
            }
        }
    }

    #[test]
    fn pooling_and_its_gradients_with_huge_planes() {
        // A (1, 1, 2^23, 2^23) plane under a window as big: one output, 2^46 inputs.
        let win = Window::new(1, 1, 1 << 23, 1 << 23, (1 << 23, 1 << 23), (1, 1), (0, 0));
        alloc_err(
            conv::max_pool2d_backward(&TEST, &[1.0], &[0], win),
            "max_pool2d_backward",
        );
        alloc_err(
            conv::avg_pool2d_backward(&TEST, &[1.0], win),
            "avg_pool2d_backward",
        );
        // Strided: one column per image of 2^46 pixels.
        let win = Window::new(1, 1, 1 << 23, 1 << 23, (1, 1), (1 << 23, 1 << 23), (0, 0));
        alloc_err(conv::col2im(&TEST, &[1.0f32], win), "col2im");
        // Forward pooling: the input must exist, so only the geometry can be absurd.
        let win = Window::new(1, 1, 1, 1, (3, 3), (1, 1), (1 << 62, 1));
        refused(conv::max_pool2d(&TEST, &[1.0], win), "max_pool2d");
        refused(conv::avg_pool2d(&TEST, &[1.0], win), "avg_pool2d");
        refused(nhwc::pool2d(&TEST, &[1.0], win, nhwc::Pool::Max), "pool2d");
        let win = Window::new(HUGE, HUGE, 1, 1, (1, 1), (1, 1), (0, 0));
        refused(
            conv::max_pool2d(&TEST, &[], win),
            "max_pool2d of an overflowing shape",
        );
    }

    #[test]
    fn products_with_empty_inner_dimensions() {
        let b0 = PackedB::from_nk_i8(&TEST, &[], 0, 0, ZeroPoint::Scalar(0)).unwrap();
        let b3 = PackedB::from_nk_i8(&TEST, &[], 3, 0, ZeroPoint::Scalar(0)).unwrap();
        let a = ASource::U8(&[]);
        let step = OutputStep::Int32;
        let r = gemm::matmul_vec::<i32>(&TEST, a, HUGE, 0, ZeroPoint::Scalar(0), &b0, &step);
        assert_eq!(r.unwrap(), Vec::<i32>::new(), "(2^46, 0) x (0, 0) is empty");
        let a = ASource::U8(&[]);
        let r = gemm::matmul_vec::<i32>(&TEST, a, HUGE, 0, ZeroPoint::Scalar(0), &b3, &step);
        alloc_err(r, "(2^46, 0) x (0, 3)");
        let lin =
            |b| gemm::linear_dynamic_vec(&TEST, &[], HUGE, 0, b, Param::Scalar(1.0), None, false);
        assert_eq!(lin(&b0).unwrap(), Vec::<f32>::new());
        alloc_err(lin(&b3), "linear_dynamic (2^46, 0) x (0, 3)");
        alloc_err(
            PackedB::from_nk_i8(&TEST, &[], 1 << 62, 0, ZeroPoint::Scalar(0)),
            "packing (0, 2^62)",
        );
    }

    #[test]
    fn sparse_products_with_empty_inner_dimensions() {
        use crate::sparse::{bsr_f32_linear, nm_f32_linear, Bsr, Nm};
        let b = Bsr::from_dense(&[] as &[f32], 3, 0, None, 1, 1).unwrap();
        alloc_err(
            bsr_f32_linear(&TEST, &b, &[], HUGE, None, false),
            "bsr (2^46, 0)",
        );
        let nm = Nm::from_dense(&[] as &[f32], 3, 0, None, 2, 4).unwrap();
        alloc_err(
            nm_f32_linear(&TEST, &nm, &[], HUGE, None, false),
            "nm (2^46, 0)",
        );
        refused(
            Bsr::from_dense(&[] as &[f32], usize::MAX, 0, None, 1, 1),
            "bsr rows",
        );
        refused(
            crate::sparse::quantize_rows(&[], usize::MAX, 0, None),
            "quantize_rows",
        );
    }

    #[test]
    fn quantizers_and_masks_of_absurd_extent() {
        alloc_err(
            crate::quant::rows::quantize_rows_u8(&TEST, &[], HUGE, 0),
            "rows of k = 0",
        );
        refused(
            crate::quant::rows::quantize_rows_u8(&TEST, &[], HUGE, HUGE),
            "overflowing rows",
        );
        // An empty weight tiles with any group size: nothing is allocated for the group.
        assert_eq!(
            crate::prune::nm_keep(&TEST, &[] as &[f32], 2, 1 << 60).unwrap(),
            vec![]
        );
        refused(
            crate::prune::nm_keep(&TEST, &[1.0f32; 4], 2, 1 << 60),
            "nm_keep",
        );
    }
}
