//! The portable path of the int4 family: the reference tile body.

pub(crate) const KERNELS: super::Kernels = super::Kernels { tile };

/// # Safety
/// As for [`super::TileFn`].
unsafe fn tile(j: &super::Job<'_>) {
    super::tile_body(j)
}
