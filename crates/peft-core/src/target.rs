//! Which modules a method attaches to, matched as Hugging Face PEFT matches them
//! (`peft.tuners.tuners_utils.check_target_module_exists`).

use regex::Regex;
use serde::{Deserialize, Serialize};

use crate::error::{PeftError, Result};

/// PEFT's `target_modules`: a list of names, a regex, or `all-linear`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum TargetModules {
    /// A module matches when its path equals a name or ends with `.` + the name.
    Names(Vec<String>),
    /// A regex that must match the whole module path; `all-linear` means every linear
    /// projection but the output head.
    Pattern(String),
}

/// The keyword PEFT expands to every linear layer except the output layer.
pub const ALL_LINEAR: &str = "all-linear";

/// PEFT's `layers_to_transform`: one layer index or a list.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum LayerIndices {
    /// One index.
    One(usize),
    /// Several indices.
    Many(Vec<usize>),
}

/// `layers_pattern`: one name or a list.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum LayersPattern {
    /// One name (e.g. `layers`, `h`).
    One(String),
    /// Several names.
    Many(Vec<String>),
}

/// A compiled targeting rule.
#[derive(Debug, Clone)]
pub struct TargetMatcher {
    targets: Compiled,
    exclude: Option<Compiled>,
    layers: Option<Vec<usize>>,
    layer_patterns: Vec<Regex>,
}

#[derive(Debug, Clone)]
enum Compiled {
    Names(Vec<String>),
    Regex(Regex),
    AllLinear,
}

/// Names of output heads, which `all-linear` leaves out.
const OUTPUT_HEADS: [&str; 2] = ["lm_head", "embed_out"];

impl Compiled {
    fn new(targets: &TargetModules, field: &str) -> Result<Self> {
        Ok(match targets {
            TargetModules::Pattern(p) if p == ALL_LINEAR => Self::AllLinear,
            TargetModules::Pattern(p) => Self::Regex(full_match_regex(p, field)?),
            TargetModules::Names(names) => Self::Names(names.clone()),
        })
    }

    fn matches(&self, key: &str) -> bool {
        match self {
            Self::Names(names) => names
                .iter()
                .any(|n| key == n || key.ends_with(&format!(".{n}"))),
            Self::Regex(re) => re.is_match(key),
            Self::AllLinear => !OUTPUT_HEADS
                .iter()
                .any(|h| key == *h || key.ends_with(&format!(".{h}"))),
        }
    }
}

/// A regex anchored at both ends, as Python's `re.fullmatch` applies it.
fn full_match_regex(pattern: &str, field: &str) -> Result<Regex> {
    Regex::new(&format!("^(?:{pattern})$")).map_err(|e| PeftError::Config {
        field: field.to_string(),
        message: format!("{pattern:?} is not a regex this implementation accepts: {e}"),
    })
}

impl TargetMatcher {
    /// Compiles `target_modules`, `exclude_modules`, `layers_to_transform` and `layers_pattern`.
    pub fn new(
        targets: &TargetModules,
        exclude: Option<&TargetModules>,
        layers: Option<&LayerIndices>,
        layers_pattern: Option<&LayersPattern>,
    ) -> Result<Self> {
        let layer_patterns = match layers_pattern {
            None => vec![],
            Some(LayersPattern::One(p)) => vec![p.clone()],
            Some(LayersPattern::Many(ps)) => ps.clone(),
        };
        let layer_patterns = if layer_patterns.iter().all(|p| p.is_empty()) {
            // No pattern: the first numbered path segment is the layer index.
            vec![Regex::new(r"^.*?\.[^.]*\.(\d+)\.").expect("constant regex")]
        } else {
            layer_patterns
                .iter()
                .map(|p| {
                    Regex::new(&format!(r"^.*?\.{p}\.(\d+)\.")).map_err(|e| PeftError::Config {
                        field: "layers_pattern".into(),
                        message: format!("{p:?}: {e}"),
                    })
                })
                .collect::<Result<_>>()?
        };
        Ok(Self {
            targets: Compiled::new(targets, "target_modules")?,
            exclude: exclude
                .map(|e| Compiled::new(e, "exclude_modules"))
                .transpose()?,
            layers: layers.map(|l| match l {
                LayerIndices::One(i) => vec![*i],
                LayerIndices::Many(v) => v.clone(),
            }),
            layer_patterns,
        })
    }

    /// Whether the module at `key` (e.g. `model.layers.0.self_attn.q_proj`) is a target.
    pub fn matches(&self, key: &str) -> bool {
        if self.exclude.as_ref().is_some_and(|e| e.matches(key)) {
            return false;
        }
        if !self.targets.matches(key) {
            return false;
        }
        // PEFT applies layer filtering to list targets only; a regex selects layers itself.
        let Some(layers) = self.layers.as_ref().filter(|l| !l.is_empty()) else {
            return true;
        };
        if matches!(self.targets, Compiled::Regex(_)) {
            return true;
        }
        self.layer_patterns
            .iter()
            .find_map(|re| re.captures(key))
            .and_then(|c| c[1].parse::<usize>().ok())
            .is_some_and(|index| layers.contains(&index))
    }
}

