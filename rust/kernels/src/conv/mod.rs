//! Convolution building blocks: im2col / col2im and 2-D pooling, in two
//! memory orders over one window geometry.
//!
//! * [`Window`] (this file): the sliding-window geometry shared by both
//!   orders, its checks and the output sizes;
//! * [`nchw`]: PyTorch's `(n, c, h, w)` order (training; re-exported here:
//!   `conv::im2col`, `conv::max_pool2d`, ...);
//! * [`nhwc`]: channels-last, for the int8 runtime's convolutions.

use crate::error::Result;
use crate::exec::Ctx;

pub mod nchw;
pub mod nhwc;

pub use nchw::{
    avg_pool2d, avg_pool2d_backward, col2im, im2col, max_pool2d, max_pool2d_backward, Accumulate,
};

/// Geometry of a 2-D sliding window over an `(n, c, h, w)` tensor (the
/// memory order, NCHW or NHWC, is the kernel's).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Window {
    /// Batch, channels, input height, input width.
    pub n: usize,
    pub c: usize,
    pub h: usize,
    pub w: usize,
    /// Kernel height and width.
    pub kh: usize,
    pub kw: usize,
    /// Strides.
    pub sh: usize,
    pub sw: usize,
    /// Zero padding on each side.
    pub ph: usize,
    pub pw: usize,
}

impl Window {
    /// Calls `f(pixel)` with the input pixel index `iy·w + ix` of every tap
    /// of output pixel `(oy, ox)`'s window that falls inside the image, in
    /// kernel order; taps on the padding are skipped (the pooling loops).
    #[inline(always)]
    pub fn for_each_tap(&self, oy: usize, ox: usize, mut f: impl FnMut(usize)) {
        for ky in 0..self.kh {
            let iy = (oy * self.sh + ky) as isize - self.ph as isize;
            if iy < 0 || iy as usize >= self.h {
                continue;
            }
            for kx in 0..self.kw {
                let ix = (ox * self.sw + kx) as isize - self.pw as isize;
                if ix < 0 || ix as usize >= self.w {
                    continue;
                }
                f(iy as usize * self.w + ix as usize);
            }
        }
    }

    /// The geometry of an `(n, c, h, w)` input with kernel `k`, stride `s`
    /// and padding `p` given as `(height, width)` pairs.
    pub fn new(
        n: usize,
        c: usize,
        h: usize,
        w: usize,
        k: (usize, usize),
        s: (usize, usize),
        p: (usize, usize),
    ) -> Window {
        Window {
            n,
            c,
            h,
            w,
            kh: k.0,
            kw: k.1,
            sh: s.0,
            sw: s.1,
            ph: p.0,
            pw: p.1,
        }
    }

    /// [`Window::check`] for pooling, which also needs every window to hold
    /// at least one real input (padding at most half the kernel).
    pub fn check_pool(self) -> Result<Self> {
        let win = self.check()?;
        if win.ph * 2 > win.kh || win.pw * 2 > win.kw {
            return crate::value_err!(
                "padding ({}, {}) must be at most half the kernel size ({}, {})",
                win.ph,
                win.pw,
                win.kh,
                win.kw
            );
        }
        Ok(win)
    }

    /// Checks the geometry and returns it with the output size computed.
    pub fn check(self) -> Result<Self> {
        if self.kh == 0 || self.kw == 0 {
            return crate::value_err!("kernel size must be >= 1; got ({}, {})", self.kh, self.kw);
        }
        if self.sh == 0 || self.sw == 0 {
            return crate::value_err!("stride must be >= 1; got ({}, {})", self.sh, self.sw);
        }
        let hp = self.ph.checked_mul(2).and_then(|p| self.h.checked_add(p));
        let wp = self.pw.checked_mul(2).and_then(|p| self.w.checked_add(p));
        match (hp, wp) {
            (Some(hp), Some(wp)) if hp >= self.kh && wp >= self.kw => {}
            _ => {
                return crate::shape_err!(
                    "kernel ({}, {}) is larger than the padded input ({} + 2*{}, {} + 2*{})",
                    self.kh,
                    self.kw,
                    self.h,
                    self.ph,
                    self.w,
                    self.pw
                )
            }
        }
        if self
            .n
            .checked_mul(self.c)
            .and_then(|v| v.checked_mul(self.h))
            .and_then(|v| v.checked_mul(self.w))
            .is_none()
        {
            return crate::shape_err!(
                "input shape ({}, {}, {}, {}) overflows",
                self.n,
                self.c,
                self.h,
                self.w
            );
        }
        // Every size the kernels derive from the window (`out_len`, `cols_shape` and their
        // product) is checked here once, so the unchecked accessors below cannot wrap.
        let (oh, ow) = (self.oh(), self.ow());
        let sizes = self
            .n
            .checked_mul(oh)
            .and_then(|v| v.checked_mul(ow))
            .and_then(|rows| {
                let taps = self.c.checked_mul(self.kh)?.checked_mul(self.kw)?;
                rows.checked_mul(taps)?;
                rows.checked_mul(self.c)
            });
        if sizes.is_none() {
            return crate::shape_err!(
                "the output of a ({}, {}) window with stride ({}, {}) and padding ({}, {}) over \
                 ({}, {}, {}, {}) has more elements than memory can address",
                self.kh,
                self.kw,
                self.sh,
                self.sw,
                self.ph,
                self.pw,
                self.n,
                self.c,
                self.h,
                self.w
            );
        }
        Ok(self)
    }

