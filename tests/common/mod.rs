//! Shared helpers of the workspace tests: fixture paths, reading expected tensors, devices.

#![allow(dead_code)] // each test binary uses its own subset of these helpers

use std::path::PathBuf;

use burn::tensor::{Device, Int, Tensor, TensorData};
use safetensors::tensor::Dtype;
use safetensors::SafeTensors;

/// `../shared/fixtures/hf-peft` beside the checkout, or `$PEFT_FIXTURES`.
pub fn fixtures_dir() -> PathBuf {
    std::env::var_os("PEFT_FIXTURES")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../shared/fixtures/hf-peft")
        })
}

/// The folder of one fixture case, e.g. `llama-base`.
pub fn case_dir(case: &str) -> PathBuf {
    let dir = fixtures_dir().join(case);
    assert!(
        dir.is_dir(),
        "fixture {} is missing (set PEFT_FIXTURES)",
        dir.display()
    );
    dir
}

/// A tensor read from `expected.safetensors`.
#[derive(Clone, Debug)]
pub struct Array<T> {
    pub shape: Vec<usize>,
    pub values: Vec<T>,
}

/// The reference tensors of one case.
pub struct Expected {
    bytes: Vec<u8>,
}

impl Expected {
    pub fn load(case: &str) -> Self {
        let path = case_dir(case).join("expected.safetensors");
        Self {
            bytes: std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display())),
        }
    }

    /// The names of the reference tensors.
    pub fn names(&self) -> Vec<String> {
        let file = SafeTensors::deserialize(&self.bytes).expect("fixture is valid safetensors");
        file.names().into_iter().map(String::from).collect()
    }

    fn view(&self, name: &str) -> safetensors::tensor::TensorView<'_> {
        SafeTensors::deserialize(&self.bytes)
            .expect("fixture is valid safetensors")
            .tensor(name)
            .unwrap_or_else(|_| panic!("fixture has no tensor {name}"))
    }

    pub fn f32(&self, name: &str) -> Array<f32> {
        let v = self.view(name);
        assert_eq!(v.dtype(), Dtype::F32, "{name}");
        Array {
            shape: v.shape().to_vec(),
            values: v
                .data()
                .chunks_exact(4)
                .map(|c| f32::from_le_bytes(c.try_into().unwrap()))
                .collect(),
        }
    }

    pub fn i64(&self, name: &str) -> Array<i64> {
        let v = self.view(name);
        assert_eq!(v.dtype(), Dtype::I64, "{name}");
        Array {
            shape: v.shape().to_vec(),
            values: v
                .data()
                .chunks_exact(8)
                .map(|c| i64::from_le_bytes(c.try_into().unwrap()))
                .collect(),
        }
    }
}

/// Uploads a `[batch, seq]` id matrix.
pub fn int_tensor(a: &Array<i64>, device: &Device) -> Tensor<2, Int> {
    Tensor::from_data(
        TensorData::new(a.values.clone(), [a.shape[0], a.shape[1]]),
        device,
    )
}

/// Reads a float tensor back as a flat vector.
pub fn to_vec<const D: usize>(t: Tensor<D>) -> Vec<f32> {
    t.into_data()
        .try_into_vec_as::<f32>()
        .expect("float tensor")
}

/// Largest |a - b| over positions whose mask is 1; `a`, `b` are `[batch, seq, vocab]` flattened.
pub fn max_abs_diff_masked(a: &[f32], b: &[f32], mask: &[i64], vocab: usize) -> f32 {
    assert_eq!(a.len(), b.len(), "logit tensors differ in size");
    assert_eq!(a.len(), mask.len() * vocab);
    let mut worst = 0.0f32;
    for (pos, &m) in mask.iter().enumerate() {
        if m == 0 {
            continue;
        }
        for i in pos * vocab..(pos + 1) * vocab {
            let d = (a[i] - b[i]).abs();
            assert!(d.is_finite(), "non-finite logit at position {pos}");
            worst = worst.max(d);
        }
    }
    worst
}

/// Max abs logit difference the fixtures allow (their README and case.json).
pub const LOGITS_TOLERANCE: f32 = 1e-4;

