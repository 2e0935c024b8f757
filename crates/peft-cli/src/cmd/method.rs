//! The flags that choose a PEFT method and its options, shared by `train` and `inspect`; each
//! overrides the same key of a configuration's `[method]` section.

use clap::ValueEnum;
use peft_core::method::bottleneck::NonLinearity;
use peft_train::config::{Method, MethodSection};

/// `--method` and each method's options.
#[derive(clap::Args, Debug, Default)]
pub struct MethodFlags {
    /// PEFT method. Each reads its own options below; an option of another method is ignored.
    #[arg(long, value_enum)]
    pub method: Option<MethodArg>,
    /// LoRA/DoRA: rank of the update [default: 8].
    #[arg(long, value_name = "R")]
    pub rank: Option<usize>,
    /// LoRA/DoRA: alpha; the update is scaled by alpha / rank [default: 16].
    #[arg(long, value_name = "A")]
    pub alpha: Option<f64>,
    /// LoRA/DoRA: dropout on the adapter's input [default: 0.05].
    #[arg(long, value_name = "P")]
    pub dropout: Option<f64>,
    /// LoRA/DoRA: scale by alpha / sqrt(rank) (rank-stabilised LoRA).
    #[arg(long)]
    pub rslora: bool,
    /// LoRA, DoRA, IA3, Houlsby, Pfeiffer: modules to adapt, comma-separated (q_proj,v_proj),
    /// `all-linear`, or a regex matched against whole module paths [default: the method's
    /// default for the architecture: LoRA q_proj,v_proj (GPT-2 c_attn); IA3
    /// k_proj,v_proj,down_proj (GPT-2 c_attn,mlp.c_proj); Houlsby o_proj,down_proj (GPT-2
    /// attn.c_proj,mlp.c_proj); Pfeiffer down_proj (GPT-2 mlp.c_proj)].
    #[arg(long, value_name = "NAMES")]
    pub target: Option<String>,
    /// IA3: targets whose input is rescaled instead of their output, comma-separated
    /// [default: down_proj (GPT-2 mlp.c_proj)].
    #[arg(long, value_name = "NAMES")]
    pub feedforward: Option<String>,
    /// Prefix and prompt tuning: number of virtual tokens [default: 20].
    #[arg(long, value_name = "N")]
    pub virtual_tokens: Option<usize>,
    /// Prefix tuning: train the prefix through an MLP (embedding → Linear → tanh → Linear),
    /// folded into the prefix when saved, as PEFT does.
    #[arg(long)]
    pub prefix_projection: bool,
    /// Prefix tuning: hidden width of that MLP [default: the prefix width].
    #[arg(long, value_name = "N")]
    pub encoder_hidden_size: Option<usize>,
    /// Prompt tuning: start the virtual tokens from this text's token embeddings, repeated or
    /// cut to --virtual-tokens [default: random].
    #[arg(long, value_name = "TEXT")]
    pub init_text: Option<String>,
    /// Houlsby/Pfeiffer: the bottleneck width is the projection width divided by this
    /// [default: 16].
    #[arg(long, value_name = "F")]
    pub reduction_factor: Option<usize>,
    /// Houlsby/Pfeiffer: nonlinearity between the down- and up-projection: relu, gelu, silu
    /// or tanh [default: relu].
    #[arg(long, value_name = "NAME", value_parser = parse_non_linearity)]
    pub non_linearity: Option<NonLinearity>,
    /// Houlsby/Pfeiffer: a trainable layer norm on the adapter's input.
    #[arg(long)]
    pub layer_norm: bool,
}

/// The methods `--method` accepts.
#[derive(ValueEnum, Clone, Copy, Debug)]
pub enum MethodArg {
    /// LoRA: a low-rank update of each targeted projection.
    Lora,
    /// DoRA: LoRA with a learned per-output magnitude.
    Dora,
    /// Prefix tuning: learned keys and values before every layer's.
    Prefix,
    /// Prompt tuning: learned embeddings before the input's.
    Prompt,
    /// IA3: learned rescaling of projection outputs (inputs of feed-forward ones).
    Ia3,
    /// Bottleneck adapters after the attention and feed-forward blocks.
    Houlsby,
    /// Bottleneck adapters after the feed-forward blocks only.
    Pfeiffer,
}

fn parse_non_linearity(text: &str) -> Result<NonLinearity, String> {
    serde_json::from_value(serde_json::Value::String(text.to_string()))
        .map_err(|_| format!("{text:?} is not one of relu, gelu, silu, tanh"))
}

fn names(list: &str) -> Vec<String> {
    list.split(',').map(|s| s.trim().to_string()).collect()
}

impl MethodFlags {
    /// Overrides `m`'s keys with the flags that were given.
    pub fn apply(&self, m: &mut MethodSection) {
        if let Some(method) = self.method {
            m.name = match method {
                MethodArg::Lora => Method::Lora,
                MethodArg::Dora => Method::Dora,
                MethodArg::Prefix => Method::Prefix,
                MethodArg::Prompt => Method::Prompt,
                MethodArg::Ia3 => Method::Ia3,
                MethodArg::Houlsby => Method::Houlsby,
                MethodArg::Pfeiffer => Method::Pfeiffer,
            };
        }
        let set = |slot: &mut usize, value: Option<usize>| {
            if let Some(v) = value {
                *slot = v;
            }
        };
        set(&mut m.rank, self.rank);
        set(&mut m.virtual_tokens, self.virtual_tokens);
        set(&mut m.reduction_factor, self.reduction_factor);
        if let Some(alpha) = self.alpha {
            m.alpha = alpha;
        }
        if let Some(dropout) = self.dropout {
            m.dropout = dropout;
        }
        if let Some(target) = &self.target {
            m.target = names(target);
        }
        if let Some(ff) = &self.feedforward {
            m.feedforward = names(ff);
        }
        if self.encoder_hidden_size.is_some() {
            m.encoder_hidden_size = self.encoder_hidden_size;
        }
        if self.init_text.is_some() {
            m.init_text.clone_from(&self.init_text);
        }
        if let Some(n) = self.non_linearity {
            m.non_linearity = n;
        }
        m.rslora |= self.rslora;
        m.prefix_projection |= self.prefix_projection;
        m.layer_norm |= self.layer_norm;
    }
}
