//! Helpers of the crate's unit tests.

use burn::tensor::Tensor;

/// A tensor's values, flattened.
pub fn values<const D: usize>(t: Tensor<D>) -> Vec<f32> {
    t.into_data().iter::<f32>().collect()
}

/// Asserts that `a` and `b` differ by at most `tol` anywhere.
pub fn assert_close(a: Vec<f32>, b: Vec<f32>, tol: f32) {
    assert_eq!(a.len(), b.len());
    let worst = a
        .iter()
        .zip(&b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0f32, f32::max);
    assert!(worst <= tol, "max abs difference {worst:e} > {tol:e}");
}

/// Asserts that every value of `got` is within `1e-4` of `want`'s, relative to values beyond 1
/// (products of many terms, summed in another order), naming `what` and the first index off.
pub fn assert_relatively_close(got: Vec<f32>, want: Vec<f32>, what: &str) {
    assert_eq!(got.len(), want.len(), "{what}: length");
    for (i, (g, w)) in got.iter().zip(&want).enumerate() {
        assert!(
            (g - w).abs() <= 1e-4 * w.abs().max(1.0),
            "{what}[{i}]: {g} against {w}"
        );
    }
}
