//! CPU features and the one dispatch table of every kernel family.
//!
//! This module is the only place that names an instruction-set path and
//! matches on one (as ONNX Runtime's MLAS fills every `*Dispatch` in one
//! constructor in `platform.cpp`):
//!
//! * [`Isa`]: the named paths (`generic`, `avx2`, `avx512`, `avx512vnni`);
//!   each is a *feature set*, spelled once in `isa_features!`, not a rung of
//!   a ladder: a path is supported when the CPU has every feature of its set.
//! * [`Dispatch`]: one entry-point table per kernel family (quantization,
//!   GEMM, sparse products, pruning), built at compile time for every path;
//!   [`dispatch`] hands out the table of the active path.
//! * [`active`] is decided once per process: the best supported path, or the
//!   one `HWREG_FORCE_ISA=generic|avx2|avx512|avx512vnni` pins; [`force`]
//!   switches it (tests cover every path in one process that way).
//!
//! The per-ISA code of a family sits in its `arch/` folder (`quant/arch`,
//! `gemm/arch`, `sparse/arch`, `prune/arch`): `#[target_feature]` wrappers,
//! emitted by `isa_fns!`, over generic `#[inline(always)]` bodies, plus
//! the few intrinsic kernels. Everything outside `cpu/` and `arch/` is
//! portable and never names an ISA. See `docs/architecture.md` for how to add
//! a path.

use std::sync::atomic::{AtomicU8, Ordering};

/// The feature set of every x86 path, spelled once.
///
/// * `isa_features!(avx2)` is the set as a `#[target_feature]` string;
/// * `isa_features!(avx2 fns ITEMS)` puts `#[target_feature(enable = SET)]`
///   on every item (see `isa_fns!`).
macro_rules! isa_features {
    (generic $($rest:tt)*) => { $crate::cpu::isa_features! {@ "" $($rest)*} };
    (avx2 $($rest:tt)*) => { $crate::cpu::isa_features! {@ "avx2,fma" $($rest)*} };
    (avx512 $($rest:tt)*) => {
        $crate::cpu::isa_features! {@ "avx2,fma,avx512f,avx512bw,avx512vl" $($rest)*}
    };
    (avx512vnni $($rest:tt)*) => {
        $crate::cpu::isa_features! {@ "avx2,fma,avx512f,avx512bw,avx512vl,avx512vnni" $($rest)*}
    };
    (@ "" fns $($item:item)*) => { $($item)* };
    (@ $set:literal fns $($item:item)*) => { $(#[target_feature(enable = $set)] $item)* };
    (@ $set:literal) => { $set };
}
pub(crate) use isa_features;

/// `isa_fns!(avx2; unsafe fn f(..) { body(..) } ...)`: the `#[target_feature]`
/// wrappers of one path (nothing is added for `generic`). The bodies they
/// call are `#[inline(always)]` generic code, which the compiler then
/// vectorises for the enabled features.
macro_rules! isa_fns {
    ($isa:ident; $($item:item)*) => { $crate::cpu::isa_features! {$isa fns $($item)*} };
}
pub(crate) use isa_fns;

/// An instruction-set path: a named feature set.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Isa {
    /// Portable Rust, auto-vectorised by the compiler for the baseline target.
    Generic,
    /// x86-64 AVX2 + FMA (Haswell, Zen and later).
    Avx2,
    /// x86-64 AVX-512 F/BW/VL (Skylake-SP and later; AVX2 + FMA included).
    Avx512,
    /// AVX-512 F/BW/VL with VNNI (Ice Lake, Sapphire Rapids, Zen 4 and later).
    Avx512Vnni,
}

impl Isa {
    /// Every path, most portable first ([`best`] takes the last supported).
    pub const ALL: [Isa; 4] = [Isa::Generic, Isa::Avx2, Isa::Avx512, Isa::Avx512Vnni];

    pub fn name(self) -> &'static str {
        match self {
            Isa::Generic => "generic",
            Isa::Avx2 => "avx2",
            Isa::Avx512 => "avx512",
            Isa::Avx512Vnni => "avx512vnni",
        }
    }

    pub fn from_name(name: &str) -> Option<Isa> {
        let name = name.trim().to_ascii_lowercase();
        Isa::ALL.into_iter().find(|i| i.name() == name)
    }

    /// The `#[target_feature]` set of the path ("" for generic).
    pub fn features(self) -> &'static str {
        match self {
            Isa::Generic => isa_features!(generic),
            Isa::Avx2 => isa_features!(avx2),
            Isa::Avx512 => isa_features!(avx512),
            Isa::Avx512Vnni => isa_features!(avx512vnni),
        }
    }

    /// Whether this CPU has every feature of the path.
    pub fn is_supported(self) -> bool {
        self.features()
            .split(',')
            .filter(|f| !f.is_empty())
            .all(has_feature)
    }
}

