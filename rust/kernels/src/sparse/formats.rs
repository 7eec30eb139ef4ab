//! Storage formats: block CSR (CSR is the 1×1 case) and compressed N:M.
//!
//! Values are `f32` or `i8`. An `i8` matrix carries one symmetric scale per
//! output row (`w ≈ q · scale[row]`) and the per-row sums of `q` and of `|q|`:
//! the sum folds the activation zero point out of the inner loop, the absolute
//! sum proves at build time that the int32 accumulator cannot overflow.
//!
//! Fields are private to the `sparse` module: a matrix is only made by
//! `from_dense`, so the kernels may rely on its invariants (block columns in
//! range, `indptr` monotone, value counts matching) without re-checking them.

use crate::error::{try_vec, try_with_capacity, Result};
use crate::{shape_err, value_err};

/// An element of a sparse matrix.
pub trait Elem: Copy + Default + PartialEq + Send + Sync + 'static {
    fn is_zero(self) -> bool {
        self == Self::default()
    }
}
impl Elem for f32 {
    fn is_zero(self) -> bool {
        self == 0.0
    }
}
impl Elem for i8 {}

/// Block CSR: `rows × cols` split into `r × c` blocks (edges padded with
/// zeros); only blocks holding a kept nonzero are stored, row-major inside.
/// CSR is `r = c = 1`.
#[derive(Debug, Clone)]
pub struct Bsr<T> {
    pub(super) rows: usize,
    pub(super) cols: usize,
    pub(super) r: usize,
    pub(super) c: usize,
    /// Per block row, the range of its blocks in `bcol` (length `brows + 1`).
    pub(super) indptr: Vec<u32>,
    /// Block column of each stored block (in units of `c`).
    pub(super) bcol: Vec<u32>,
    /// `r * c` values per stored block.
    pub(super) values: Vec<T>,
}

/// Compressed N:M along the input axis: in every group of `m` consecutive
/// columns at most `n` entries are nonzero; each group stores exactly `n`
/// values (zero-filled) and their offsets inside the group.
#[derive(Debug, Clone)]
pub struct Nm<T> {
    pub(super) rows: usize,
    pub(super) cols: usize,
    pub(super) n: usize,
    pub(super) m: usize,
    /// `rows * (cols / m) * n` values.
    pub(super) values: Vec<T>,
    /// Offset in `0..m` of each value.
    pub(super) offsets: Vec<u8>,
}

/// Per-row quantization data of an int8 matrix.
#[derive(Debug, Clone)]
pub struct RowQuant {
    pub(super) scale: Vec<f32>,
    pub(super) sum: Vec<i32>,
}

impl RowQuant {
    /// Per-row weight scales.
    pub fn scale(&self) -> &[f32] {
        &self.scale
    }
}

pub const BLOCK_ROWS: [usize; 5] = [1, 2, 4, 8, 16];
pub const MAX_BLOCK_COLS: usize = 64;

fn check_dense<T>(w: &[T], rows: usize, cols: usize, mask: Option<&[bool]>) -> Result<()> {
    if rows.checked_mul(cols) != Some(w.len()) {
        return shape_err!("weight has {} elements, expected {rows}x{cols}", w.len());
    }
    if let Some(m) = mask {
        if m.len() != w.len() {
            return shape_err!(
                "mask has {} elements but the weight has {}",
                m.len(),
                w.len()
            );
        }
    }
    if rows >= u32::MAX as usize || cols >= u32::MAX as usize {
        return shape_err!("matrix of {rows}x{cols} is too large (each side < 2^32 - 1)");
    }
    Ok(())
}

#[inline]
fn kept<T: Elem>(w: &[T], mask: Option<&[bool]>, i: usize) -> T {
    if mask.map_or(true, |m| m[i]) {
        w[i]
    } else {
        T::default()
    }
}

impl<T: Elem> Bsr<T> {
    /// Builds from a dense row-major `rows × cols` matrix; entries where `mask`
    /// is false count as zero.
    pub fn from_dense(
        w: &[T],
        rows: usize,
        cols: usize,
        mask: Option<&[bool]>,
        r: usize,
        c: usize,
    ) -> Result<Self> {
        check_dense(w, rows, cols, mask)?;
        if !BLOCK_ROWS.contains(&r) || c == 0 || c > MAX_BLOCK_COLS {
            return value_err!(
                "block ({r}, {c}) not supported: rows per block must be one of {BLOCK_ROWS:?} and columns 1..={MAX_BLOCK_COLS}"
            );
        }
        let brows = rows.div_ceil(r);
        let bcols = cols.div_ceil(c);
        let mut indptr = try_with_capacity(brows.saturating_add(1), "the BSR row pointers")?;
        indptr.push(0u32);
        let mut bcol = Vec::new();
        let mut values = Vec::new();
        let mut blk = vec![T::default(); r * c];
        for br in 0..brows {
            for bc in 0..bcols {
                let mut any = false;
                for rr in 0..r {
                    let row = br * r + rr;
                    for cc in 0..c {
                        let col = bc * c + cc;
                        let v = if row < rows && col < cols {
                            kept(w, mask, row * cols + col)
                        } else {
                            T::default()
                        };
                        any |= !v.is_zero();
                        blk[rr * c + cc] = v;
                    }
                }
                if any {
                    bcol.push(bc as u32);
                    values.extend_from_slice(&blk);
                }
            }
            if bcol.len() > u32::MAX as usize {
                return shape_err!("too many stored blocks (at most 2^32 - 1)");
            }
            indptr.push(bcol.len() as u32);
        }
        Ok(Bsr {
            rows,
            cols,
            r,
            c,
            indptr,
            bcol,
            values,
        })
    }

