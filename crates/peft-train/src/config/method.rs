//! `[method]`: the PEFT method to train (`name`) and that method's options, one struct per
//! method. A key of another method is an error that names it; a missing `name` means LoRA.

use peft_core::method::adalora::AdaLoraConfig;
use peft_core::method::bottleneck::{BottleneckConfig, BottleneckVariant};
use peft_core::method::common::PeftFields;
use peft_core::method::ia3::Ia3Config;
use peft_core::method::lora::LoraConfig;
use peft_core::method::prefix::PrefixTuningConfig;
use peft_core::method::prompt::{PromptInit, PromptTuningConfig};
use peft_core::method::vera::VeraConfig;
use peft_core::target::{TargetModules, ALL_LINEAR};
use peft_core::AdapterConfig;
use serde::de::{DeserializeOwned, Error as _};
use serde::{Deserialize, Deserializer, Serialize};

use super::options::{
    AdaLoraOptions, BottleneckOptions, FullOptions, Ia3Options, LoraOptions, PrefixOptions,
    PromptOptions, VeraOptions,
};
use crate::error::{Result, TrainError};

/// The methods `train` trains, by the name `[method] name` and `--method` take.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Method {
    /// LoRA.
    Lora,
    /// DoRA (LoRA with a learned magnitude).
    Dora,
    /// Prefix tuning.
    Prefix,
    /// Prompt tuning.
    Prompt,
    /// IA3.
    Ia3,
    /// Houlsby bottleneck adapters.
    Houlsby,
    /// Pfeiffer bottleneck adapters.
    Pfeiffer,
    /// VeRA.
    Vera,
    /// AdaLoRA.
    Adalora,
    /// Full fine-tuning: every weight, no adapter.
    Full,
}

impl Method {
    /// Every method, in the order help texts list them.
    pub const ALL: [Method; 10] = [
        Self::Lora,
        Self::Dora,
        Self::Prefix,
        Self::Prompt,
        Self::Ia3,
        Self::Houlsby,
        Self::Pfeiffer,
        Self::Vera,
        Self::Adalora,
        Self::Full,
    ];

    /// The name in `[method] name` and `--method`.
    pub fn name(self) -> &'static str {
        match self {
            Self::Lora => "lora",
            Self::Dora => "dora",
            Self::Prefix => "prefix",
            Self::Prompt => "prompt",
            Self::Ia3 => "ia3",
            Self::Houlsby => "houlsby",
            Self::Pfeiffer => "pfeiffer",
            Self::Vera => "vera",
            Self::Adalora => "adalora",
            Self::Full => "full",
        }
    }

    /// What it trains, in a sentence.
    pub fn description(self) -> &'static str {
        match self {
            Self::Lora => "LoRA: a low-rank update of each targeted projection",
            Self::Dora => "DoRA: LoRA with a learned per-output magnitude",
            Self::Prefix => "Prefix tuning: learned keys and values before every layer's",
            Self::Prompt => "Prompt tuning: learned embeddings before the input's",
            Self::Ia3 => {
                "IA3: learned rescaling of projection outputs (inputs of feed-forward ones)"
            }
            Self::Houlsby => "Bottleneck adapters after the attention and feed-forward blocks",
            Self::Pfeiffer => "Bottleneck adapters after the feed-forward blocks only",
            Self::Vera => {
                "VeRA: shared frozen random projections, a trained vector pair per target"
            }
            Self::Adalora => {
                "AdaLoRA: LoRA in SVD form whose rank budget moves to the targets that matter"
            }
            Self::Full => {
                "Full fine-tuning: every weight trains; saved as a Hugging Face model folder"
            }
        }
    }

    /// The method called `name`, if there is one.
    pub fn from_name(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|m| m.name() == name)
    }

    /// Its options at their defaults.
    pub fn defaults(self) -> MethodSection {
        match self {
            Self::Lora => MethodSection::Lora(LoraOptions::default()),
            Self::Dora => MethodSection::Dora(LoraOptions::default()),
            Self::Prefix => MethodSection::Prefix(PrefixOptions::default()),
            Self::Prompt => MethodSection::Prompt(PromptOptions::default()),
            Self::Ia3 => MethodSection::Ia3(Ia3Options::default()),
            Self::Houlsby => MethodSection::Houlsby(BottleneckOptions::default()),
            Self::Pfeiffer => MethodSection::Pfeiffer(BottleneckOptions::default()),
            Self::Vera => MethodSection::Vera(VeraOptions::default()),
            Self::Adalora => MethodSection::Adalora(AdaLoraOptions::default()),
            Self::Full => MethodSection::Full(FullOptions {}),
        }
    }
}

