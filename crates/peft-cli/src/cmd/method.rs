//! The flags that choose a PEFT method and its options, shared by `train` and `inspect`; each
//! overrides the same key of a configuration's `[method]` section. The list of methods is
//! peft-train's ([`Method::ALL`]).

use std::sync::LazyLock;

use anyhow::{bail, Result};
use clap::builder::PossibleValue;
use clap::ValueEnum;
use peft_core::method::bottleneck::NonLinearity;
use peft_train::config::{Method, MethodSection};

/// `--method` and each method's options.
#[derive(clap::Args, Debug, Default)]
pub struct MethodFlags {
    /// PEFT method. Each takes its own options below; an option of another method is an error.
    #[arg(long, value_enum)]
    pub method: Option<MethodArg>,
    /// LoRA/DoRA: rank of the update [default: 8]; VeRA: rank of the shared projections
    /// [default: 256].
    #[arg(long, value_name = "R")]
    pub rank: Option<usize>,
    /// LoRA/DoRA: alpha; the update is scaled by alpha / rank [default: 16]; AdaLoRA: by
    /// alpha / init-r [default: 8].
    #[arg(long, value_name = "A")]
    pub alpha: Option<f64>,
    /// LoRA/DoRA/VeRA/AdaLoRA: dropout on the adapter's input [default: LoRA/DoRA 0.05,
    /// VeRA and AdaLoRA 0].
    #[arg(long, value_name = "P")]
    pub dropout: Option<f64>,
    /// LoRA/DoRA: scale by alpha / sqrt(rank) (rank-stabilised LoRA).
    #[arg(long)]
    pub rslora: bool,
    /// LoRA/DoRA: LoRA+, B matrices (and DoRA's magnitudes) learn at R times the learning
    /// rate, as PEFT's create_loraplus_optimizer groups them (the paper suggests 16) [default:
    /// off].
    #[arg(long, value_name = "R")]
    pub loraplus_lr_ratio: Option<f64>,
    /// VeRA: initial value of every λ_d (λ_b starts at zero) [default: 0.1].
    #[arg(long, value_name = "D")]
    pub d_initial: Option<f64>,
    /// AdaLoRA: the rank every target starts at [default: 12].
    #[arg(long, value_name = "R")]
    pub init_r: Option<usize>,
    /// AdaLoRA: the average rank per target that the total budget falls to; the singular
    /// values that score lowest are pruned, so targets end at different ranks [default: 8].
    #[arg(long, value_name = "R")]
    pub target_r: Option<usize>,
    /// AdaLoRA: steps at the initial budget before it starts falling [default: 0].
    #[arg(long, value_name = "STEPS")]
    pub tinit: Option<usize>,
    /// AdaLoRA: steps at the final budget at the end of the run [default: 0].
    #[arg(long, value_name = "STEPS")]
    pub tfinal: Option<usize>,
    /// AdaLoRA: steps between two rank allocations (PEFT's deltaT) [default: 1].
    #[arg(long, value_name = "STEPS")]
    pub delta_t: Option<usize>,
    /// AdaLoRA: smoothing of each weight's sensitivity |w·∇w| [default: 0.85].
    #[arg(long, value_name = "B")]
    pub beta1: Option<f64>,
    /// AdaLoRA: smoothing of the sensitivity's uncertainty [default: 0.85].
    #[arg(long, value_name = "B")]
    pub beta2: Option<f64>,
    /// AdaLoRA: weight of the orthogonality regulariser on A and B added to the loss
    /// [default: 0.5].
    #[arg(long, value_name = "W")]
    pub orth_reg_weight: Option<f64>,
    /// AdaLoRA: length of the budget schedule in steps [default: the run's step count].
    #[arg(long, value_name = "STEPS")]
    pub total_step: Option<usize>,
    /// LoRA, DoRA, VeRA, AdaLoRA, IA3, Houlsby, Pfeiffer: modules to adapt, comma-separated (q_proj,v_proj),
    /// `all-linear`, or a regex matched against whole module paths [default: the method's
    /// default for the architecture: LoRA, VeRA and AdaLoRA q_proj,v_proj (GPT-2 c_attn); IA3
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

/// A method as `--method` takes it: one of [`Method::ALL`], with its description as help.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MethodArg(pub Method);

static METHOD_ARGS: LazyLock<Vec<MethodArg>> =
    LazyLock::new(|| Method::ALL.into_iter().map(MethodArg).collect());

impl ValueEnum for MethodArg {
    fn value_variants<'a>() -> &'a [Self] {
        &METHOD_ARGS
    }

