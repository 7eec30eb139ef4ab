//! Runtime CPU feature dispatch.
//!
//! [`active`] is decided once per process: the best ISA this CPU has, or the one
//! pinned by `HWREG_FORCE_ISA=generic|avx2|avx512vnni`. Kernel families match on
//! the returned [`Isa`] and call `#[target_feature]` trampolines; nothing else in
//! the crate tests CPU features.

use std::sync::atomic::{AtomicU8, Ordering};

/// An instruction-set path. Ordered from most portable to most specialised.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Isa {
    /// Portable Rust, auto-vectorised by the compiler for the baseline target.
    Generic,
    /// x86-64 AVX2 + FMA (Haswell, Zen and later).
    Avx2,
    /// x86-64 AVX-512 F/BW/VL with VNNI (Ice Lake, Sapphire Rapids, Zen 4 and later).
    Avx512Vnni,
}

impl Isa {
    pub const ALL: [Isa; 3] = [Isa::Generic, Isa::Avx2, Isa::Avx512Vnni];

    pub fn name(self) -> &'static str {
        match self {
            Isa::Generic => "generic",
            Isa::Avx2 => "avx2",
            Isa::Avx512Vnni => "avx512vnni",
        }
    }

    pub fn from_name(name: &str) -> Option<Isa> {
        Isa::ALL
            .into_iter()
            .find(|i| i.name() == name.trim().to_ascii_lowercase())
    }

    /// Whether this CPU can run the path.
    pub fn is_supported(self) -> bool {
        match self {
            Isa::Generic => true,
            #[cfg(target_arch = "x86_64")]
            Isa::Avx2 => is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma"),
            #[cfg(target_arch = "x86_64")]
            Isa::Avx512Vnni => {
                is_x86_feature_detected!("avx512f")
                    && is_x86_feature_detected!("avx512bw")
                    && is_x86_feature_detected!("avx512vl")
                    && is_x86_feature_detected!("avx512vnni")
                    && Isa::Avx2.is_supported()
            }
            #[cfg(not(target_arch = "x86_64"))]
            _ => false,
        }
    }
}

/// Every path this CPU supports, most portable first.
pub fn supported() -> Vec<Isa> {
    Isa::ALL.into_iter().filter(|i| i.is_supported()).collect()
}

/// The best supported path.
pub fn best() -> Isa {
    *supported().last().unwrap_or(&Isa::Generic)
}

const UNSET: u8 = u8::MAX;
static ACTIVE: AtomicU8 = AtomicU8::new(UNSET);

/// The path kernels use: set by [`force`], else `HWREG_FORCE_ISA` when it names a
/// supported path, else [`best`]. Decided once, on first use.
///
/// An unknown or unsupported `HWREG_FORCE_ISA` falls back to the best path; the
/// Python layer checks the variable at import and warns about it.
pub fn active() -> Isa {
    let v = ACTIVE.load(Ordering::Relaxed);
    if v != UNSET {
        return Isa::ALL[v as usize];
    }
    let chosen = std::env::var("HWREG_FORCE_ISA")
        .ok()
        .and_then(|v| Isa::from_name(&v))
        .filter(|i| i.is_supported())
        .unwrap_or_else(best);
    ACTIVE.store(chosen as u8, Ordering::Relaxed);
    chosen
}

/// Pins the path for the rest of the process (tests use it to cover every path
/// in one run). Kernels must keep packed data valid across paths, so switching
/// is always safe. Returns `false`, changing nothing, if the CPU lacks `isa`.
pub fn force(isa: Isa) -> bool {
    if !isa.is_supported() {
        return false;
    }
    ACTIVE.store(isa as u8, Ordering::Relaxed);
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip() {
        for i in Isa::ALL {
            assert_eq!(Isa::from_name(i.name()), Some(i));
        }
        assert_eq!(Isa::from_name(" AVX2 "), Some(Isa::Avx2));
        assert_eq!(Isa::from_name("sse9"), None);
    }

    #[test]
    fn generic_always_supported_and_active_supported() {
        assert!(Isa::Generic.is_supported());
        assert!(active().is_supported());
        assert!(supported().contains(&best()));
    }
}
