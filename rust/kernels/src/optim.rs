//! Fused optimizer updates (f32): one pass over weight, gradient and state
//! instead of the five or six array passes NumPy needs.
//!
//! The arithmetic follows PyTorch's single-tensor (`foreach=False`) updates in
//! the same order of operations, so results agree with a NumPy float32
//! implementation to within rounding of the individual operations.

use crate::error::Result;

fn same_len(n: usize, others: &[(usize, &str)]) -> Result<()> {
    for &(m, name) in others {
        if m != n {
            return crate::shape_err!("{name} has {m} elements; the weight has {n}");
        }
    }
    Ok(())
}

/// Hyper-parameters of one Adam / AdamW step.
#[derive(Debug, Clone, Copy)]
pub struct AdamStep {
    pub lr: f32,
    pub beta1: f32,
    pub beta2: f32,
    pub eps: f32,
    pub weight_decay: f32,
    /// AdamW: decay the weight (`w *= 1 - lr·wd`) instead of adding `wd·w` to the gradient.
    pub decoupled: bool,
    /// `1 - beta1^t` and `sqrt(1 - beta2^t)` for this step `t`.
    pub bias_correction1: f32,
    pub bias_correction2_sqrt: f32,
}

/// `torch.optim.Adam` / `AdamW` update of `w` in place, with state `m` (exp_avg) and `v` (exp_avg_sq).
pub fn adam_step(
    w: &mut [f32],
    g: &[f32],
    m: &mut [f32],
    v: &mut [f32],
    h: AdamStep,
) -> Result<()> {
    same_len(
        w.len(),
        &[
            (g.len(), "grad"),
            (m.len(), "exp_avg"),
            (v.len(), "exp_avg_sq"),
        ],
    )?;
    if !(h.bias_correction1 > 0.0 && h.bias_correction2_sqrt > 0.0) {
        return crate::value_err!("bias corrections must be > 0");
    }
    let step = h.lr / h.bias_correction1;
    let decay = 1.0 - h.lr * h.weight_decay;
    let (b1, b2, c1, c2) = (h.beta1, h.beta2, 1.0 - h.beta1, 1.0 - h.beta2);
    let wd = if h.decoupled { 0.0 } else { h.weight_decay };
    for (((wi, &gi), mi), vi) in w.iter_mut().zip(g).zip(m.iter_mut()).zip(v.iter_mut()) {
        if h.decoupled {
            *wi *= decay;
        }
        let gi = if wd != 0.0 { gi + wd * *wi } else { gi };
        *mi = b1 * *mi + c1 * gi;
        *vi = b2 * *vi + c2 * (gi * gi);
        let denom = vi.sqrt() / h.bias_correction2_sqrt + h.eps;
        *wi -= step * (*mi / denom);
    }
    Ok(())
}

/// `torch.optim.SGD` update with momentum buffer `buf` (already initialised to the
/// first gradient by the caller on step 1, as PyTorch does).
#[allow(clippy::too_many_arguments)]
pub fn sgd_momentum_step(
    w: &mut [f32],
    g: &[f32],
    buf: &mut [f32],
    lr: f32,
    momentum: f32,
    dampening: f32,
    weight_decay: f32,
    nesterov: bool,
) -> Result<()> {
    same_len(
        w.len(),
        &[(g.len(), "grad"), (buf.len(), "momentum_buffer")],
    )?;
    let c = 1.0 - dampening;
    for ((wi, &gi), bi) in w.iter_mut().zip(g).zip(buf.iter_mut()) {
        let d = if weight_decay != 0.0 {
            gi + weight_decay * *wi
        } else {
            gi
        };
        *bi = momentum * *bi + c * d;
        let upd = if nesterov { d + momentum * *bi } else { *bi };
        *wi -= lr * upd;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn adam_matches_the_formula() {
        let mut w = vec![1.0f32, -2.0, 0.5];
        let g = [0.1f32, -0.3, 0.0];
        let mut m = vec![0.0f32; 3];
        let mut v = vec![0.0f32; 3];
        let h = AdamStep {
            lr: 0.1,
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
            weight_decay: 0.0,
            decoupled: false,
            bias_correction1: 0.1,
            bias_correction2_sqrt: (0.001f32).sqrt(),
        };
        adam_step(&mut w, &g, &mut m, &mut v, h).unwrap();
        // first step of Adam moves every weight with a non-zero gradient by ~lr against its sign
        assert!((w[0] - 0.9).abs() < 1e-5 && (w[1] + 1.9).abs() < 1e-5 && w[2] == 0.5);
        assert_eq!(m[2], 0.0);
        assert!(adam_step(&mut w, &g[..2], &mut m, &mut v, h).is_err());
    }

    #[test]
    fn sgd_momentum_and_nesterov() {
        let mut w = vec![1.0f32];
        let mut buf = vec![0.5f32];
        sgd_momentum_step(&mut w, &[1.0], &mut buf, 0.1, 0.9, 0.0, 0.0, false).unwrap();
        assert!((buf[0] - 1.45).abs() < 1e-6 && (w[0] - 0.855).abs() < 1e-6);
        let mut w = vec![1.0f32];
        let mut buf = vec![0.5f32];
        sgd_momentum_step(&mut w, &[1.0], &mut buf, 0.1, 0.9, 0.0, 0.0, true).unwrap();
        assert!((w[0] - (1.0 - 0.1 * (1.0 + 0.9 * 1.45))).abs() < 1e-6);
        assert!(
            sgd_momentum_step(&mut w, &[1.0, 2.0], &mut buf, 0.1, 0.9, 0.0, 0.0, true).is_err()
        );
    }
}
