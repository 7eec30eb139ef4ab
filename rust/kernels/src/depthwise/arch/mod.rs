//! The per-path code of the depthwise kernel: the task body
//! ([`super::band::run_task`]) compiled for each path (`generic.rs`,
//! `x86_avx2.rs`, `x86_avx512.rs`, `x86_avx512vnni.rs`), chosen by
//! [`crate::cpu::dispatch`].
//! The body is the same portable code on every path (exact integer sums,
//! then the shared output step), so every path writes the same bits; each
//! x86 path brings its `pmaddwd` pair product ([`super::band::Madd`]).

use super::band::Task;
use crate::gemm::output::Epilogue;

pub(crate) mod generic;
#[cfg(target_arch = "x86_64")]
pub(crate) mod x86_avx2;
#[cfg(target_arch = "x86_64")]
pub(crate) mod x86_avx512;
#[cfg(target_arch = "x86_64")]
pub(crate) mod x86_avx512vnni;

/// One task's body (see [`super::band::run_task`] for its safety contract).
#[doc(hidden)]
pub type TaskFn<T> = unsafe fn(&Task<'_>, &Epilogue<'_, T>, *mut T);

/// The depthwise entry points of one path (see [`crate::cpu::Dispatch`]).
#[doc(hidden)]
#[derive(Clone, Copy)]
pub struct Kernels {
    pub(crate) i32: TaskFn<i32>,
    pub(crate) f32: TaskFn<f32>,
    pub(crate) u8: TaskFn<u8>,
}

/// `table!(isa, Madd)`: the `#[target_feature]` wrappers of the task body
/// for `isa` with that pair product ([`super::band::Madd`]), and the
/// module's `KERNELS` table of them (handed out by [`crate::cpu::dispatch`]
/// only on CPUs that have `isa`).
macro_rules! table {
    ($isa:ident, $madd:ty) => {
        mod tf {
            use super::*;
            use $crate::depthwise::band::{run_task, Task};
            use $crate::gemm::output::Epilogue;
            $crate::cpu::isa_fns!($isa;
                pub(super) unsafe fn task_i32(t: &Task<'_>, ep: &Epilogue<'_, i32>, out: *mut i32) {
                    unsafe { run_task::<_, $madd>(t, ep, out) }
                }
                pub(super) unsafe fn task_f32(t: &Task<'_>, ep: &Epilogue<'_, f32>, out: *mut f32) {
                    unsafe { run_task::<_, $madd>(t, ep, out) }
                }
                pub(super) unsafe fn task_u8(t: &Task<'_>, ep: &Epilogue<'_, u8>, out: *mut u8) {
                    unsafe { run_task::<_, $madd>(t, ep, out) }
                }
            );
        }

        // SAFETY (every entry): only handed out for a CPU that has `$isa`;
        // the rest is `run_task`'s contract, the caller's.
        pub(crate) const KERNELS: $crate::depthwise::arch::Kernels =
            $crate::depthwise::arch::Kernels {
                i32: |t, ep, o| unsafe { tf::task_i32(t, ep, o) },
                f32: |t, ep, o| unsafe { tf::task_f32(t, ep, o) },
                u8: |t, ep, o| unsafe { tf::task_u8(t, ep, o) },
            };
    };
}
pub(crate) use table;
