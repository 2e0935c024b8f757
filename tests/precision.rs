//! A bf16 or f16 base with f32 adapters (`--dtype`), on flex: loss and adapter gradients
//! within stated tolerances of the f32 base's on the fixtures, every adapter tensor, its
//! gradient and AdamW's state in f32, and the combinations that cannot run refused by name.

mod common;

use std::collections::BTreeMap;

use burn::module::{Module, ModuleVisitor, Param};
use burn::tensor::{DType, Device, FloatDType, Tensor};
use burn::train::Learner;
use common::*;
use peft_core::load_adapter;
use peft_models::{load_model_as, BaseFormat};
use peft_train::config::{BaseDtype, MethodSection, Schedule};
use peft_train::model::{TrainableLm, Trained};
use peft_train::schedule::{learning_rates, WarmupSchedule};
use peft_train::step::step_gradients;
use peft_train::{adamw, TrainConfig};

/// One step on `case`'s base held in `dtype` with its PEFT adapter: the loss and, by
/// parameter id, each adapter gradient with its dtype.
fn step(case: &str, dtype: FloatDType) -> (f32, BTreeMap<String, (DType, Vec<f32>)>) {
    let device = Device::flex().autodiff();
    let format = BaseFormat {
        quantize: None,
        dtype: Some(dtype),
    };
    let mut loaded = load_model_as(&case_dir(case).join("base"), &device, format).unwrap();
    let dir = case_dir(case).join("adapter");
    let config = load_adapter(&mut loaded.model, "default", &dir).unwrap();
    let trained = Trained::Adapter {
        name: "default".into(),
        config: Box::new(config),
    };
    let model = TrainableLm::new(loaded.model, trained);
    let rates = learning_rates(WarmupSchedule::new(1e-3, 0, 1, Schedule::Constant, 0), None);
    let mut learner = Learner::new(model, adamw(0.0).init(), rates);
    let step = step_gradients(&mut learner, [fixture_batch(case, &device)], 0.0).unwrap();
    let model = learner.model();
    let grads = gradients_by_id(&model, step.gradients());
    let mut trained = 0;
    model.lm.visit(&mut TrainedDtypes(&mut trained));
    assert_eq!(
        trained,
        grads.len(),
        "{case}: a gradient for each trained tensor"
    );
    (to_vec(step.loss.clone())[0], grads)
}

/// Counts the parameters that train, asserting each is f32.
struct TrainedDtypes<'a>(&'a mut usize);

impl ModuleVisitor for TrainedDtypes<'_> {
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
        if param.is_require_grad() {
            assert_eq!(param.val().dtype(), DType::F32, "a trained tensor is f32");
            *self.0 += 1;
        }
    }
}

/// Loss and adapter gradients on a bf16 / f16 base against the f32 base, per fixture (LoRA on
/// LLaMA and on GPT-2 with its layer norms, learned positions and tied head; IA3; VeRA).
/// Tolerances (measured: loss within 4.4e-5 / 9.0e-6 relative, gradients within 2.0e-2 /
/// 5.9e-3 relative L2), with margin: the loss within 1e-3 (bf16) and 1e-4 (f16) relative;
/// each gradient tensor within 5e-2 (bf16) and 1.5e-2 (f16) relative L2. Every gradient is
/// f32.
#[test]
fn a_low_precision_base_gives_the_loss_and_gradients_of_f32_within_tolerance() {
    let cases = ["llama-lora", "gpt2-lora", "llama-ia3", "llama-vera"];
    for case in cases {
        let (reference_loss, reference) = step(case, FloatDType::F32);
        for (dtype, loss_tol, grad_tol) in [
            (FloatDType::BF16, 1e-3, 5e-2),
            (FloatDType::F16, 1e-4, 1.5e-2),
        ] {
            let (loss, grads) = step(case, dtype);
            let loss_err = ((loss - reference_loss) / reference_loss).abs();
            assert_eq!(
                grads.keys().collect::<Vec<_>>(),
                reference.keys().collect::<Vec<_>>()
            );
            let mut worst = 0.0f32;
            for (id, (grad_dtype, grad)) in &grads {
                assert_eq!(*grad_dtype, DType::F32, "{case} {dtype:?}: gradient dtype");
                worst = worst.max(relative_l2(grad, &reference[id].1));
            }
            eprintln!("{case} {dtype:?}: loss {loss} vs {reference_loss} (rel {loss_err:e}), worst gradient rel L2 {worst:e}");
            assert!(
                loss_err <= loss_tol,
                "{case} {dtype:?}: loss off by {loss_err:e}"
            );
            assert!(
                worst <= grad_tol,
                "{case} {dtype:?}: a gradient off by {worst:e}"
            );
        }
    }
}

/// `train --dtype bf16` on flex: the loss falls, and the checkpoint's AdamW state holds f32
/// moments only, two per adapter tensor.
#[test]
fn training_on_a_bf16_base_keeps_adapters_and_adamw_state_in_f32() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = reversal_config(dir.path());
    config.model.dtype = Some(BaseDtype::Bf16);
    config.training.max_steps = Some(20);
    let summary = peft_train::train(&config, &Device::flex(), false).unwrap();
    let losses = logged_losses(&dir.path().join("run"));
    let (first, last) = (losses[0], *losses.last().unwrap());
    eprintln!("bf16 base: loss {first} -> {last}");
    assert!(last <= 0.3 * first, "loss fell from {first} to {last}");
    assert_eq!(
        summary
            .model
            .token_embedding()
            .dense()
            .unwrap()
            .val()
            .dtype(),
        DType::BF16,
        "the base is bf16"
    );

    let adapter =
        peft_core::adapter_folder::adapter_tensors(&summary.model, "default", None).unwrap();
    let checkpoint = peft_train::checkpoint::checkpoint_dir(&dir.path().join("run"), 20);
    let state = checkpoint.join(peft_train::checkpoint::OPTIMIZER_FILE);
    let tensors = burn_pack::Reader::from_file(&state)
        .unwrap()
        .into_tensors()
        .unwrap();
    let mut moments = 0;
    for tensor in tensors {
        let (name, dtype, _, _, _) = tensor.into_parts().unwrap();
        if name.contains("moment") {
            assert_eq!(dtype, DType::F32, "{name}");
            moments += 1;
        }
    }
    assert_eq!(
        moments,
        2 * adapter.len(),
        "two f32 moments per adapter tensor"
    );
}

/// What cannot run is refused by name: bf16 on ndarray (no bf16 arithmetic), a packed base
/// in bf16, full fine-tuning of a bf16 base.
#[test]
fn unsupported_dtype_combinations_are_refused_by_name() {
    let base = case_dir("llama-base").join("base");
    let bf16 = BaseFormat {
        quantize: None,
        dtype: Some(FloatDType::BF16),
    };
    let err = load_model_as(&base, &ndarray_device(), bf16)
        .unwrap_err()
        .to_string();
    assert!(err.contains("bf16") && err.contains("--dtype f32"), "{err}");
    let packed = BaseFormat {
        quantize: Some(peft_core::PackFormat::Q4),
        ..bf16
    };
    let err = load_model_as(&base, &Device::flex(), packed)
        .unwrap_err()
        .to_string();
    assert!(err.contains("--quantize") && err.contains("bf16"), "{err}");
    let mut config = TrainConfig::default();
    config.model.path = Some(base);
    config.data.train = Some("t.jsonl".into());
    config.model.dtype = Some(BaseDtype::Bf16);
    config.method = MethodSection::Full(peft_train::config::FullOptions {});
    let err = config.validate().unwrap_err().to_string();
    assert!(err.contains("model.dtype"), "{err}");
}
