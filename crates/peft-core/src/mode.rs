//! Evaluation mode on a device that still tracks gradients.

use burn::module::{Flag, Module, ModuleMapper, Param};

/// `module` with every training flag off (dropout disabled) while its tensors keep tracking
/// gradients: PyTorch's `model.eval()` followed by a backward pass, which is how the reference
/// losses and gradients are computed.
pub fn eval_mode<M: Module>(module: M) -> M {
    struct TrainingOff;
    impl ModuleMapper for TrainingOff {
        fn map_flag(&mut self, flag: Param<Flag>) -> Param<Flag> {
            flag.with_value(false)
        }
    }
    module.map(&mut TrainingOff)
}
