//! Parameter ids that depend only on where a parameter sits, so that an optimizer state saved
//! by one run (keyed by [`ParamId`]) finds its parameters again in a model rebuilt by another.

use burn::module::{Module, ModuleMapper, Param, ParamId};
use burn::tensor::Tensor;

/// Gives every float parameter of `module` an id derived from `scope` (e.g. adapter name and
/// module path) and the parameter's path inside `module`.
pub fn with_stable_ids<M: Module>(module: M, scope: &str) -> M {
    module.map(&mut StableIds {
        scope: scope.to_string(),
        path: Vec::new(),
    })
}

/// A trainable parameter holding `value` under `old`'s id (a value read from a file replaces
/// the initial one without losing the id).
pub(crate) fn replace_value<const D: usize>(
    old: &Param<Tensor<D>>,
    value: Tensor<D>,
) -> Param<Tensor<D>> {
    let mut param = Param::from_tensor(value);
    param.id = old.id;
    param
}

struct StableIds {
    scope: String,
    path: Vec<String>,
}

/// The containers whose variant names are left out of paths: a projection's base weight and
/// an embedding's table kept their paths `….base.weight` and `….weight` (and so their ids in
/// checkpoints) when they became enums of a dense and a packed form.
const TRANSPARENT: [&str; 2] = ["Enum:FrozenLinear", "Enum:EmbeddingTable"];

impl ModuleMapper for StableIds {
    fn enter_module(&mut self, name: &str, container_type: &str) {
        if !TRANSPARENT.contains(&container_type) {
            self.path.push(name.to_string());
        }
    }

    fn exit_module(&mut self, _name: &str, container_type: &str) {
        if !TRANSPARENT.contains(&container_type) {
            self.path.pop();
        }
    }

    fn map_float<const D: usize>(&mut self, mut param: Param<Tensor<D>>) -> Param<Tensor<D>> {
        param.id = ParamId::from(fnv1a(&format!("{}/{}", self.scope, self.path.join("."))));
        param
    }
}

/// 64-bit FNV-1a. Written out because `std`'s hashers do not promise the same output across
/// Rust releases, and these ids are persisted in checkpoints.
fn fnv1a(text: &str) -> u64 {
    text.bytes().fold(0xcbf2_9ce4_8422_2325, |hash, byte| {
        (hash ^ u64::from(byte)).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::nn::{Linear, LinearConfig};
    use burn::tensor::Device;

    fn linear() -> Linear {
        LinearConfig::new(3, 2).init(&Device::flex())
    }

    #[test]
    fn ids_depend_on_scope_and_path_only() {
        let a = with_stable_ids(linear(), "default/q_proj");
        let b = with_stable_ids(linear(), "default/q_proj");
        let c = with_stable_ids(linear(), "default/v_proj");
        assert_eq!(a.weight.id, b.weight.id);
        assert_ne!(a.weight.id, c.weight.id);
        assert_ne!(a.weight.id, a.bias.as_ref().unwrap().id);
    }

    /// A projection's base weight keeps the id of its path `base.weight`, as before the base
    /// became an enum (full fine-tuning checkpoints find their optimizer state by it).
    #[test]
    fn a_projection_base_weight_is_identified_by_its_path_without_the_variant() {
        let layer = linear();
        let projection = crate::Projection::new(
            "q_proj",
            layer.weight,
            layer.bias,
            crate::WeightLayout::Linear,
        );
        let projection = with_stable_ids(projection, "full");
        let weight = projection.base.as_dense().unwrap().weight.id;
        assert_eq!(weight, ParamId::from(fnv1a("full/base.weight")));
    }

    #[test]
    fn fnv1a_matches_the_reference_vectors() {
        assert_eq!(fnv1a(""), 0xcbf2_9ce4_8422_2325);
        assert_eq!(fnv1a("a"), 0xaf63_dc4c_8601_ec8c);
    }
}