/// `[method]`: the method and its options.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "name", rename_all = "lowercase")]
pub enum MethodSection {
    /// LoRA.
    Lora(LoraOptions),
    /// DoRA: LoRA's options, with a learned magnitude.
    Dora(LoraOptions),
    /// Prefix tuning.
    Prefix(PrefixOptions),
    /// Prompt tuning.
    Prompt(PromptOptions),
    /// IA3.
    Ia3(Ia3Options),
    /// Bottleneck adapters after the attention and the feed-forward blocks.
    Houlsby(BottleneckOptions),
    /// Bottleneck adapters after the feed-forward blocks.
    Pfeiffer(BottleneckOptions),
    /// VeRA.
    Vera(VeraOptions),
    /// AdaLoRA.
    Adalora(AdaLoraOptions),
    /// Full fine-tuning (no options: the learning rate and the rest are `[training]`'s).
    Full(FullOptions),
}

impl Default for MethodSection {
    fn default() -> Self {
        Method::Lora.defaults()
    }
}

/// Module names as PEFT's `target_modules` takes them: `None` when empty; `all-linear` or a
/// single regex as a pattern; otherwise a list of names.
pub fn target_modules(names: &[String]) -> Option<TargetModules> {
    match names {
        [] => None,
        [one] if one == ALL_LINEAR || one.contains(['*', '\\', '(', '|', '[', '$', '^']) => {
            Some(TargetModules::Pattern(one.clone()))
        }
        names => Some(TargetModules::Names(names.to_vec())),
    }
}

impl MethodSection {
    /// The method.
    pub fn method(&self) -> Method {
        match self {
            Self::Lora(_) => Method::Lora,
            Self::Dora(_) => Method::Dora,
            Self::Prefix(_) => Method::Prefix,
            Self::Prompt(_) => Method::Prompt,
            Self::Ia3(_) => Method::Ia3,
            Self::Houlsby(_) => Method::Houlsby,
            Self::Pfeiffer(_) => Method::Pfeiffer,
            Self::Vera(_) => Method::Vera,
            Self::Adalora(_) => Method::Adalora,
            Self::Full(_) => Method::Full,
        }
    }

    /// The section as a TOML table (`name` and every option).
    pub fn to_table(&self) -> toml::Table {
        toml::Table::try_from(self).expect("a method section serialises to a TOML table")
    }

    /// The section for `method` from its options in `table` (without `name`); the error names
    /// the key at fault (`method.rank`), and for a key of another method the method's options.
    pub fn from_table(method: Method, table: toml::Table) -> std::result::Result<Self, String> {
        fn options<T: DeserializeOwned>(
            method: Method,
            table: toml::Table,
        ) -> std::result::Result<T, String> {
            serde_path_to_error::deserialize(toml::Value::Table(table)).map_err(
                |e: serde_path_to_error::Error<toml::de::Error>| {
                    format!(
                        "`method.{}`: {} (method `{}`)",
                        e.path(),
                        e.inner().message(),
                        method.name()
                    )
                },
            )
        }
        Ok(match method {
            Method::Lora => Self::Lora(options(method, table)?),
            Method::Dora => Self::Dora(options(method, table)?),
            Method::Prefix => Self::Prefix(options(method, table)?),
            Method::Prompt => Self::Prompt(options(method, table)?),
            Method::Ia3 => Self::Ia3(options(method, table)?),
            Method::Houlsby => Self::Houlsby(options(method, table)?),
            Method::Pfeiffer => Self::Pfeiffer(options(method, table)?),
            Method::Vera => Self::Vera(options(method, table)?),
            Method::Adalora => Self::Adalora(options(method, table)?),
            Method::Full => Self::Full(options(method, table)?),
        })
    }