/// Whether the CPU has one `#[target_feature]` name (detected once by std).
fn has_feature(name: &str) -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        match name {
            "avx2" => std::arch::is_x86_feature_detected!("avx2"),
            "fma" => std::arch::is_x86_feature_detected!("fma"),
            "avx512f" => std::arch::is_x86_feature_detected!("avx512f"),
            "avx512bw" => std::arch::is_x86_feature_detected!("avx512bw"),
            "avx512vl" => std::arch::is_x86_feature_detected!("avx512vl"),
            "avx512vnni" => std::arch::is_x86_feature_detected!("avx512vnni"),
            _ => false,
        }
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        let _ = name;
        false
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
/// in one run). Packed data is valid on every path, so switching is always
/// safe. Returns `false`, changing nothing, if the CPU lacks `isa`.
pub fn force(isa: Isa) -> bool {
    if !isa.is_supported() {
        return false;
    }
    ACTIVE.store(isa as u8, Ordering::Relaxed);
    true
}

/// The entry points of every kernel family for one path.
///
/// Each family's table type lives in its `arch/mod.rs`; the entries are safe
/// functions because a table is only handed out (by [`dispatch`]) for a path
/// the CPU supports.
pub struct Dispatch {
    pub isa: Isa,
    pub(crate) quant: crate::quant::arch::Kernels,
    pub(crate) gemm: crate::gemm::arch::Kernels,
    pub(crate) sparse: crate::sparse::arch::Kernels,
    pub(crate) prune: crate::prune::arch::Kernels,
    pub(crate) int4: crate::int4::arch::Kernels,
    pub(crate) nnops: crate::nnops::arch::Kernels,
    pub(crate) depthwise: crate::depthwise::arch::Kernels,
}

/// The table of each path (indexed by `Isa as usize`), built at compile time.
/// The one `match` of a path onto the families' `arch/` code.
static TABLES: [Dispatch; 4] = [
    table(Isa::Generic),
    table(Isa::Avx2),
    table(Isa::Avx512),
    table(Isa::Avx512Vnni),
];

const fn table(isa: Isa) -> Dispatch {
    use crate::{depthwise, gemm, int4, nnops, prune, quant, sparse};
    match isa {
        #[cfg(target_arch = "x86_64")]
        Isa::Avx2 => Dispatch {
            isa,
            quant: quant::arch::x86_avx2::KERNELS,
            gemm: gemm::arch::x86_avx2::KERNELS,
            sparse: sparse::arch::x86_avx2::KERNELS,
            prune: prune::arch::x86_avx2::KERNELS,
            int4: int4::arch::x86_avx2::KERNELS,
            nnops: nnops::arch::x86_avx2::KERNELS,
            depthwise: depthwise::arch::x86_avx2::KERNELS,
        },
        #[cfg(target_arch = "x86_64")]
        Isa::Avx512 => Dispatch {
            isa,
            quant: quant::arch::x86_avx512::KERNELS,
            // No AVX-512 GEMM without VNNI: the exact AVX2 kernel.
            gemm: gemm::arch::x86_avx2::KERNELS,
            sparse: sparse::arch::x86_avx512::KERNELS,
            prune: prune::arch::x86_avx2::KERNELS,
            // No int4 kernel of its own without VNNI: the exact AVX2 one.
            int4: int4::arch::x86_avx2::KERNELS,
            nnops: nnops::arch::x86_avx512::KERNELS,
            depthwise: depthwise::arch::x86_avx512::KERNELS,
        },
        #[cfg(target_arch = "x86_64")]
        Isa::Avx512Vnni => Dispatch {
            isa,
            quant: quant::arch::x86_avx512::KERNELS,
            gemm: gemm::arch::x86_avx512vnni::KERNELS,
            sparse: sparse::arch::x86_avx512vnni::KERNELS,
            prune: prune::arch::x86_avx2::KERNELS,
            int4: int4::arch::x86_avx512vnni::KERNELS,
            nnops: nnops::arch::x86_avx512::KERNELS,
            depthwise: depthwise::arch::x86_avx512vnni::KERNELS,
        },
        // Generic, and every path this target cannot run (never active).
        #[allow(unreachable_patterns)]
        _ => Dispatch {
            isa: Isa::Generic,
            quant: quant::arch::generic::KERNELS,
            gemm: gemm::arch::generic::KERNELS,
            sparse: sparse::arch::generic::KERNELS,
            prune: prune::arch::generic::KERNELS,
            int4: int4::arch::generic::KERNELS,
            nnops: nnops::arch::generic::KERNELS,
            depthwise: depthwise::arch::generic::KERNELS,
        },
    }
}