/// Relative L2 error `‖a - b‖ / ‖b‖`, the fixtures' gradient metric.
pub fn relative_l2(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len(), "tensors differ in size");
    let diff: f32 = a
        .iter()
        .zip(b)
        .map(|(x, y)| (x - y).powi(2))
        .sum::<f32>()
        .sqrt();
    let norm: f32 = b.iter().map(|y| y * y).sum::<f32>().sqrt();
    diff / norm
}

/// The `case.json` of a fixture.
pub fn case_json(case: &str) -> serde_json::Value {
    let path = case_dir(case).join("case.json");
    serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap()
}

/// Gradient relative L2 tolerance of the fixtures.
pub const GRAD_TOLERANCE: f32 = 1e-3;
/// Loss relative tolerance (issue: 1e-5 relative).
pub const LOSS_TOLERANCE: f32 = 1e-5;

#[allow(deprecated)] // ndarray is Burn's reference CPU backend; we test against it on purpose
pub fn ndarray_device() -> Device {
    Device::ndarray()
}

pub fn wgpu_device() -> Device {
    Device::wgpu(burn::tensor::DeviceKind::DefaultDevice)
}

/// The modules of `loaded` that have an adapter attached, in model order.
pub fn adapted_modules(loaded: &peft_models::LoadedModel) -> Vec<String> {
    use peft_core::ProjectionHost;
    loaded
        .model
        .projections()
        .into_iter()
        .filter(|(_, p)| !p.adapters.is_empty())
        .map(|(k, _)| k)
        .collect()
}

/// A fixture case with its adapter: a PEFT file, or prompt tuning attached to a base.
pub enum Case {
    Peft(&'static str),
    PromptTuning(&'static str),
}

impl Case {
    pub fn name(&self) -> &'static str {
        match self {
            Case::Peft(name) | Case::PromptTuning(name) => name,
        }
    }

    pub fn load(&self, device: &Device) -> peft_models::LoadedModel {
        let mut loaded =
            peft_models::load_model(&case_dir(self.name()).join("base"), device).unwrap();
        match self {
            Case::Peft(name) => {
                peft_core::adapter_folder::load_adapter(
                    &mut loaded.model,
                    "default",
                    &case_dir(name).join("adapter"),
                )
                .unwrap();
            }
            Case::PromptTuning(_) => {
                let config = peft_core::AdapterConfig::PromptTuning(
                    peft_core::method::prompt::PromptTuningConfig::new(4),
                );
                peft_core::attach_adapter(&mut loaded.model, "default", &config).unwrap();
            }
        }
        loaded
    }
}

/// One case of each kind of adapter: LoRA on GPT-2 and LLaMA, IA3, prefix tuning, and prompt
/// tuning (4 virtual tokens) on both bases.
pub const ADAPTER_CASES: [Case; 6] = [
    Case::Peft("gpt2-lora"),
    Case::Peft("llama-lora"),
    Case::Peft("llama-ia3"),
    Case::Peft("llama-prefix"),
    Case::PromptTuning("gpt2-base"),
    Case::PromptTuning("llama-base"),
];

/// A proptest runner for the fuzz and property tests: `default_cases` cases from a fixed seed
/// (CI runs the same inputs every time), no regression files written into the tree.
/// `PROPTEST_CASES` and `PROPTEST_RNG_SEED` override both for longer runs by hand.
pub fn fuzz_runner(default_cases: u32) -> proptest::test_runner::TestRunner {
    use proptest::test_runner::{Config, RngSeed, TestRunner};
    let mut config = Config::default();
    if std::env::var_os("PROPTEST_CASES").is_none() {
        config.cases = default_cases;
    }
    if std::env::var_os("PROPTEST_RNG_SEED").is_none() {
        config.rng_seed = RngSeed::Fixed(0x5eed_f022);
    }
    config.failure_persistence = None;
    TestRunner::new(config)
}

/// Up to eight byte edits (position as a fraction of the length, new byte) and maybe a
/// truncation (as a fraction of the length).
pub fn byte_edits() -> impl proptest::strategy::Strategy<Value = (Vec<(f64, u8)>, Option<f64>)> {
    (
        proptest::collection::vec((0.0..1.0f64, proptest::arbitrary::any::<u8>()), 1..8),
        proptest::option::weighted(0.2, 0.0..1.0f64),
    )
}

/// `bytes` with the edits applied: even-numbered edits land in the first `hot` bytes (the
/// header, where the structure is; its start more often), odd-numbered ones anywhere.
pub fn mutate(bytes: &[u8], hot: usize, (edits, cut): &(Vec<(f64, u8)>, Option<f64>)) -> Vec<u8> {
    let mut out = bytes.to_vec();
    for (i, &(at, byte)) in edits.iter().enumerate() {
        let pos = if i % 2 == 0 {
            (at * at * hot as f64) as usize
        } else {
            (at * out.len() as f64) as usize
        };
        if let Some(b) = out.get_mut(pos) {
            *b = byte;
        }
    }
    if let Some(cut) = cut {
        out.truncate((cut * out.len() as f64) as usize);
    }
    out
}

/// `case`'s fixture inputs and labels as one training batch.
pub fn fixture_batch(case: &str, device: &Device) -> peft_train::batch::LmBatch {
    let expected = Expected::load(case);
    let labels = expected.i64("labels");
    peft_train::batch::LmBatch {
        input_ids: int_tensor(&expected.i64("input_ids"), device),
        attention_mask: int_tensor(&expected.i64("attention_mask"), device),
        labels: peft_models::loss::HostLabels::new(labels.values, labels.shape[1]),
        learned_tokens: 0,
        tokens: 0,
        loss_weight: 1.0,
    }
}

/// Every gradient `grads` holds for a parameter of `model`, by parameter id: its dtype and
/// values.
pub fn gradients_by_id(
    model: &impl burn::module::Module,
    grads: &burn::optim::GradientsParams,
) -> std::collections::BTreeMap<String, (burn::tensor::DType, Vec<f32>)> {
    use burn::module::{ModuleVisitor, Param};
    struct Collect<'a> {
        grads: &'a burn::optim::GradientsParams,
        out: std::collections::BTreeMap<String, (burn::tensor::DType, Vec<f32>)>,
    }
    impl ModuleVisitor for Collect<'_> {
        fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
            if let Some(grad) = self.grads.get::<D>(param.id) {
                let dtype = grad.dtype();
                self.out.insert(param.id.to_string(), (dtype, to_vec(grad)));
            }
        }
    }
    let mut collect = Collect {
        grads,
        out: Default::default(),
    };
    model.visit(&mut collect);
    collect.out
}