    /// Checks the values that have a valid range, naming the key of the first bad one.
    pub fn validate(&self) -> Result<()> {
        let bad = |key: &str, message: String| {
            Err(TrainError::InvalidValue {
                key: format!("method.{key}"),
                message,
            })
        };
        match self {
            Self::Lora(o) | Self::Dora(o) => {
                if o.rank == 0 {
                    return bad("rank", "must be at least 1".into());
                }
                if !(0.0..1.0).contains(&o.dropout) {
                    return bad("dropout", format!("{} is not in [0, 1)", o.dropout));
                }
                if !o.alpha.is_finite() {
                    return bad("alpha", format!("{} is not a finite number", o.alpha));
                }
                if let Some(ratio) = o.loraplus_lr_ratio.filter(|r| !(r.is_finite() && *r > 0.0)) {
                    return bad(
                        "loraplus_lr_ratio",
                        format!("{ratio} is not a positive number"),
                    );
                }
            }
            Self::Prefix(PrefixOptions { virtual_tokens, .. })
            | Self::Prompt(PromptOptions { virtual_tokens, .. })
                if *virtual_tokens == 0 =>
            {
                return bad("virtual_tokens", "must be at least 1".into());
            }
            Self::Houlsby(o) | Self::Pfeiffer(o) if o.reduction_factor == 0 => {
                return bad("reduction_factor", "must be at least 1".into());
            }
            Self::Vera(o) => {
                if o.rank == 0 {
                    return bad("rank", "must be at least 1".into());
                }
                if !(0.0..1.0).contains(&o.dropout) {
                    return bad("dropout", format!("{} is not in [0, 1)", o.dropout));
                }
                if !o.d_initial.is_finite() {
                    return bad(
                        "d_initial",
                        format!("{} is not a finite number", o.d_initial),
                    );
                }
            }
            Self::Adalora(o) => {
                if o.init_r == 0 {
                    return bad("init_r", "must be at least 1".into());
                }
                if o.target_r > o.init_r {
                    return bad(
                        "target_r",
                        format!(
                            "{} is above init_r = {}: the budget can only fall",
                            o.target_r, o.init_r
                        ),
                    );
                }
                if !(0.0..1.0).contains(&o.dropout) {
                    return bad("dropout", format!("{} is not in [0, 1)", o.dropout));
                }
                for (key, beta) in [("beta1", o.beta1), ("beta2", o.beta2)] {
                    if !(beta > 0.0 && beta < 1.0) {
                        return bad(key, format!("{beta} is not in (0, 1)"));
                    }
                }
                if o.delta_t == 0 {
                    return bad("delta_t", "must be at least 1".into());
                }
                if !(o.orth_reg_weight.is_finite() && o.orth_reg_weight > 0.0) {
                    return bad(
                        "orth_reg_weight",
                        format!(
                            "{} is not a positive number (PEFT requires one)",
                            o.orth_reg_weight
                        ),
                    );
                }
            }
            _ => {}
        }
        Ok(())
    }

    /// LoRA+'s learning-rate ratio for B matrices, when the method is LoRA or DoRA and sets one.
    pub fn loraplus_lr_ratio(&self) -> Option<f64> {
        match self {
            Self::Lora(o) | Self::Dora(o) => o.loraplus_lr_ratio,
            _ => None,
        }
    }

