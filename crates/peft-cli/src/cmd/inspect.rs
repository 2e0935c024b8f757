//! `peft-cli inspect`: what a model is made of, and what an adapter on it would train.

use anyhow::{Context, Result};
use peft_core::method::lora::LoraConfig;
use peft_core::method::Adapter;
use peft_core::target::TargetModules;
use peft_core::{count_parameters, AdapterConfig, ParameterReport, ProjectionHost};
use peft_models::ModelConfig;

use super::{ModelArgs, ADAPTER_NAME};

/// Arguments of `inspect`.
#[derive(clap::Args, Debug)]
pub struct Args {
    #[command(flatten)]
    model: ModelArgs,
    #[command(flatten)]
    method: MethodArgs,
}

/// A PEFT method described by flags, to see what it would attach and train.
#[derive(clap::Args, Debug)]
pub struct MethodArgs {
    /// Attach a new adapter of this method (instead of, or besides, --adapter) and report it.
    #[arg(long, value_enum)]
    method: Option<Method>,
    /// Rank of the LoRA update.
    #[arg(long, default_value_t = 8, requires = "method")]
    rank: usize,
    /// LoRA alpha: the update is scaled by alpha / rank (alpha / sqrt(rank) with --rslora).
    #[arg(long, default_value_t = 16.0, requires = "method")]
    alpha: f64,
    /// Modules to adapt: comma-separated names (`q_proj,v_proj`), `all-linear`, or a regex
    /// matched against whole module paths.
    #[arg(long, default_value = "all-linear", requires = "method")]
    target: String,
    /// Scale by alpha / sqrt(rank) (rank-stabilised LoRA).
    #[arg(long, requires = "method")]
    rslora: bool,
}

/// The methods `--method` accepts.
#[derive(clap::ValueEnum, Clone, Copy, Debug)]
enum Method {
    /// Low-rank adaptation.
    Lora,
    /// Weight-decomposed low-rank adaptation.
    Dora,
}

impl MethodArgs {
    fn config(&self) -> Option<AdapterConfig> {
        let method = self.method?;
        let target =
            if self.target == "all-linear" || self.target.contains(['*', '\\', '(', '|', '[']) {
                TargetModules::Pattern(self.target.clone())
            } else {
                TargetModules::Names(
                    self.target
                        .split(',')
                        .map(|s| s.trim().to_string())
                        .collect(),
                )
            };
        Some(AdapterConfig::Lora(LoraConfig {
            r: self.rank,
            lora_alpha: self.alpha,
            use_rslora: self.rslora,
            use_dora: matches!(method, Method::Dora),
            target_modules: Some(target),
            ..LoraConfig::default()
        }))
    }
}

/// Prints the architecture, its sizes, the parameter counts and every projection.
pub fn run(args: Args) -> Result<()> {
    let (mut loaded, _device) = args.model.load(false)?;
    if let Some(config) = args.method.config() {
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
            (Some(Adapter::Lora(l)), _) => format!(
                "{} r={} scale={} (+{} params)",
                if l.magnitude.is_some() {
                    "dora"
                } else {
                    "lora"
                },
                l.rank(),
                l.scale,
                count_parameters(l)
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