    /// Output height.
    pub fn oh(&self) -> usize {
        (self.h + 2 * self.ph - self.kh) / self.sh + 1
    }

    /// Output width.
    pub fn ow(&self) -> usize {
        (self.w + 2 * self.pw - self.kw) / self.sw + 1
    }

    /// Elements of the input.
    pub fn in_len(&self) -> usize {
        self.n * self.c * self.h * self.w
    }

    /// Elements of a pooled output `(n, c, oh, ow)`.
    pub fn out_len(&self) -> usize {
        self.n * self.c * self.oh() * self.ow()
    }

    /// `(rows, cols)` of the im2col matrix.
    pub fn cols_shape(&self) -> (usize, usize) {
        (self.n * self.oh() * self.ow(), self.c * self.kh * self.kw)
    }

    /// Input coordinate of output index `o` and kernel tap `k` along one axis,
    /// or `None` when it falls in the padding.
    #[inline(always)]
    pub(crate) fn src(o: usize, k: usize, s: usize, p: usize, len: usize) -> Option<usize> {
        let i = (o * s + k).checked_sub(p)?;
        (i < len).then_some(i)
    }
}

pub(crate) fn check_len(got: usize, want: usize, name: &str) -> Result<()> {
    if got != want {
        return crate::shape_err!("{name} has {got} elements; the shape needs {want}");
    }
    Ok(())
}

/// The memory order of an image batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Layout {
    /// `(n, c, h, w)`, PyTorch's order.
    Nchw,
    /// `(n, h, w, c)`, channels last.
    Nhwc,
}

impl Window {
    /// The window of an image batch of `shape` stored in `layout`.
    pub fn of_shape(
        shape: &[usize],
        layout: Layout,
        k: (usize, usize),
        s: (usize, usize),
        p: (usize, usize),
    ) -> Result<Window> {
        let &[a, b, c, d] = shape else {
            return crate::shape_err!("images must be 4-D; got shape {shape:?}");
        };
        Ok(match layout {
            Layout::Nchw => Window::new(a, b, c, d, k, s, p),
            Layout::Nhwc => Window::new(a, d, b, c, k, s, p),
        })
    }
}

/// The im2col unfold of `x` in `layout` (see [`nchw::im2col`] and
/// [`nhwc::im2col`] for the column orders); positions in the padding take `pad`.
pub fn unfold<T: Copy + Send + Sync>(
    ctx: &Ctx,
    layout: Layout,
    x: &[T],
    win: Window,
    pad: T,
) -> Result<Vec<T>> {
    match layout {
        Layout::Nchw => nchw::im2col(ctx, x, win, pad),
        Layout::Nhwc => nhwc::im2col(ctx, x, win, pad),
    }
}

/// The column matrix of an unfold of `x` over `win` (checked), filled with
/// `pad`: `(oh·ow·n) × (c·kh·kw)` elements, whatever the memory order.
pub(crate) fn unfold_buffer<T: Copy>(
    x_len: usize,
    win: Window,
    pad: T,
) -> Result<(Window, Vec<T>)> {
    let win = win.check()?;
    check_len(x_len, win.in_len(), "x")?;
    let (rows, k) = win.cols_shape();
    let total = rows
        .checked_mul(k)
        .ok_or_else(|| crate::error::Error::Shape("im2col output overflows".into()))?;
    Ok((
        win,
        crate::error::try_vec(total, pad, "the im2col columns")?,
    ))
}