    /// The PEFT adapter configuration this section describes (none for full fine-tuning).
    /// Prompt tuning from text still needs the text's token ids (`init_token_ids`), which the
    /// caller's tokenizer gives.
    pub fn adapter_config(&self) -> Option<AdapterConfig> {
        Some(match self {
            Self::Lora(o) | Self::Dora(o) => {
                let mut c = LoraConfig {
                    r: o.rank,
                    lora_alpha: o.alpha,
                    lora_dropout: o.dropout,
                    use_rslora: o.rslora,
                    use_dora: matches!(self, Self::Dora(_)),
                    peft: PeftFields::causal_lm(),
                    ..LoraConfig::default()
                };
                c.targets.target_modules = target_modules(&o.target);
                AdapterConfig::Lora(c)
            }
            Self::Ia3(o) => {
                let mut c = Ia3Config {
                    feedforward_modules: target_modules(&o.feedforward),
                    peft: PeftFields::causal_lm(),
                    ..Ia3Config::default()
                };
                c.targets.target_modules = target_modules(&o.target);
                AdapterConfig::Ia3(c)
            }
            Self::Prefix(o) => {
                let mut c = PrefixTuningConfig::new(o.virtual_tokens, o.prefix_projection);
                c.encoder_hidden_size = o.encoder_hidden_size;
                AdapterConfig::PrefixTuning(c)
            }
            Self::Prompt(o) => {
                let mut c = PromptTuningConfig::new(o.virtual_tokens);
                if let Some(text) = &o.init_text {
                    c.prompt_tuning_init = PromptInit::Text;
                    c.prompt_tuning_init_text = Some(text.clone());
                }
                AdapterConfig::PromptTuning(c)
            }
            Self::Houlsby(o) | Self::Pfeiffer(o) => {
                let mut c = BottleneckConfig {
                    variant: match self {
                        Self::Houlsby(_) => BottleneckVariant::Houlsby,
                        _ => BottleneckVariant::Pfeiffer,
                    },
                    reduction_factor: o.reduction_factor,
                    non_linearity: o.non_linearity,
                    ln_before: o.layer_norm,
                    peft: PeftFields::causal_lm(),
                    ..BottleneckConfig::default()
                };
                c.targets.target_modules = target_modules(&o.target);
                AdapterConfig::Bottleneck(c)
            }
            Self::Vera(o) => {
                let mut c = VeraConfig {
                    r: o.rank,
                    d_initial: o.d_initial,
                    vera_dropout: o.dropout,
                    peft: PeftFields::causal_lm(),
                    ..VeraConfig::default()
                };
                c.targets.target_modules = target_modules(&o.target);
                AdapterConfig::Vera(c)
            }
            Self::Adalora(o) => {
                let mut c = AdaLoraConfig {
                    init_r: o.init_r,
                    target_r: o.target_r,
                    lora_alpha: o.alpha,
                    lora_dropout: o.dropout,
                    orth_reg_weight: o.orth_reg_weight,
                    tinit: o.tinit,
                    tfinal: o.tfinal,
                    delta_t: o.delta_t,
                    beta1: o.beta1,
                    beta2: o.beta2,
                    total_step: o.total_step,
                    peft: PeftFields::causal_lm(),
                    ..AdaLoraConfig::default()
                };
                c.targets.target_modules = target_modules(&o.target);
                AdapterConfig::AdaLora(c)
            }
            Self::Full(_) => return None,
        })
    }
}

impl<'de> Deserialize<'de> for MethodSection {
    fn deserialize<D: Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        let mut table = toml::Table::deserialize(d)?;
        let method = match table.remove("name") {
            None => Method::Lora,
            Some(name) => {
                let name = name.as_str().unwrap_or_default().to_string();
                Method::from_name(&name).ok_or_else(|| {
                    D::Error::custom(format!(
                        "`method.name`: {name:?} is not a method; expected one of: {}",
                        Method::ALL.map(Method::name).join(", ")
                    ))
                })?
            }
        };
        Self::from_table(method, table).map_err(D::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_key_of_another_method_is_refused_by_name() {
        let mut table = toml::Table::new();
        table.insert("rank".into(), 4.into());
        let err = MethodSection::from_table(Method::Prefix, table.clone()).unwrap_err();
        assert!(
            err.starts_with("`method.rank`") && err.contains("prefix"),
            "{err}"
        );
        let lora = MethodSection::from_table(Method::Lora, table).unwrap();
        assert_eq!(
            lora,
            MethodSection::Lora(LoraOptions {
                rank: 4,
                ..LoraOptions::default()
            })
        );
    }

    #[test]
    fn sections_round_trip_through_toml_with_their_name() {
        for method in Method::ALL {
            let section = method.defaults();
            let mut table = section.to_table();
            assert_eq!(table.remove("name").unwrap().as_str(), Some(method.name()));
            assert_eq!(MethodSection::from_table(method, table).unwrap(), section);
        }
    }
}
