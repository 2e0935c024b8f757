//! What a user does with adapters on a model: attach (by target names), activate, disable,
//! merge and unmerge, unload; as Hugging Face PEFT's `PeftModel` offers it.

use std::collections::BTreeSet;

use regex::Regex;

use burn::tensor::Tensor;

use crate::error::{PeftError, Result};
use crate::host::ProjectionHost;
use crate::ids::with_stable_ids;
use crate::method::api::{ModelContext, OptimizerStep};
use crate::model_adapters::NamedModelAdapter;
use crate::registry::AdapterConfig;
use crate::target::describe_targets;

/// What attaching touched.
#[derive(Debug, Clone)]
pub struct AttachReport {
    /// Modules that received an adapter layer.
    pub adapted: Vec<String>,
    /// Modules that received a trainable copy (`modules_to_save`).
    pub saved: Vec<String>,
    /// Virtual tokens a prompt-learning adapter adds (0 for other methods).
    pub virtual_tokens: usize,
    /// The configuration as attached: default targets and dimensions filled from the model.
    /// This is what belongs in the saved `adapter_config.json`.
    pub config: AdapterConfig,
}

/// The adapter names attached anywhere on `model`, sorted.
pub fn adapter_names(model: &impl ProjectionHost) -> Vec<String> {
    let mut names = BTreeSet::new();
    for (_, p) in model.projections() {
        names.extend(p.adapters.iter().map(|a| a.name.clone()));
        names.extend(p.saved.iter().map(|c| c.name.clone()));
    }
    let slot = model.model_adapters();
    names.extend(slot.adapters.iter().map(|e| e.name.clone()));
    names.into_iter().collect()
}

/// The active adapter, if any.
pub fn active_adapter(model: &impl ProjectionHost) -> Option<String> {
    model.model_adapters().active.clone().or_else(|| {
        model
            .projections()
            .into_iter()
            .find_map(|(_, p)| p.state.active.clone())
    })
}

/// Attaches a new adapter `name` as `config` says, freshly initialised, and activates it when
/// no other adapter is active. Fails, listing the model's modules, if no target matches.
pub fn attach_adapter(
    model: &mut impl ProjectionHost,
    name: &str,
    config: &AdapterConfig,
) -> Result<AttachReport> {
    attach(model, name, config, false)
}

/// [`attach_adapter`]; with `placeholder`, prompt-learning tensors are left uninitialised
/// (zeros of the saved shape) because a file is about to fill them.
pub(crate) fn attach(
    model: &mut impl ProjectionHost,
    name: &str,
    config: &AdapterConfig,
    placeholder: bool,
) -> Result<AttachReport> {
    config.validate()?;
    if adapter_names(model).iter().any(|n| n == name) {
        return Err(PeftError::DuplicateAdapter(name.to_string()));
    }
    let config = config.resolve(&model.geometry())?;
    let activate = active_adapter(model).is_none();
    let Some(matcher) = config.matcher()? else {
        let virtual_tokens = attach_model_adapter(model, name, &config, placeholder)?;
        if activate {
            set_adapter(model, name)?;
        }
        return Ok(AttachReport {
            adapted: Vec::new(),
            saved: Vec::new(),
            virtual_tokens,
            config,
        });
    };
    let to_save = config
        .modules_to_save()
        .iter()
        .map(|m| {
            // PEFT: re.match(rf"(^|.*\.){m}($|\..*)", key)
            Regex::new(&format!(r"^(?:|.*\.)(?:{m})(?:$|\..*)")).map_err(|e| PeftError::Config {
                field: "modules_to_save".into(),
                message: format!("{m:?}: {e}"),
            })
        })
        .collect::<Result<Vec<_>>>()?;
    // Check every target before changing anything.
    let mut report = AttachReport {
        adapted: Vec::new(),
        saved: Vec::new(),
        virtual_tokens: 0,
        config: config.clone(),
    };
    for (key, _) in model.projections() {
        if to_save.iter().any(|re| re.is_match(&key)) {
            report.saved.push(key);
        } else if matcher.matches(&key) {
            report.adapted.push(key);
        }
    }
    if report.adapted.is_empty() {
        let available: Vec<String> = model.projections().into_iter().map(|(k, _)| k).collect();
        return Err(PeftError::NoTargetMatched {
            targets: describe_targets(config.targets().and_then(|t| t.target_modules.as_ref())),
            available: available.join(", "),
        });
    }
    for module in config.modules_to_save() {
        if !report
            .saved
            .iter()
            .any(|k| k == module || k.ends_with(&format!(".{module}")))
        {
            return Err(PeftError::Config {
                field: "modules_to_save".into(),
                message: format!("{module:?} matches no projection of the model"),
            });
        }
    }
    let shapes: Vec<[usize; 2]> = model
        .projections()
        .into_iter()
        .filter(|(key, _)| report.adapted.contains(key))
        .map(|(_, proj)| proj.base.dims())
        .collect();
    let mut config = config;
    config.fit_to_targets(&shapes);
    for (key, proj) in model.projections_mut() {
        if report.saved.contains(&key) {
            proj.attach_copy(name);
        } else if report.adapted.contains(&key) {
            let layer = with_stable_ids(
                config.new_layer(&key, &proj.base.as_linear())?,
                &format!("{name}/{key}"),
            );
            proj.attach(name, layer);
        }
    }
    if activate {
        set_adapter(model, name)?;
    }
    Ok(report)
}