/// A tiny prompt/completion dataset in `dir/train.jsonl` (each word to its reversal), which
/// the fixture models memorise in a few dozen steps.
pub fn write_reversal_data(dir: &std::path::Path) -> PathBuf {
    let path = dir.join("train.jsonl");
    let lines: Vec<String> = ["abc", "hello", "rust"]
        .iter()
        .map(|w| {
            let reversed: String = w.chars().rev().collect();
            serde_json::json!({"prompt": format!("{w} ->"), "completion": format!(" {reversed}")})
                .to_string()
        })
        .collect();
    std::fs::write(&path, lines.join("\n")).unwrap();
    path
}

/// LoRA on the tiny LLaMA's q/v and head, learning [`write_reversal_data`]'s data in `dir`,
/// 40 steps, writing to `<dir>/run`. The fixture's head is small and random: adapting it lets
/// a tiny model memorise.
pub fn reversal_config(dir: &std::path::Path) -> peft_train::TrainConfig {
    use peft_train::config::{LoraOptions, MethodSection, Schedule};
    let mut c = peft_train::TrainConfig::default();
    c.model.path = Some(case_dir("llama-base").join("base"));
    c.data.train = Some(write_reversal_data(dir));
    c.method = MethodSection::Lora(LoraOptions {
        target: vec!["q_proj".into(), "v_proj".into(), "lm_head".into()],
        dropout: 0.0,
        ..LoraOptions::default()
    });
    c.training.lr = 1e-2;
    c.training.schedule = Schedule::Constant;
    c.training.batch_size = 3;
    c.training.max_steps = Some(40);
    c.training.out = dir.join("run");
    c
}

/// The loss of every step a training run in `out` logged.
pub fn logged_losses(out: &std::path::Path) -> Vec<f64> {
    std::fs::read_to_string(out.join("metrics.jsonl"))
        .unwrap()
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap()["loss"].as_f64())
        .collect()
}
