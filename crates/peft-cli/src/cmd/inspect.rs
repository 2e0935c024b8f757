//! `peft-cli inspect`: what a model is made of.

use anyhow::Result;
use peft_core::{count_parameters, ProjectionHost};
use peft_models::ModelConfig;

use super::ModelArgs;

/// Arguments of `inspect`.
#[derive(clap::Args, Debug)]
pub struct Args {
    #[command(flatten)]
    model: ModelArgs,
}

/// Prints the architecture, its sizes, the parameter count and every projection.
pub fn run(args: Args) -> Result<()> {
    let (loaded, _device) = args.model.load()?;
    println!("model: {}", loaded.source.display());
    for (key, value) in describe(&loaded.config) {
        println!("{key:>22}: {value}");
    }
    let total = count_parameters(&loaded.model);
    println!("{:>22}: {total} ({})", "parameters", human(total));
    println!();
    println!("{:<44} {:>8} {:>8} {:>12}", "module", "in", "out", "params");
    for (name, proj) in loaded.model.projections() {
        let bias = proj.base.bias.as_ref().map_or(0, |b| b.dims()[0]);
        let params = proj.in_features() * proj.out_features() + bias;
        println!(
            "{name:<44} {:>8} {:>8} {params:>12}",
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
