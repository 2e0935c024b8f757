//! `peft-cli inspect`: what a model is made of, and what an adapter on it would train.

use anyhow::{Context, Result};
use burn::module::Module;
use peft_core::{
    count_model_parameters, count_parameters, ParameterReport, ProjectionHost, DEFAULT_ADAPTER,
};

use super::method::MethodFlags;
use super::ModelArgs;

/// Arguments of `inspect`.
#[derive(clap::Args, Debug)]
pub struct Args {
    #[command(flatten)]
    model: ModelArgs,
    /// Attach a new adapter of this method (instead of, or besides, --adapter) and report what
    /// it would train.
    #[command(flatten)]
    method: MethodFlags,
}

/// Prints the architecture, its sizes, the parameter counts and every projection.
pub fn run(args: Args) -> Result<()> {
    let (mut loaded, _device) = args.model.load(false)?;
    if let Some(method) = args.method.method {
        let mut section = method.0.defaults();
        args.method.apply(&mut section)?;
        match section.adapter_config() {
            Some(mut config) => {
                if let Some(tokenizer) = loaded.tokenizer.as_ref() {
                    peft_train::tokenize_init_text(&mut config, tokenizer)?;
                }
                let name = if !args.model.adapter.is_empty() {
                    "inspected"
                } else {
                    DEFAULT_ADAPTER
                };
                peft_core::attach_adapter(&mut loaded.model, name, &config)
                    .context("cannot attach the adapter")?;
                peft_core::set_adapter(&mut loaded.model, name)?;
            }
            // Full fine-tuning trains every weight.
            None => loaded.model = loaded.model.unfreeze(),
        }
    }
    println!("model: {}", loaded.source.display());
    for (key, value) in loaded.config.describe() {
        println!("{key:>22}: {value}");
    }
    let has_adapter = !peft_core::adapter_names(&loaded.model).is_empty();
    if has_adapter {
        println!("{}", ParameterReport::of(&loaded.model));
    } else {
        let total = count_model_parameters(&loaded.model);
        println!("{:>22}: {total} ({})", "parameters", human(total));
    }
    if let Some(adapter) = loaded.model.model_adapters().active() {
        println!(
            "{:>22}: {} with {} virtual tokens (+{} params)",
            "adapter",
            adapter.method_name(),
            adapter.virtual_tokens(),
            count_parameters(adapter)
        );
    }
    println!();
    println!(
        "{:<44} {:>8} {:>8} {:>12}  adapter",
        "module", "in", "out", "params"
    );
    for (name, proj) in loaded.model.projections() {
        let bias = proj.base.bias().map_or(0, |b| b.dims()[0]);
        let params = proj.in_features() * proj.out_features() + bias;
        let active = proj.state.active.as_deref().unwrap_or_default();
        let adapter = match (
            proj.adapter(active),
            proj.saved.iter().find(|c| c.name == active),
        ) {
            (Some(adapter), _) => format!(
                "{} (+{} params)",
                adapter.describe(),
                count_parameters(adapter)
            ),
            (None, Some(copy)) => format!("trainable copy (+{} params)", count_parameters(copy)),
            (None, None) => String::new(),
        };
        println!(
            "{name:<44} {:>8} {:>8} {params:>12}  {adapter}",
            proj.in_features(),
            proj.out_features()
        );
    }
    Ok(())
}

/// `134912` -> `134.9K`.
fn human(n: usize) -> String {
    match n {
        n if n >= 1_000_000_000 => format!("{:.2}B", n as f64 / 1e9),
        n if n >= 1_000_000 => format!("{:.1}M", n as f64 / 1e6),
        n if n >= 1_000 => format!("{:.1}K", n as f64 / 1e3),
        n => n.to_string(),
    }
}
