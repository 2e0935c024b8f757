//! The flex element kernels' loops compiled for the widest vector instructions the CPU has.

/// `kernel`, compiled for the widest vector instructions this CPU has (AVX-512 or AVX2 with FMA
/// on x86-64), chosen at run time by `pulp`. Without it the build targets x86-64's baseline and
/// the compiler vectorises the loops for SSE2's four lanes: SwiGLU's forward pass on 786,432
/// elements, one thread, release build, 1.02 -> 0.46 ms with AVX-512. `kernel`'s callees must
/// be `#[inline(always)]` to be compiled for those instructions too.
#[inline(always)]
pub(super) fn widest<R>(kernel: impl FnOnce() -> R) -> R {
    pulp::Arch::new().dispatch(kernel)
}
