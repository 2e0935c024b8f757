//! The linear projection every model uses, and the adapters attached to it.

use std::borrow::Cow;

use burn::module::{Module, Param};
use burn::nn::Linear;
use burn::tensor::{IndexingUpdateOp, Int, Tensor, TensorData};

use crate::error::{PeftError, Result};
use crate::frozen::{FrozenLinear, PackedLinear};
use crate::ids::with_stable_ids;
use crate::method::api::Merged;
use crate::packed::PackedWeight;
use crate::precision::{to_dtype, to_f32};
use crate::product::on_rows;
use crate::registry::Adapter;

/// How the checkpoint stores this projection's weight; Burn always holds it `[in, out]`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum WeightLayout {
    /// `torch.nn.Linear`: `[out, in]`.
    #[default]
    Linear,
    /// transformers' `Conv1D` (GPT-2): `[in, out]`.
    Conv1D,
}

/// An adapter attached under a name.
#[derive(Module, Debug)]
pub struct NamedAdapter {
    /// The adapter's name (`default` unless the user chose another).
    #[module(skip)]
    pub name: String,
    /// The layer.
    pub adapter: Adapter,
}

/// A full trainable copy of the projection that replaces it while its adapter is active
/// (PEFT's `modules_to_save`).
#[derive(Module, Debug)]
pub struct SavedCopy {
    /// The adapter it belongs to.
    #[module(skip)]
    pub name: String,
    /// The copy.
    pub layer: Linear,
}

/// Which adapter runs, and what is merged into the base weight.
#[derive(Debug, Clone, Default)]
pub struct AdapterState {
    /// The active adapter; `None` runs the base alone.
    pub active: Option<String>,
    /// The adapter merged into `base.weight`, with what unmerging needs.
    pub merged: Option<(String, Option<Tensor<1>>)>,
    /// A mixed batch, which replaces the active adapter while set.
    pub rows: Option<MixedRows>,
}

/// A mixed batch's routing: the batch size, and for each adapter this projection carries the
/// batch rows that run it, as an index tensor on the projection's device (uploaded once, not
/// at every forward pass); the other rows run the base alone.
#[derive(Debug, Clone)]
pub struct MixedRows {
    /// Rows of the batches it routes.
    pub batch: usize,
    /// Adapter name and its rows.
    pub groups: Vec<(String, Tensor<1, Int>)>,
}

