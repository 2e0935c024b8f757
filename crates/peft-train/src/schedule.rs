//! Learning rate: linear warmup from 0, then cosine, linear or constant, as transformers'
//! `get_{cosine,linear,constant}_schedule_with_warmup` compute it.

use burn::lr_scheduler::module_lr_scheduler::ModuleLrScheduler;
use burn::lr_scheduler::{LrScheduler, LrSchedulerRecord};
use burn::module::ParamGroup;
use peft_core::method::lora::LORA_PLUS_FAST_FIELDS;

use crate::config::Schedule;

/// The schedule, stepped once per optimizer step (Burn's Learner calls `step` before each
/// optimizer update, so update `k` (from 1) runs at the multiplier of `k - 1`, as in PyTorch).
#[derive(Debug, Clone)]
pub struct WarmupSchedule {
    peak: f64,
    warmup: usize,
    total: usize,
    shape: Schedule,
    taken: usize,
}

impl WarmupSchedule {
    /// A schedule peaking at `peak` after `warmup` of `total` steps, with `taken` steps done
    /// (non-zero when resuming).
    pub fn new(peak: f64, warmup: usize, total: usize, shape: Schedule, taken: usize) -> Self {
        Self {
            peak,
            warmup,
            total,
            shape,
            taken,
        }
    }

    /// The learning rate of the update that follows `done` completed steps.
    pub fn lr_after(&self, done: usize) -> f64 {
        let s = done as f64;
        if done < self.warmup {
            return self.peak * s / self.warmup.max(1) as f64;
        }
        let decay_steps = self.total.saturating_sub(self.warmup).max(1) as f64;
        let progress = (s - self.warmup as f64) / decay_steps;
        let multiplier = match self.shape {
            Schedule::Constant => 1.0,
            Schedule::Linear => ((self.total as f64 - s) / decay_steps).max(0.0),
            Schedule::Cosine => (0.5 * (1.0 + (std::f64::consts::PI * progress).cos())).max(0.0),
        };
        self.peak * multiplier
    }
}

/// The learning rate of every trained tensor: `schedule`, and with LoRA+ (`loraplus_lr_ratio`)
/// the same schedule times the ratio for LoRA's B matrices and DoRA's magnitudes, as PEFT's
/// `create_loraplus_optimizer` groups them.
pub fn learning_rates(
    schedule: WarmupSchedule,
    loraplus_lr_ratio: Option<f64>,
) -> ModuleLrScheduler {
    let Some(ratio) = loraplus_lr_ratio else {
        return schedule.into();
    };
    let fast = ParamGroup::from_regex(format!(r"(^|\.)({})$", LORA_PLUS_FAST_FIELDS.join("|")))
        .expect("the LoRA+ field pattern is a valid regex");
    let scaled = WarmupSchedule {
        peak: schedule.peak * ratio,
        ..schedule.clone()
    };
    ModuleLrScheduler::new(schedule).with_group(fast, scaled)
}

impl LrScheduler for WarmupSchedule {
    fn step(&mut self) -> f64 {
        let lr = self.lr_after(self.taken);
        self.taken += 1;
        lr
    }

    fn to_record(&self) -> LrSchedulerRecord {
        LrSchedulerRecord::new().with_scalar("taken", self.taken as u64)
    }

    fn load_record(&mut self, record: LrSchedulerRecord) {
        if let Some(taken) = record.scalar::<u64>("taken") {
            self.taken = taken as usize;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn warmup_then_cosine_matches_transformers() {
        // get_cosine_schedule_with_warmup(opt, 2, 10) multipliers at steps 0, 1, 2, 6, 10.
        let s = WarmupSchedule::new(1.0, 2, 10, Schedule::Cosine, 0);
        let expected = [0.0, 0.5, 1.0, 0.5, 0.0];
        for (step, want) in [0, 1, 2, 6, 10].into_iter().zip(expected) {
            assert!((s.lr_after(step) - want).abs() < 1e-12, "step {step}");
        }
    }

    #[test]
    fn linear_and_constant() {
        let linear = WarmupSchedule::new(2.0, 0, 4, Schedule::Linear, 0);
        assert_eq!(
            (0..5).map(|k| linear.lr_after(k)).collect::<Vec<_>>(),
            [2.0, 1.5, 1.0, 0.5, 0.0]
        );
        let constant = WarmupSchedule::new(2.0, 1, 4, Schedule::Constant, 0);
        assert_eq!(constant.lr_after(0), 0.0);
        assert_eq!(constant.lr_after(3), 2.0);
    }

    #[test]
    fn stepping_resumes_where_it_stopped() {
        let mut a = WarmupSchedule::new(1.0, 1, 5, Schedule::Cosine, 0);
        let lrs: Vec<f64> = (0..5).map(|_| a.step()).collect();
        let mut b = WarmupSchedule::new(1.0, 1, 5, Schedule::Cosine, 0);
        b.load_record(a.to_record());
        let mut c = WarmupSchedule::new(1.0, 1, 5, Schedule::Cosine, 3);
        assert_eq!(c.step(), lrs[3]);
        assert_eq!(b.taken, 5);
    }
}