/// Puts a method's model-wide adapter into the model's slot; returns its virtual tokens.
fn attach_model_adapter(
    model: &mut impl ProjectionHost,
    name: &str,
    config: &AdapterConfig,
    placeholder: bool,
) -> Result<usize> {
    let device = model
        .projections()
        .first()
        .map(|(_, p)| p.base.device())
        .ok_or_else(|| PeftError::State("the model has no projections".into()))?;
    let context = ModelContext {
        geometry: model.geometry(),
        device,
        embed_ids: &|ids: &[u32]| model.embed_ids(ids),
    };
    let Some(adapter) = config.new_model_adapter(&context, placeholder)? else {
        return Err(PeftError::State(format!(
            "{} has no model-wide adapter",
            config.peft_type()
        )));
    };
    let scope = format!("{name}/{}", adapter.id_scope());
    let adapter = with_stable_ids(adapter, &scope);
    let len = adapter.virtual_tokens();
    model.model_adapters_mut().adapters.push(NamedModelAdapter {
        name: name.to_string(),
        adapter,
    });
    Ok(len)
}

/// Makes `name` the adapter that runs. Another adapter merged into the weights is unmerged
/// first, as PEFT does, so that the two never add up.
pub fn set_adapter(model: &mut impl ProjectionHost, name: &str) -> Result<()> {
    let names = adapter_names(model);
    if !names.iter().any(|n| n == name) {
        return Err(PeftError::UnknownAdapter {
            name: name.to_string(),
            available: names.join(", "),
        });
    }
    for (_, proj) in model.projections_mut() {
        if proj
            .state
            .merged
            .as_ref()
            .is_some_and(|(merged, _)| merged != name)
        {
            proj.unmerge();
        }
        proj.state.active = Some(name.to_string());
    }
    model.model_adapters_mut().active = Some(name.to_string());
    Ok(())
}

/// The name that stands for the base model in a mixed batch, as in PEFT's `adapter_names`.
pub const BASE_ROW: &str = "__base__";

/// A mixed batch (PEFT's `adapter_names`): row `i` of the following forward passes runs
/// adapter `rows[i]` ([`BASE_ROW`]: none) instead of the active adapter, until
/// [`clear_adapter_per_row`]. Refused, with nothing changed, for a name not loaded, a method
/// that does not mix (only LoRA, DoRA, IA3 and VeRA do, as in PEFT) and a merged adapter.
pub fn set_adapter_per_row(model: &mut impl ProjectionHost, rows: &[&str]) -> Result<()> {
    let names = adapter_names(model);
    for &row in rows.iter().filter(|&&r| r != BASE_ROW) {
        if !names.iter().any(|n| n == row) {
            return Err(PeftError::UnknownAdapter {
                name: row.to_string(),
                available: format!("{}, {BASE_ROW}", names.join(", ")),
            });
        }
        if let Some(adapter) = model.model_adapters().get(row) {
            return Err(PeftError::State(format!(
                "adapter {row:?} ({}) cannot run in a mixed batch: only LoRA, DoRA, IA3 and VeRA \
                 adapters mix",
                adapter.method_name()
            )));
        }
        for (key, proj) in model.projections() {
            if let Some(adapter) = proj.adapter(row).filter(|a| !a.mixes_in_batches()) {
                return Err(PeftError::State(format!(
                    "adapter {row:?} ({} on {key}) cannot run in a mixed batch: only LoRA, DoRA, \
                     IA3 and VeRA adapters mix",
                    adapter.method_name()
                )));
            }
        }
    }
    if let Some((key, name)) = model.projections().into_iter().find_map(|(key, proj)| {
        let merged = proj.state.merged.as_ref()?;
        Some((key, merged.0.clone()))
    }) {
        return Err(PeftError::State(format!(
            "adapter {name:?} is merged into {key}: unmerge it before running a mixed batch"
        )));
    }
    let rows: Vec<Option<String>> = rows
        .iter()
        .map(|&r| (r != BASE_ROW).then(|| r.to_string()))
        .collect();
    for (_, proj) in model.projections_mut() {
        proj.set_rows(Some(&rows));
    }
    Ok(())
}