/// What a projection computes: the frozen base alone, a trainable copy, or an adapter beside
/// the base.
enum Computation<'a> {
    Base,
    Copy(&'a Linear),
    Adapted(&'a Adapter),
}

/// A linear projection `y = x W + b` with `W` stored `[in, out]`, the point where adapters attach.
#[derive(Module, Debug)]
pub struct Projection {
    /// Its Hugging Face module path (`model.layers.0.self_attn.q_proj`): the name adapters
    /// target it by and the key prefix of its tensors in files.
    #[module(skip)]
    pub path: String,
    /// The frozen base layer.
    pub base: FrozenLinear,
    /// Adapters attached here.
    pub adapters: Vec<NamedAdapter>,
    /// Trainable full copies (`modules_to_save`).
    pub saved: Vec<SavedCopy>,
    /// Layout of the weight in Hugging Face checkpoints.
    #[module(skip)]
    pub layout: WeightLayout,
    /// Active and merged adapters.
    #[module(skip)]
    pub state: AdapterState,
}

impl Projection {
    /// A frozen projection at module path `path` from a weight stored `[in, out]` and an
    /// optional bias `[out]`.
    pub fn new(
        path: impl Into<String>,
        weight: Param<Tensor<2>>,
        bias: Option<Param<Tensor<1>>>,
        layout: WeightLayout,
    ) -> Self {
        let base = FrozenLinear::Dense(Linear {
            weight: weight.set_require_grad(false),
            bias: bias.map(|b| b.set_require_grad(false)),
        });
        Self::with_base(path.into(), base, layout)
    }

    /// A frozen projection at module path `path` whose weight stays packed (QLoRA's base).
    pub fn packed(
        path: impl Into<String>,
        weight: PackedWeight,
        bias: Option<Param<Tensor<1>>>,
        layout: WeightLayout,
    ) -> Self {
        let bias = bias.map(|b| b.set_require_grad(false));
        let base = FrozenLinear::Packed(PackedLinear { weight, bias });
        Self::with_base(path.into(), base, layout)
    }

    fn with_base(path: String, base: FrozenLinear, layout: WeightLayout) -> Self {
        Self {
            path,
            base,
            adapters: Vec::new(),
            saved: Vec::new(),
            layout,
            state: AdapterState::default(),
        }
    }

    /// An output head that reuses an embedding `[vocab, hidden]` as its `[hidden, vocab]` weight
    /// (tied embeddings): the same parameter id, so it is counted once. The weight is a
    /// contiguous copy of the transpose, made once here; training the embedding therefore does
    /// not update this head (`peft-cli bench --method full` gives the head its own id).
    pub fn tied_to(path: impl Into<String>, embedding: &Param<Tensor<2>>) -> Self {
        // A contiguous copy of the transpose: CPU backends multiply by a strided view of a
        // 49k x 576 embedding far more slowly (they copy it on every call).
        let transposed = embedding.val().transpose();
        let contiguous = Tensor::from_data(transposed.to_data(), &transposed.device());
        Self::new(
            path,
            Param::initialized(embedding.id, contiguous),
            None,
            WeightLayout::Linear,
        )
    }

    /// Input width.
    pub fn in_features(&self) -> usize {
        self.base.dims()[0]
    }

    /// Output width.
    pub fn out_features(&self) -> usize {
        self.base.dims()[1]
    }

    /// Applies the projection, with the active adapter, to the last dimension of `x`.
    ///
    /// The leading dimensions are folded into one, so that every product runs as one
    /// `[rows, in] x [in, out]` matrix multiplication: given `[batch, seq, in]`, Burn keeps a
    /// batched product whenever `seq` is a multiple of 32, and CPU backends then multiply (and
    /// repack the weight) once per sequence.
    pub fn forward<const D: usize>(&self, x: Tensor<D>) -> Tensor<D> {
        if let Some(mixed) = self.state.rows.as_ref().filter(|m| m.batch == x.dims()[0]) {
            return self.forward_mixed(x, mixed);
        }
        on_rows(x, |x| self.forward_rows(x))
    }

    /// A mixed batch, as PEFT's `_mixed_batch_forward`: the base on every batch row, plus each
    /// adapter's change on the rows that name it.
    fn forward_mixed<const D: usize>(&self, x: Tensor<D>, mixed: &MixedRows) -> Tensor<D> {
        // One base layer for every group: a packed weight expanded once, not per adapter.
        let base = self.base.as_linear();
        let mut out = on_rows(x.clone(), |x| base.forward(x));
        for (name, index) in &mixed.groups {
            let Some(adapter) = self.adapter(name) else {
                continue;
            };
            let sub = x.clone().select(0, index.clone());
            let adapted = on_rows(sub, |x| adapter.forward(x, &base));
            let change = adapted - out.clone().select(0, index.clone());
            out = out.select_assign(0, index.clone(), change, IndexingUpdateOp::Add);
        }
        out
    }

    /// Routes the batch rows of the following forward passes: row `i` through adapter
    /// `rows[i]` (`None`: the base alone); `None` ends the mixed batch.
    pub fn set_rows(&mut self, rows: Option<&[Option<String>]>) {
        self.state.rows = rows.map(|rows| {
            let device = self.base.device();
            // Only adapters attached here change anything; the other rows run the base.
            let mut names: Vec<&str> = rows
                .iter()
                .flatten()
                .map(String::as_str)
                .filter(|name| self.adapter(name).is_some())
                .collect();
            names.sort_unstable();
            names.dedup();
            let groups = names
                .into_iter()
                .map(|name| {
                    let picked: Vec<i64> = (0..rows.len())
                        .filter(|&i| rows[i].as_deref() == Some(name))
                        .map(|i| i as i64)
                        .collect();
                    let count = picked.len();
                    let index = Tensor::from_data(TensorData::new(picked, [count]), &device);
                    (name.to_string(), index)
                })
                .collect();
            MixedRows {
                batch: rows.len(),
                groups,
            }
        });
    }

    /// [`Self::forward`] on rows `[rows, in]`.
    fn forward_rows(&self, x: Tensor<2>) -> Tensor<2> {
        match self.computation() {
            Computation::Base => self.base.forward(x),
            // A trainable copy is f32 whatever the base's type: its input cast, its result
            // cast back.
            Computation::Copy(linear) => {
                let dtype = x.dtype();
                to_dtype(
                    linear.forward(to_dtype(x, linear.weight.val().dtype())),
                    dtype,
                )
            }
            Computation::Adapted(adapter) => adapter.forward(x, &self.base.as_linear()),
        }
    }

    /// The one linear layer that computes this projection as it stands (the base, a packed
    /// base expanded for this use, or the active adapter's trainable copy), or `None` while an
    /// unmerged adapter computes beside the base. A caller may then multiply by its weight
    /// directly, e.g. to compute a loss in chunks of rows.
    pub fn as_linear(&self) -> Option<Cow<'_, Linear>> {
        match self.computation() {
            Computation::Base => Some(self.base.as_linear()),
            Computation::Copy(linear) => Some(Cow::Borrowed(linear)),
            Computation::Adapted(_) => None,
        }
    }

    /// The packed layer that computes this projection as it stands (a packed base with no
    /// adapter computing beside it), for a caller that expands its weight a slice at a time.
    pub fn as_packed(&self) -> Option<&PackedLinear> {
        match (self.computation(), &self.base) {
            (Computation::Base, FrozenLinear::Packed(layer)) => Some(layer),
            _ => None,
        }
    }

    /// What [`Self::forward`] runs: the active adapter's copy, the active unmerged adapter, or
    /// the base.
    fn computation(&self) -> Computation<'_> {
        let Some(active) = self.state.active.as_deref() else {
            return Computation::Base;
        };
        if let Some(copy) = self.saved.iter().find(|c| c.name == active) {
            return Computation::Copy(&copy.layer);
        }
        let merged = self
            .state
            .merged
            .as_ref()
            .is_some_and(|(name, _)| name == active);
        match self.adapter(active) {
            Some(adapter) if !merged => Computation::Adapted(adapter),
            _ => Computation::Base,
        }
    }

    /// The adapter attached under `name`.
    pub fn adapter(&self, name: &str) -> Option<&Adapter> {
        self.adapters
            .iter()
            .find(|a| a.name == name)
            .map(|a| &a.adapter)
    }

    /// The same, mutable.
    pub fn adapter_mut(&mut self, name: &str) -> Option<&mut Adapter> {
        self.adapters
            .iter_mut()
            .find(|a| a.name == name)
            .map(|a| &mut a.adapter)
    }

    /// Attaches `adapter` under `name` (not activated).
    pub fn attach(&mut self, name: &str, adapter: Adapter) {
        self.adapters.push(NamedAdapter {
            name: name.to_string(),
            adapter,
        });
    }

    /// Attaches a trainable copy of the base under `name` (not activated); its parameter ids
    /// follow from the name and this projection's path.
    pub fn attach_copy(&mut self, name: &str) {
        // Trained in f32, whatever the base's type.
        let layer = Linear {
            weight: Param::from_tensor(to_f32(self.base.weight().detach())),
            bias: self
                .base
                .bias()
                .map(|b| Param::from_tensor(to_f32(b.detach()))),
        };
        self.saved.push(SavedCopy {
            name: name.to_string(),
            layer: with_stable_ids(layer, &format!("{name}/{}/modules_to_save", self.path)),
        });
    }

    /// Removes everything attached under `name`; refuses while it is merged.
    pub fn detach(&mut self, name: &str) -> Result<()> {
        if self.state.merged.as_ref().is_some_and(|(n, _)| n == name) {
            return Err(PeftError::State(format!(
                "adapter {name:?} is merged into {}; unmerge it before unloading",
                self.path
            )));
        }
        self.adapters.retain(|a| a.name != name);
        self.saved.retain(|c| c.name != name);
        if self.state.active.as_deref() == Some(name) {
            self.state.active = None;
        }
        Ok(())
    }

    /// Merges the active adapter into the base weight (in f32). With `safe`, a result holding
    /// NaN or Inf is refused and the weight left as it was.
    pub fn merge(&mut self, safe: bool) -> Result<()> {
        let module = self.path.as_str();
        let Some(active) = self.state.active.clone() else {
            return Ok(());
        };
        if let Some((merged, _)) = &self.state.merged {
            return Err(PeftError::State(format!(
                "{module} already has adapter {merged:?} merged; unmerge it first"
            )));
        }
        let Some(adapter) = self.adapter(&active) else {
            return Ok(());
        };
        if self.base.is_packed() {
            return Err(PeftError::State(format!(
                "{module} keeps its base weight packed (quantized); load the model without \
                 --quantize to merge adapter {active:?} into it"
            )));
        }
        let Some(Merged { weight, bias, memo }) =
            adapter.merge(to_f32(self.base.weight()), self.base.bias().map(to_f32))
        else {
            return Err(cannot_merge(&active, module, adapter));
        };
        let merged = weight.detach();
        let finite = is_finite(&merged)?
            && match &bias {
                Some(b) => is_finite(&b.clone().detach().unsqueeze::<2>())?,
                None => true,
            };
        if safe && !finite {
            return Err(PeftError::UnsafeMerge {
                adapter: active,
                module: self.path.clone(),
            });
        }
        self.set_base(merged, bias);
        self.state.merged = Some((active, memo));
        Ok(())
    }

    /// Takes the merged adapter back out of the base weight.
    pub fn unmerge(&mut self) {
        let Some((name, memo)) = self.state.merged.take() else {
            return;
        };
        if let Some(adapter) = self.adapter(&name) {
            let weight = to_f32(self.base.weight());
            let (weight, bias) = adapter.unmerge(weight, self.base.bias().map(to_f32), memo);
            self.set_base(weight.detach(), bias);
        }
    }

    /// Makes the merged weights permanent and drops every adapter (PEFT's `merge_and_unload`).
    pub fn unload(&mut self) {
        if let Some(copy_name) = self.state.active.clone() {
            if let Some(i) = self.saved.iter().position(|c| c.name == copy_name) {
                let copy = self.saved.swap_remove(i);
                self.base = FrozenLinear::Dense(Linear {
                    weight: copy.layer.weight.set_require_grad(false),
                    bias: copy.layer.bias.map(|b| b.set_require_grad(false)),
                });
            }
        }
        self.adapters.clear();
        self.saved.clear();
        self.state = AdapterState::default();
    }

    /// Replaces the (dense) base weight and bias, computed in f32, in the base's type.
    fn set_base(&mut self, weight: Tensor<2>, bias: Option<Tensor<1>>) {
        let Some(base) = self.base.as_dense_mut() else {
            return;
        };
        let dtype = base.weight.val().dtype();
        let (weight, bias) = (to_dtype(weight, dtype), bias.map(|b| to_dtype(b, dtype)));
        // A new id: a merged weight is a different tensor (and no longer tied to an embedding).
        base.weight = Param::from_tensor(weight).set_require_grad(false);
        if let (Some(old), Some(new)) = (&base.bias, bias) {
            let mut param = Param::from_tensor(new.detach()).set_require_grad(false);
            param.id = old.id;
            base.bias = Some(param);
        }
    }
}

