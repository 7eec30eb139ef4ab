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
        Error::Alloc(format!("{what} of {a} x {b} elements is larger than memory can address"))
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