/// The kernel tables of the active path.
#[inline]
pub fn dispatch() -> &'static Dispatch {
    &TABLES[active() as usize]
}

/// Hints the CPU to fetch the cache line at `p` (a no-op where the target
/// has no portable prefetch; SSE is part of x86-64).
#[inline(always)]
pub(crate) fn prefetch(p: *const u8) {
    #[cfg(target_arch = "x86_64")]
    // SAFETY: a prefetch never faults, whatever the address.
    unsafe {
        std::arch::x86_64::_mm_prefetch::<{ std::arch::x86_64::_MM_HINT_T0 }>(p as *const i8)
    };
    #[cfg(not(target_arch = "x86_64"))]
    let _ = p;
}

/// Runs `f` once on every path this CPU supports (skipping the others),
/// then restores the active path. [`force`] is process-wide, so the tests
/// that switch paths take one lock and run one at a time.
#[cfg(test)]
pub(crate) fn each_isa(mut f: impl FnMut(Isa)) {
    static LOCK: std::sync::Mutex<()> = std::sync::Mutex::new(());
    let _g = LOCK.lock().unwrap_or_else(|p| p.into_inner());
    let before = active();
    for i in Isa::ALL {
        if !force(i) {
            eprintln!("skipping {}: not supported by this CPU", i.name());
            continue;
        }
        f(i);
    }
    force(before);
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

    #[test]
    fn each_table_belongs_to_its_path() {
        for i in Isa::ALL {
            let t = &TABLES[i as usize];
            assert!(t.isa == i || (t.isa == Isa::Generic && !i.is_supported()));
        }
    }

    /// The rule of this module, checked: no source file outside `cpu/` and
    /// the families' `arch/` folders names an instruction set or uses its
    /// intrinsics (test files aside: they may name a path to time it).
    #[test]
    fn no_isa_code_outside_cpu_and_arch() {
        fn walk(dir: &std::path::Path, out: &mut Vec<std::path::PathBuf>) {
            for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
                let p = e.path();
                if p.is_dir() {
                    walk(&p, out);
                } else if p.extension().is_some_and(|x| x == "rs") {
                    out.push(p);
                }
            }
        }
        let src = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
        let mut files = Vec::new();
        walk(&src, &mut files);
        assert!(
            files.len() > 20,
            "found only {} sources under {src:?}",
            files.len()
        );
        let needles = [
            "target_feature",
            "std::arch",
            "core::arch",
            "_feature_detected",
            "_mm_",
            "_mm256_",
            "_mm512_",
            "Isa::Avx",
        ];
        let mut bad = Vec::new();
        for f in &files {
            let rel = f
                .strip_prefix(&src)
                .unwrap_or(f)
                .to_string_lossy()
                .replace('\\', "/");
            if rel.starts_with("cpu/") || rel.contains("/arch/") || rel.ends_with("tests.rs") {
                continue;
            }
            let text = std::fs::read_to_string(f).unwrap_or_default();
            for (i, line) in text.lines().enumerate() {
                let code = line.split("//").next().unwrap_or("");
                if let Some(n) = needles.iter().find(|n| code.contains(*n)) {
                    bad.push(format!("{rel}:{}: {n}", i + 1));
                }
            }
        }
        assert!(bad.is_empty(), "ISA code outside cpu/ and arch/: {bad:#?}");
    }

    #[test]
    fn feature_sets_nest() {
        // A CPU with a wider path has the narrower ones' features too.
        for (a, b) in [(Isa::Avx2, Isa::Avx512), (Isa::Avx512, Isa::Avx512Vnni)] {
            assert!(a.features().split(',').all(|f| b.features().contains(f)));
        }
    }
}