    pub fn rows(&self) -> usize {
        self.rows
    }
    pub fn cols(&self) -> usize {
        self.cols
    }
    /// Block shape `(r, c)`.
    pub fn block(&self) -> (usize, usize) {
        (self.r, self.c)
    }
    /// Stored values, block padding included.
    pub fn stored(&self) -> usize {
        self.values.len()
    }

    pub fn brows(&self) -> usize {
        self.rows.div_ceil(self.r)
    }

    /// Stored blocks.
    pub fn nblocks(&self) -> usize {
        self.bcol.len()
    }

    /// Nonzero stored values.
    pub fn nnz(&self) -> usize {
        self.values.iter().filter(|v| !v.is_zero()).count()
    }

    pub fn to_dense(&self) -> Vec<T> {
        let mut d = vec![T::default(); self.rows * self.cols];
        let (r, c) = (self.r, self.c);
        for br in 0..self.brows() {
            for j in self.indptr[br] as usize..self.indptr[br + 1] as usize {
                let bc = self.bcol[j] as usize;
                for rr in 0..r {
                    for cc in 0..c {
                        let (row, col) = (br * r + rr, bc * c + cc);
                        if row < self.rows && col < self.cols {
                            d[row * self.cols + col] = self.values[j * r * c + rr * c + cc];
                        }
                    }
                }
            }
        }
        d
    }

    pub fn nbytes(&self) -> usize {
        4 * (self.indptr.len() + self.bcol.len()) + std::mem::size_of::<T>() * self.values.len()
    }

    /// Calls `f(row, value)` for every stored value (padding included).
    pub fn for_each_row_value(&self, mut f: impl FnMut(usize, T)) {
        let (r, c) = (self.r, self.c);
        for br in 0..self.brows() {
            for j in self.indptr[br] as usize..self.indptr[br + 1] as usize {
                for rr in 0..r {
                    let row = br * r + rr;
                    if row < self.rows {
                        for cc in 0..c {
                            f(row, self.values[j * r * c + rr * c + cc]);
                        }
                    }
                }
            }
        }
    }
}

impl<T: Elem> Nm<T> {
    /// Builds from a dense row-major matrix whose kept entries (under `mask`)
    /// number at most `n` in every group of `m` consecutive columns.
    pub fn from_dense(
        w: &[T],
        rows: usize,
        cols: usize,
        mask: Option<&[bool]>,
        n: usize,
        m: usize,
    ) -> Result<Self> {
        check_dense(w, rows, cols, mask)?;
        if m == 0 || m > 255 || n == 0 || n > m {
            return value_err!("N:M needs 1 <= n <= m <= 255; got n={n}, m={m}");
        }
        if cols % m != 0 {
            return shape_err!("N:M groups of {m} do not tile {cols} input columns");
        }
        let groups = rows * (cols / m);
        let mut values = try_with_capacity(groups.saturating_mul(n), "the N:M values")?;
        let mut offsets = try_with_capacity(groups.saturating_mul(n), "the N:M offsets")?;
        for g in 0..groups {
            let base = g * m;
            let mut took = 0;
            for j in 0..m {
                let v = kept(w, mask, base + j);
                if !v.is_zero() {
                    if took == n {
                        let (row, col) = (base / cols, base % cols);
                        return value_err!(
                            "row {row}, columns {col}..{}: more than {n} nonzeros in a group of {m}",
                            col + m
                        );
                    }
                    values.push(v);
                    offsets.push(j as u8);
                    took += 1;
                }
            }
            // Fill with zeros at offsets not used, so every group has n entries.
            let mut j = 0u8;
            while took < n {
                if !offsets[offsets.len() - took..].contains(&j) {
                    values.push(T::default());
                    offsets.push(j);
                    took += 1;
                }
                j += 1;
            }
        }
        Ok(Nm {
            rows,
            cols,
            n,
            m,
            values,
            offsets,
        })
    }

    pub fn nnz(&self) -> usize {
        self.values.iter().filter(|v| !v.is_zero()).count()
    }
    pub fn rows(&self) -> usize {
        self.rows
    }
    pub fn cols(&self) -> usize {
        self.cols
    }
    /// `(n, m)`.
    pub fn pattern(&self) -> (usize, usize) {
        (self.n, self.m)
    }
    /// Stored values, zero fill included.
    pub fn stored(&self) -> usize {
        self.values.len()
    }

