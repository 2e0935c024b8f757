//! What the flex kernels' tests share.

use burn::tensor::Tensor;

/// A tensor's f32 values, flattened.
pub(super) fn values<const D: usize>(t: Tensor<D>) -> Vec<f32> {
    t.into_data().iter::<f32>().collect()
}

/// Asserts that `got` equals `want` to 1e-5, relative to values past 1; `what` names them.
pub(super) fn assert_close(got: Vec<f32>, want: Vec<f32>, what: &str) {
    assert_eq!(got.len(), want.len(), "{what}: length");
    for (i, (g, w)) in got.iter().zip(&want).enumerate() {
        assert!(
            (g - w).abs() <= 1e-5 * w.abs().max(1.0),
            "{what}[{i}]: {g} against {w}"
        );
    }
}
