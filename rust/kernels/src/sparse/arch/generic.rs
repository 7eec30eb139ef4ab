//! The portable path of the sparse family (no fused multiply-add, so the
//! float results are those of plain `c + a * b`).

super::table!(generic, false);