fn cannot_merge(name: &str, module: &str, adapter: &Adapter) -> PeftError {
    PeftError::State(format!(
        "adapter {name:?} on {module} is a {}, which cannot be merged into the weights",
        adapter.method_name()
    ))
}

fn is_finite(t: &Tensor<2>) -> Result<bool> {
    let bad = t.clone().is_nan().bool_or(t.clone().is_inf()).any();
    bad.into_data()
        .iter::<bool>()
        .next()
        .map(|b| !b)
        .ok_or_else(|| PeftError::Backend("empty result of a finiteness check".into()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::method::lora::{LoraInit, LoraLayer, LoraShape};
    use crate::testing::{assert_close, values};
    use burn::tensor::{Device, Distribution};

    const D_IN: usize = 6;
    const D_OUT: usize = 5;

    fn random_projection(device: &Device) -> Projection {
        let w = Tensor::<2>::random([D_IN, D_OUT], Distribution::Uniform(-1.0, 1.0), device);
        let b = Tensor::<1>::random([D_OUT], Distribution::Uniform(-1.0, 1.0), device);
        Projection::new(
            "model.layers.0.q_proj",
            Param::from_tensor(w),
            Some(Param::from_tensor(b)),
            WeightLayout::Linear,
        )
    }

    fn lora(proj: &Projection, dropout: f64, init: bool, dora: bool) -> LoraLayer {
        let shape = LoraShape {
            rank: 3,
            scale: 2.0,
        };
        LoraLayer::init(
            &proj.base.as_linear(),
            shape,
            dropout,
            &LoraInit::Default(init),
            dora,
        )
    }

    fn attach(proj: &mut Projection, layer: LoraLayer) {
        proj.attach("a", Adapter::Lora(layer));
        proj.state.active = Some("a".into());
    }

    fn input(device: &Device) -> Tensor<3> {
        Tensor::random([2, 4, D_IN], Distribution::Uniform(-1.0, 1.0), device)
    }

    #[test]
    fn merge_then_unmerge_restores_weights_for_lora_and_dora() {
        for dora in [false, true] {
            let device = Device::flex();
            let mut proj = random_projection(&device);
            let original = values(proj.base.weight());
            let layer = lora(&proj, 0.0, false, dora);
            attach(&mut proj, layer);
            let x = input(&device);
            let unmerged = values(proj.forward(x.clone()));
            proj.merge(true).unwrap();
            assert_close(values(proj.forward(x.clone())), unmerged.clone(), 1e-4);
            // Merged weights, adapter switched off: the adapter's effect is in the base now.
            proj.state.active = None;
            assert_close(values(proj.forward(x.clone())), unmerged, 1e-4);
            proj.state.active = Some("a".into());
            proj.unmerge();
            assert_close(values(proj.base.weight()), original, 1e-5);
        }
    }

    #[test]
    fn safe_merge_refuses_non_finite_weights() {
        let device = Device::flex();
        let mut proj = random_projection(&device);
        let mut layer = lora(&proj, 0.0, false, false);
        layer.lora_b = Param::from_tensor(Tensor::full([3, D_OUT], f32::INFINITY, &device));
        attach(&mut proj, layer);
        let before = values(proj.base.weight());
        let err = proj.merge(true).unwrap_err();
        assert!(err.to_string().contains("model.layers.0.q_proj"), "{err}");
        assert_eq!(values(proj.base.weight()), before);
    }

    #[test]
    fn dropout_acts_on_the_branch_only_and_only_in_training() {
        let device = Device::flex().autodiff();
        let mut proj = random_projection(&device);
        // B = 0 (default init): whatever dropout does to the branch, the output is the base's.
        let layer = lora(&proj, 0.9, true, false);
        attach(&mut proj, layer);
        let x = input(&device);
        let base = values(proj.base.forward(x.clone()));
        assert_close(values(proj.forward(x.clone())), base, 0.0);
        // A non-zero branch under training: two passes drop different inputs.
        let mut proj = random_projection(&device);
        let layer = lora(&proj, 0.9, false, false);
        attach(&mut proj, layer);
        assert_ne!(
            values(proj.forward(x.clone())),
            values(proj.forward(x.clone()))
        );
        // Without autodiff (evaluation) dropout is off: deterministic.
        let eval = proj.valid();
        let x = x.inner();
        assert_eq!(values(eval.forward(x.clone())), values(eval.forward(x)));
    }
}