    pub fn to_dense(&self) -> Vec<T> {
        let mut d = vec![T::default(); self.rows * self.cols];
        for (g, (vs, os)) in self
            .values
            .chunks_exact(self.n)
            .zip(self.offsets.chunks_exact(self.n))
            .enumerate()
        {
            for (&v, &o) in vs.iter().zip(os) {
                d[g * self.m + o as usize] = v;
            }
        }
        d
    }

    pub fn nbytes(&self) -> usize {
        std::mem::size_of::<T>() * self.values.len() + self.offsets.len()
    }

    pub fn for_each_row_value(&self, mut f: impl FnMut(usize, T)) {
        let per_row = (self.cols / self.m) * self.n;
        for (i, &v) in self.values.iter().enumerate() {
            f(i / per_row.max(1), v);
        }
    }
}

/// Per-row symmetric int8 quantization of a float matrix (masked entries are
/// zero): `scale = max|w| / 127` (1 for an all-zero row), `q = round_half_even(w
/// / scale)` in [-127, 127].
pub fn quantize_rows(
    w: &[f32],
    rows: usize,
    cols: usize,
    mask: Option<&[bool]>,
) -> Result<(Vec<i8>, Vec<f32>)> {
    check_dense(w, rows, cols, mask)?;
    let mut q = try_vec(w.len(), 0i8, "the quantized weight")?;
    let mut scale = try_vec(rows, 1f32, "the weight's row scales")?;
    for row in 0..rows {
        let mut mx = 0f32;
        for i in row * cols..(row + 1) * cols {
            let v = kept(w, mask, i);
            if !v.is_finite() {
                return value_err!(
                    "weight is not finite at row {row}, column {}",
                    i - row * cols
                );
            }
            mx = mx.max(v.abs());
        }
        if mx > 0.0 {
            scale[row] = mx / 127.0;
        }
        let s = scale[row];
        for i in row * cols..(row + 1) * cols {
            q[i] = crate::gemm::output::round_even_f32((kept(w, mask, i) / s).clamp(-127.0, 127.0))
                as i8;
        }
    }
    Ok((q, scale))
}

/// Row sums of an int8 matrix (for the zero-point fold) after checking that no
/// accumulation of 255·|q| over a row can leave int32.
pub fn row_quant<F: FnOnce(&mut dyn FnMut(usize, i8))>(
    rows: usize,
    scale: Vec<f32>,
    visit: F,
) -> Result<RowQuant> {
    if scale.len() != rows {
        return shape_err!(
            "scale has {} entries, expected one per row ({rows})",
            scale.len()
        );
    }
    if let Some(s) = scale.iter().find(|s| !(s.is_finite() && **s > 0.0)) {
        return value_err!("weight scales must be finite and > 0; got {s}");
    }
    let mut sum = try_vec(rows, 0i64, "the weight's row sums")?;
    let mut abs = try_vec(rows, 0i64, "the weight's row sums")?;
    visit(&mut |row, v| {
        sum[row] += v as i64;
        abs[row] += (v as i64).abs();
    });
    if let Some(row) = abs.iter().position(|&a| a * 255 > i32::MAX as i64) {
        return value_err!(
            "row {row} of the int8 weight has sum |q| = {}: int32 accumulation could overflow (limit {})",
            abs[row],
            i32::MAX as i64 / 255
        );
    }
    Ok(RowQuant {
        scale,
        sum: sum.into_iter().map(|s| s as i32).collect(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bsr_round_trip_with_edges() {
        let (rows, cols) = (5, 7);
        let w: Vec<f32> = (0..35)
            .map(|i| if i % 3 == 0 { i as f32 } else { 0.0 })
            .collect();
        for (r, c) in [(1, 1), (1, 4), (4, 1), (2, 2), (4, 4), (8, 8), (16, 3)] {
            let b = Bsr::from_dense(&w, rows, cols, None, r, c).unwrap();
            assert_eq!(b.to_dense(), w, "block {r}x{c}");
            assert_eq!(b.nnz(), w.iter().filter(|v| **v != 0.0).count());
        }
        assert!(Bsr::from_dense(&w, rows, cols, None, 3, 1).is_err());
    }

    #[test]
    fn nm_round_trip_and_violation() {
        let w = [1.0f32, 0.0, 2.0, 0.0, 0.0, 0.0, 0.0, 3.0];
        let nm = Nm::from_dense(&w, 1, 8, None, 2, 4).unwrap();
        assert_eq!(nm.to_dense(), w);
        assert_eq!(nm.values.len(), 4);
        assert!(Nm::from_dense(&[1.0f32, 1.0, 1.0, 0.0], 1, 4, None, 2, 4).is_err());
    }
}
