//! Hand-written CPU kernels for the flex backend, where composing Burn's tensor operations costs
//! most of a training step's time on the calling thread: in burn-flex 0.22.1 element-wise
//! operations run on one thread while the matrix products' workers wait, `exp` is a scalar call
//! per element, and every step allocates a new tensor. Each kernel here is one parallel,
//! vectorised pass over contiguous `f32` storage; callers fall back to the composed operations
//! on other backends and types, and tests hold each kernel to the composed result.

mod cross_entropy;
mod gelu;
mod gradient_carrier;
mod layer_norm;
mod math;
mod rms_norm;
mod rope;
mod simd;
mod storage;
mod swiglu;
#[cfg(test)]
mod test_support;

pub(crate) use cross_entropy::cross_entropy_rows;
pub(crate) use gelu::gelu_tanh;
pub(crate) use gradient_carrier::gradient_carrier;
pub(crate) use layer_norm::layer_norm;
pub(crate) use rms_norm::rms_norm;
pub(crate) use rope::rotary;
pub(crate) use swiglu::swiglu;