    fn to_possible_value(&self) -> Option<PossibleValue> {
        Some(PossibleValue::new(self.0.name()).help(self.0.description()))
    }
}

fn parse_non_linearity(text: &str) -> Result<NonLinearity, String> {
    serde_json::from_value(serde_json::Value::String(text.to_string()))
        .map_err(|_| format!("{text:?} is not one of relu, gelu, silu, tanh"))
}

fn names(list: &str) -> toml::Value {
    list.split(',')
        .map(|s| toml::Value::from(s.trim()))
        .collect::<Vec<_>>()
        .into()
}

impl MethodFlags {
    /// The method section's keys the given flags set, with the flag that set each.
    fn given(&self) -> Vec<(&'static str, &'static str, toml::Value)> {
        let mut out = Vec::new();
        let mut set = |flag, key, value: Option<toml::Value>| {
            if let Some(value) = value {
                out.push((flag, key, value));
            }
        };
        let int = |v: Option<usize>| v.map(|v| toml::Value::Integer(v as i64));
        let yes = |given: bool| given.then_some(toml::Value::Boolean(true));
        set("--rank", "rank", int(self.rank));
        set("--alpha", "alpha", self.alpha.map(toml::Value::Float));
        set("--dropout", "dropout", self.dropout.map(toml::Value::Float));
        set("--rslora", "rslora", yes(self.rslora));
        set(
            "--d-initial",
            "d_initial",
            self.d_initial.map(toml::Value::Float),
        );
        set("--init-r", "init_r", int(self.init_r));
        set("--target-r", "target_r", int(self.target_r));
        set("--tinit", "tinit", int(self.tinit));
        set("--tfinal", "tfinal", int(self.tfinal));
        set("--delta-t", "delta_t", int(self.delta_t));
        set("--beta1", "beta1", self.beta1.map(toml::Value::Float));
        set("--beta2", "beta2", self.beta2.map(toml::Value::Float));
        set(
            "--orth-reg-weight",
            "orth_reg_weight",
            self.orth_reg_weight.map(toml::Value::Float),
        );
        set("--total-step", "total_step", int(self.total_step));
        set(
            "--loraplus-lr-ratio",
            "loraplus_lr_ratio",
            self.loraplus_lr_ratio.map(toml::Value::Float),
        );
        set("--target", "target", self.target.as_deref().map(names));
        set(
            "--feedforward",
            "feedforward",
            self.feedforward.as_deref().map(names),
        );
        set(
            "--virtual-tokens",
            "virtual_tokens",
            int(self.virtual_tokens),
        );
        set(
            "--prefix-projection",
            "prefix_projection",
            yes(self.prefix_projection),
        );
        set(
            "--encoder-hidden-size",
            "encoder_hidden_size",
            int(self.encoder_hidden_size),
        );
        set(
            "--init-text",
            "init_text",
            self.init_text.clone().map(Into::into),
        );
        set(
            "--reduction-factor",
            "reduction_factor",
            int(self.reduction_factor),
        );
        set(
            "--non-linearity",
            "non_linearity",
            self.non_linearity
                .map(|n| toml::Value::try_from(n).expect("a non-linearity serialises to a string")),
        );
        set("--layer-norm", "layer_norm", yes(self.layer_norm));
        out
    }

    /// The first method flag given (`--method` first), if any.
    pub fn first_given(&self) -> Option<&'static str> {
        let method = self.method.map(|_| "--method");
        method.or_else(|| self.given().first().map(|(flag, _, _)| *flag))
    }

    /// Overrides `m`'s keys with the flags that were given. With `--method` another method
    /// than `m`'s, `m`'s options that differ from their defaults carry over (and must be
    /// options of the new method too). An option of another method is an error naming it.
    pub fn apply(&self, m: &mut MethodSection) -> Result<()> {
        let method = self.method.map_or(m.method(), |arg| arg.0);
        let mut table = m.to_table();
        table.remove("name");
        if method != m.method() {
            let defaults = m.method().defaults().to_table();
            table.retain(|key, value| defaults.get(key) != Some(value));
        }
        for (flag, key, value) in self.given() {
            let alone = toml::Table::from_iter([(key.to_string(), value.clone())]);
            if MethodSection::from_table(method, alone).is_err() {
                bail!(
                    "{flag} is not an option of --method {} (`peft-cli train --help` says which \
                     method takes each option)",
                    method.name()
                );
            }
            table.insert(key.to_string(), value);
        }
        *m = MethodSection::from_table(method, table).map_err(|e| {
            anyhow::anyhow!(
                "{e}; when --method switches the method, the configuration's `[method]` \
                 settings carry over"
            )
        })?;
        Ok(())
    }
}