/// The key of `patterns` that applies to `key` (PEFT's `get_pattern_key`: the first pattern `p`
/// with `re.match(r"(.*\.)?(p)$", key)`), for `rank_pattern` and `alpha_pattern`.
pub fn pattern_for<'a>(
    patterns: impl IntoIterator<Item = &'a String>,
    key: &str,
) -> Result<Option<&'a String>> {
    for p in patterns {
        let re = Regex::new(&format!(r"^(?:.*\.)?(?:{p})$")).map_err(|e| PeftError::Config {
            field: "rank_pattern/alpha_pattern".into(),
            message: format!("{p:?}: {e}"),
        })?;
        if re.is_match(key) {
            return Ok(Some(p));
        }
    }
    Ok(None)
}

/// A method's default targets per architecture (`model_type`), as PEFT's
/// `TRANSFORMERS_MODELS_TO_*_TARGET_MODULES_MAPPING` tables hold them.
pub type DefaultTargets = [(&'static str, &'static [&'static str])];

/// The targets `table` gives for `model_type`, or an error saying there is no default.
pub fn default_targets(table: &DefaultTargets, model_type: &str) -> Result<TargetModules> {
    table
        .iter()
        .find(|(arch, _)| *arch == model_type)
        .map(|(_, names)| TargetModules::Names(names.iter().map(|s| s.to_string()).collect()))
        .ok_or_else(|| PeftError::Config {
            field: "target_modules".into(),
            message: format!("no default for {model_type} models; name the modules to adapt"),
        })
}

/// Module names for messages: a list, a pattern, or `(none)`.
pub fn describe_targets(targets: Option<&TargetModules>) -> String {
    match targets {
        Some(TargetModules::Names(n)) => format!("{n:?}"),
        Some(TargetModules::Pattern(p)) => format!("{p:?}"),
        None => "(none)".into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(n: &[&str]) -> TargetModules {
        TargetModules::Names(n.iter().map(|s| s.to_string()).collect())
    }

    #[test]
    fn names_match_whole_path_or_suffix_after_a_dot() {
        let m = TargetMatcher::new(&names(&["q_proj"]), None, None, None).unwrap();
        assert!(m.matches("model.layers.0.self_attn.q_proj"));
        assert!(m.matches("q_proj"));
        assert!(!m.matches("model.layers.0.self_attn.qq_proj"));
    }

    #[test]
    fn regex_must_match_the_whole_path() {
        let m = TargetMatcher::new(
            &TargetModules::Pattern(r".*\.0\..*q_proj".into()),
            None,
            None,
            None,
        )
        .unwrap();
        assert!(m.matches("model.layers.0.self_attn.q_proj"));
        assert!(!m.matches("model.layers.1.self_attn.q_proj"));
        let partial =
            TargetMatcher::new(&TargetModules::Pattern("q_proj".into()), None, None, None).unwrap();
        assert!(!partial.matches("model.layers.0.self_attn.q_proj"));
    }

    #[test]
    fn all_linear_leaves_out_the_head() {
        let m = TargetMatcher::new(&TargetModules::Pattern(ALL_LINEAR.into()), None, None, None)
            .unwrap();
        assert!(m.matches("model.layers.0.mlp.down_proj"));
        assert!(!m.matches("lm_head"));
    }

    #[test]
    fn layers_to_transform_filters_by_index() {
        let only_1 = LayerIndices::One(1);
        let m = TargetMatcher::new(&names(&["q_proj"]), None, Some(&only_1), None).unwrap();
        assert!(!m.matches("model.layers.0.self_attn.q_proj"));
        assert!(m.matches("model.layers.1.self_attn.q_proj"));
        let pattern = LayersPattern::One("h".into());
        let m =
            TargetMatcher::new(&names(&["c_attn"]), None, Some(&only_1), Some(&pattern)).unwrap();
        assert!(m.matches("transformer.h.1.attn.c_attn"));
        assert!(!m.matches("transformer.h.0.attn.c_attn"));
    }

    #[test]
    fn excluded_modules_never_match() {
        let ex = names(&["v_proj"]);
        let m = TargetMatcher::new(
            &TargetModules::Pattern(ALL_LINEAR.into()),
            Some(&ex),
            None,
            None,
        )
        .unwrap();
        assert!(!m.matches("model.layers.0.self_attn.v_proj"));
        assert!(m.matches("model.layers.0.self_attn.k_proj"));
    }

    #[test]
    fn pattern_keys_match_suffixes() {
        let keys = vec!["q_proj".to_string(), r"layers\.1\..*v_proj".to_string()];
        assert_eq!(
            pattern_for(&keys, "model.layers.0.self_attn.q_proj").unwrap(),
            Some(&keys[0])
        );
        assert_eq!(
            pattern_for(&keys, "model.layers.1.self_attn.v_proj").unwrap(),
            Some(&keys[1])
        );
        assert_eq!(
            pattern_for(&keys, "model.layers.0.self_attn.v_proj").unwrap(),
            None
        );
    }
}
