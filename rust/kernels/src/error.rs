//! The one error type of the kernel crate.
//!
//! The binding crate maps each variant to one Python exception:
//! `Shape` and `Value` to `ValueError`, `Dtype` to `TypeError`.

use std::fmt;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Error {
    /// Shapes that do not fit together (mismatched K, wrong rank, wrong length).
    Shape(String),
    /// A value outside its domain (scale <= 0 or NaN, zero point out of range, ...).
    Value(String),
    /// An element type the kernel does not accept.
    Dtype(String),
}

pub type Result<T> = std::result::Result<T, Error>;

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::Shape(m) | Error::Value(m) | Error::Dtype(m) => f.write_str(m),
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
