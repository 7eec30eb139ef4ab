//! Per-thread reuse of the GEMM's small per-call vectors (A's row sums and
//! zero points, the per-row activation scales, the accumulator block), as
//! `pack::AScratch` reuses packed A: a caller that runs the same shapes
//! again (a planned graph, a model's predict) allocates nothing after its
//! first call on each thread. A nested call finds a buffer taken and
//! allocates its own.

use std::cell::Cell;
use std::ops::{Deref, DerefMut};
use std::thread::LocalKey;

type Home<T> = LocalKey<Cell<Vec<T>>>;

std::thread_local! {
    pub(crate) static ROWSUM: Cell<Vec<i32>> = const { Cell::new(Vec::new()) };
    pub(crate) static ZP: Cell<Vec<i32>> = const { Cell::new(Vec::new()) };
    pub(crate) static ACC: Cell<Vec<i32>> = const { Cell::new(Vec::new()) };
    pub(crate) static SCALES: Cell<Vec<f32>> = const { Cell::new(Vec::new()) };
    /// A convolution row block's zero points and row sums (`gemm::block`).
    pub(crate) static BLOCK_ROWS: Cell<Vec<i32>> = const { Cell::new(Vec::new()) };
    /// One unfolded row of bytes before it is widened (`gemm::block`).
    pub(crate) static BYTES: Cell<Vec<u8>> = const { Cell::new(Vec::new()) };
}

/// Buffers up to this size go back to their thread for the next call (a
/// big GEMM's are not worth pinning: its own work dwarfs an allocation).
const KEEP_BYTES: usize = 1 << 20;

/// `len` elements in this thread's buffer from `home` (when free), given
/// back on drop.
pub(crate) struct Reused<T: Copy + 'static> {
    buf: Vec<T>,
    home: &'static Home<T>,
}

impl<T: Copy + 'static> Reused<T> {
    /// `len` copies of `fill`.
    pub(crate) fn new(home: &'static Home<T>, len: usize, fill: T) -> Self {
        let mut buf = home.try_with(Cell::take).unwrap_or_default();
        buf.clear();
        buf.resize(len, fill);
        Reused { buf, home }
    }

    /// `len` elements whose contents are whatever the buffer held (the
    /// caller writes every one before reading it), so a call of the same
    /// size as the last writes nothing here; a size no allocator gives is an
    /// `Error::Alloc` naming `what`.
    pub(crate) fn try_stale(home: &'static Home<T>, len: usize, what: &str) -> crate::Result<Self>
    where
        T: Default,
    {
        let mut buf = home.try_with(Cell::take).unwrap_or_default();
        if len > buf.len() {
            if buf.try_reserve_exact(len - buf.len()).is_err() {
                return Err(crate::error::Error::Alloc(format!(
                    "{what}: cannot allocate {len} elements"
                )));
            }
            buf.resize(len, T::default());
        }
        buf.truncate(len);
        Ok(Reused { buf, home })
    }
}

impl<T: Copy + 'static> Deref for Reused<T> {
    type Target = [T];
    fn deref(&self) -> &[T] {
        &self.buf
    }
}

impl<T: Copy + 'static> DerefMut for Reused<T> {
    fn deref_mut(&mut self) -> &mut [T] {
        &mut self.buf
    }
}

impl<T: Copy + 'static> Drop for Reused<T> {
    fn drop(&mut self) {
        let buf = std::mem::take(&mut self.buf);
        if buf.capacity() * std::mem::size_of::<T>() <= KEEP_BYTES {
            let _ = self.home.try_with(|c| {
                let old = c.take();
                c.set(if old.capacity() > buf.capacity() {
                    old
                } else {
                    buf
                });
            });
        }
    }
}
