//! `peft-cli inspect`: what a model is made of, and what an adapter on it would train.

use anyhow::{Context, Result};
use peft_core::method::Adapter;
use peft_core::{count_parameters, ParameterReport, ProjectionHost};
use peft_models::ModelConfig;
use peft_train::config::MethodSection;

use super::method::MethodFlags;
use super::{ModelArgs, ADAPTER_NAME};

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
    if args.method.method.is_some() {
        let mut section = MethodSection::default();
        args.method.apply(&mut section);
        let mut config = section.adapter_config();
        if let Some(tokenizer) = loaded.tokenizer.as_ref() {
            peft_train::tokenize_init_text(&mut config, tokenizer)?;
        }
        let name = if args.model.adapter.is_some() {
            "inspected"
        } else {
            ADAPTER_NAME
        };
        peft_core::attach_adapter(&mut loaded.model, name, &config)
            .context("cannot attach the adapter")?;
        peft_core::set_adapter(&mut loaded.model, name)?;
    }
    println!("model: {}", loaded.source.display());
    for (key, value) in describe(&loaded.config) {
        println!("{key:>22}: {value}");
    }
    let has_adapter = !peft_core::adapter_names(&loaded.model).is_empty();
    if has_adapter {
        println!("{}", ParameterReport::of(&loaded.model));
    } else {
        let total = count_parameters(&loaded.model);
        println!("{:>22}: {total} ({})", "parameters", human(total));
    }
    if let Some(encoder) = loaded.model.virtual_tokens().active() {
        println!(
            "{:>22}: {} with {} virtual tokens (+{} params)",
            "adapter",
            encoder.method_name(),
            encoder.len(),
            count_parameters(encoder)
        );
    }
    println!();
    println!(
        "{:<44} {:>8} {:>8} {:>12}  adapter",
        "module", "in", "out", "params"
    );
    for (name, proj) in loaded.model.projections() {
        let bias = proj.base.bias.as_ref().map_or(0, |b| b.dims()[0]);
        let params = proj.in_features() * proj.out_features() + bias;
        let active = proj.state.active.as_deref().unwrap_or_default();
        let adapter = match (
            proj.adapter(active),
            proj.saved.iter().find(|c| c.name == active),
        ) {
            (Some(adapter), _) => format!(
                "{} (+{} params)",
                describe_adapter(adapter),
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

/// One projection's adapter in a few words.
fn describe_adapter(adapter: &Adapter) -> String {
    match adapter {
        Adapter::Lora(l) => format!(
            "{} r={} scale={}",
            adapter.method_name().to_lowercase(),
            l.rank(),
            l.scale
        ),
        Adapter::Ia3(l) => format!(
            "ia3 on the {}",
            if l.feedforward { "input" } else { "output" }
        ),
        Adapter::Bottleneck(b) => format!(
            "bottleneck {} -> {} ({:?}{})",
            b.down.weight.dims()[0],
            b.down.weight.dims()[1],
            b.non_linearity,
            if b.norm.is_some() { ", layer norm" } else { "" }
        ),
    }
}

/// The configuration values a user wants to see, in order.
fn describe(config: &ModelConfig) -> Vec<(&'static str, String)> {
    let mut rows = vec![("architecture", config.model_type().to_string())];
    match config {
        ModelConfig::Llama(c) => rows.extend([
            ("layers", c.num_hidden_layers.to_string()),
            ("hidden size", c.hidden_size.to_string()),
            ("intermediate size", c.intermediate_size.to_string()),
            ("attention heads", c.num_attention_heads.to_string()),
            ("key/value heads", c.kv_heads().to_string()),
            ("head dim", c.head_dim().to_string()),
            ("vocabulary", c.vocab_size.to_string()),
            ("max positions", c.max_position_embeddings.to_string()),
            ("rope theta", c.rope_theta().to_string()),
            ("tied embeddings", c.tie_word_embeddings.to_string()),
        ]),
        ModelConfig::Gpt2(c) => rows.extend([
            ("layers", c.n_layer.to_string()),
            ("hidden size", c.n_embd.to_string()),
            ("intermediate size", c.inner_dim().to_string()),
            ("attention heads", c.n_head.to_string()),
            ("vocabulary", c.vocab_size.to_string()),
            ("max positions", c.n_positions.to_string()),
            ("activation", c.activation_function.clone()),
        ]),
    }
    rows
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