/// Ends a mixed batch: every row runs the active adapter again.
pub fn clear_adapter_per_row(model: &mut impl ProjectionHost) {
    for (_, proj) in model.projections_mut() {
        proj.set_rows(None);
    }
}

/// Runs the base model alone (adapters stay attached, a merged adapter is unmerged); returns
/// the adapter that was active.
pub fn disable_adapters(model: &mut impl ProjectionHost) -> Option<String> {
    let previous = active_adapter(model);
    for (_, proj) in model.projections_mut() {
        proj.unmerge();
        proj.state.active = None;
    }
    model.model_adapters_mut().active = None;
    previous
}

/// Removes adapter `name` from every module (PEFT's `delete_adapter`).
pub fn unload_adapter(model: &mut impl ProjectionHost, name: &str) -> Result<()> {
    for (_, proj) in model.projections_mut() {
        proj.detach(name)?;
    }
    let slot = model.model_adapters_mut();
    slot.adapters.retain(|e| e.name != name);
    if slot.active.as_deref() == Some(name) {
        slot.active = None;
    }
    Ok(())
}

/// Merges the active adapter into the base weights (in f32). With `safe`, a merge that would
/// put NaN or Inf into a weight is refused, naming the module; modules merged before it are
/// unmerged again, so the model is left as it was.
pub fn merge_adapter(model: &mut impl ProjectionHost, safe: bool) -> Result<()> {
    let slot = model.model_adapters();
    if let (Some(name), Some(adapter)) = (&slot.active, slot.active()) {
        return Err(PeftError::State(format!(
            "adapter {name:?} is {}, which adds virtual tokens and cannot be merged into the \
             weights (PEFT cannot merge prompt learning either)",
            adapter.method_name()
        )));
    }
    let mut failure = None;
    for (_, proj) in model.projections_mut() {
        if let Err(e) = proj.merge(safe) {
            failure = Some(e);
            break;
        }
    }
    match failure {
        Some(e) => {
            unmerge_adapter(model);
            Err(e)
        }
        None => Ok(()),
    }
}

/// Whether the active adapter can be folded into the base weights (LoRA, DoRA and IA3 can;
/// prompt learning and bottleneck adapters cannot).
pub fn active_adapter_merges(model: &impl ProjectionHost) -> bool {
    model.model_adapters().active().is_none()
        && model.projections().iter().all(|(_, p)| {
            p.state
                .active
                .as_deref()
                .and_then(|name| p.adapter(name))
                .is_none_or(|a| a.can_merge())
        })
}

/// Takes merged adapters back out of the base weights.
pub fn unmerge_adapter(model: &mut impl ProjectionHost) {
    for (_, proj) in model.projections_mut() {
        proj.unmerge();
    }
}

/// Merges the active adapter and removes every adapter, leaving a plain model.
pub fn merge_and_unload(model: &mut impl ProjectionHost, safe: bool) -> Result<()> {
    merge_adapter(model, safe)?;
    for (_, proj) in model.projections_mut() {
        proj.unload();
    }
    Ok(())
}

/// The extra loss term adapter `name`'s method adds to the training loss (AdaLoRA's
/// orthogonality regulariser).
pub fn extra_loss(
    model: &impl ProjectionHost,
    name: &str,
    config: &AdapterConfig,
) -> Option<Tensor<1>> {
    let projections = model.projections();
    config.extra_loss(projections.iter().filter_map(|(_, p)| p.adapter(name)))
}

/// The work adapter `name`'s method does after each optimizer step (AdaLoRA's rank
/// allocation), which may update `config` (AdaLoRA's `rank_pattern`).
pub fn after_optimizer_step(
    model: &mut impl ProjectionHost,
    name: &str,
    config: &mut AdapterConfig,
    step: &OptimizerStep<'_>,
) -> Result<()> {
    let mut projections = model.projections_mut();
    config.after_optimizer_step(
        projections
            .iter_mut()
            .filter_map(|(key, p)| Some((key.as_str(), p.adapter_mut(name)?))),
        step,
    )
}
