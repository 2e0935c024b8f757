//! `cargo xtask soak`: trains LoRA on the tiny fixture (ndarray or flex) for thousands of
//! steps with frequent checkpoints and samples the process's resident memory (a leak shows as
//! growth after warm-up), then trains the same run again while killing it with SIGKILL at random moments
//! (during a step, while a checkpoint is half written, during the final save), resuming after
//! each kill, and checks that it ends bit-identical to the uninterrupted run.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

const USAGE: &str = "usage: cargo xtask soak [options]

  --peft-cli PATH   the peft-cli binary to run (default: `cargo build -p peft-cli`, the
                    build the tests use)
  --steps N         optimizer steps of each run (default 5000)
  --save-every N    checkpoint interval (default 100)
  --kills N         random kills during steps and checkpoint writes (default 30), then one
                    during the final save
  --seed N          seed of the kill schedule (default 1)
  --backend NAME    ndarray (default) or flex
  --out DIR         where the runs, rss.csv and summary.txt go (default target/soak)";

/// Environment variable that makes checkpoint and final-save writes pause (peft-train's
/// `checkpoint::WRITE_DELAY_ENV`), so that a kill can land inside one.
const WRITE_DELAY_ENV: &str = "PEFT_CHECKPOINT_WRITE_DELAY_MS";
/// How long each write pauses in the runs that are killed.
const WRITE_DELAY_MS: u64 = 300;
/// Interval of the memory samples.
const SAMPLE_EVERY: Duration = Duration::from_millis(200);

struct Plan {
    cli: Option<PathBuf>,
    steps: usize,
    save_every: usize,
    kills: usize,
    seed: u64,
    backend: String,
    out: PathBuf,
}

/// Runs the soak as `args` say.
pub fn run(root: &Path, args: &[String]) -> Result<()> {
    let plan = parse(root, args)?;
    let cli = match &plan.cli {
        Some(path) => path.clone(),
        None => build_cli(root)?,
    };
    if plan.out.exists() {
        std::fs::remove_dir_all(&plan.out)
            .with_context(|| format!("cannot clear {}", plan.out.display()))?;
    }
    std::fs::create_dir_all(&plan.out)?;
    let data = write_data(&plan.out)?;
    let fixtures = std::env::var_os("PEFT_FIXTURES")
        .map(PathBuf::from)
        .unwrap_or_else(|| root.join("../shared/fixtures/hf-peft"));
    let run = Run {
        cli,
        model: fixtures.join("llama-base/base"),
        data,
        steps: plan.steps,
        save_every: plan.save_every,
        backend: plan.backend.clone(),
    };

    eprintln!("soak: uninterrupted run of {} steps", plan.steps);
    let reference = plan.out.join("uninterrupted");
    let samples = run.uninterrupted(&reference)?;
    let rss = RssReport::of(&samples, plan.steps / 10);
    write_rss_csv(&plan.out.join("rss.csv"), &samples)?;

    eprintln!(
        "soak: the same run with {} kills, resumed after each",
        plan.kills + 1
    );
    let killed = plan.out.join("killed");
    let tally = run.with_kills(&killed, plan.kills, plan.seed)?;
    let identical = same_result(&reference, &killed)?;

    let summary = format!(
        "{backend}: steps {steps}, checkpoint every {save}\n\
         rss: {rss}\n\
         kills: {total} (during a step {step}, during a checkpoint write {ckpt}, during the final \
         save {fin}); resumes {resumes}; restarts before the first checkpoint {restarts}\n\
         final adapter and logged losses identical to the uninterrupted run: {identical}\n",
        backend = plan.backend,
        steps = plan.steps,
        save = plan.save_every,
        total = tally.step + tally.checkpoint + tally.final_save,
        step = tally.step,
        ckpt = tally.checkpoint,
        fin = tally.final_save,
        resumes = tally.resumes,
        restarts = tally.restarts,
    );
    std::fs::write(plan.out.join("summary.txt"), &summary)?;
    print!("{summary}");
    if !identical {
        bail!("the killed and resumed run differs from the uninterrupted one");
    }
    if rss.growth_fraction() > 0.10 {
        bail!("resident memory grew by more than 10% after warm-up: {rss}");
    }
    Ok(())
}

fn parse(root: &Path, args: &[String]) -> Result<Plan> {
    let mut plan = Plan {
        cli: None,
        steps: 5000,
        save_every: 100,
        kills: 30,
        seed: 1,
        backend: "ndarray".into(),
        out: target_dir(root).join("soak"),
    };
    let mut args = args.iter();
    while let Some(flag) = args.next() {
        let mut value = || {
            args.next()
                .with_context(|| format!("{flag} needs a value\n\n{USAGE}"))
        };
        let number = |v: &String| {
            v.parse::<usize>()
                .with_context(|| format!("{flag} {v:?} is not a number"))
        };
        match flag.as_str() {
            "--peft-cli" => plan.cli = Some(PathBuf::from(value()?)),
            "--steps" => plan.steps = number(value()?)?,
            "--save-every" => plan.save_every = number(value()?)?,
            "--kills" => plan.kills = number(value()?)?,
            "--seed" => plan.seed = number(value()?)? as u64,
            "--out" => plan.out = PathBuf::from(value()?),
            "--backend" => plan.backend = value()?.clone(),
            "--help" | "-h" => {
                println!("{USAGE}");
                std::process::exit(0);
            }
            other => bail!("unknown option {other:?}\n\n{USAGE}"),
        }
    }
    if plan.steps == 0 || plan.save_every == 0 {
        bail!("--steps and --save-every must be at least 1");
    }
    Ok(plan)
}

fn target_dir(root: &Path) -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| root.join("target"))
}

/// `cargo build -p peft-cli`: the dev build the tests already made, so nothing new compiles.
fn build_cli(root: &Path) -> Result<PathBuf> {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let status = Command::new(&cargo)
        .current_dir(root)
        .args(["build", "-p", "peft-cli"])
        .status()
        .with_context(|| format!("cannot run {cargo}"))?;
    if !status.success() {
        bail!("building peft-cli failed ({status})");
    }
    Ok(target_dir(root).join("debug").join("peft-cli"))
}

/// 64 prompt/completion records (a string-reversal task) in `out/train.jsonl`.
fn write_data(out: &Path) -> Result<PathBuf> {
    let path = out.join("train.jsonl");
    let mut file = std::fs::File::create(&path)?;
    for i in 0..64u32 {
        let word: String = (0..5)
            .map(|k| (b'a' + ((i * 7 + k * 3) % 26) as u8) as char)
            .collect();
        let reversed: String = word.chars().rev().collect();
        writeln!(
            file,
            "{{\"prompt\":\"{word} ->\",\"completion\":\" {reversed}\"}}"
        )?;
    }
    Ok(path)
}

/// One memory sample: seconds since start, steps logged so far, resident set in KiB.
struct Sample {
    seconds: f64,
    step: usize,
    rss_kib: u64,
}

/// The training run every phase repeats.
struct Run {
    cli: PathBuf,
    model: PathBuf,
    data: PathBuf,
    steps: usize,
    save_every: usize,
    backend: String,
}

/// Where the kills landed.
#[derive(Default)]
struct Tally {
    step: usize,
    checkpoint: usize,
    final_save: usize,
    resumes: usize,
    restarts: usize,
}

impl Run {
    fn fresh(&self, out: &Path) -> Command {
        let mut command = Command::new(&self.cli);
        command.args(["train", "--backend", &self.backend, "--model"]);
        command.arg(&self.model).arg("--data").arg(&self.data);
        command.arg("--out").arg(out);
        let steps = self.steps.to_string();
        let save_every = self.save_every.to_string();
        command.args(["--method", "lora", "--lr", "1e-3", "--batch-size", "4"]);
        command.args(["--max-steps", &steps, "--save-every", &save_every]);
        command.args(["--log-every", &save_every, "--seed", "0"]);
        command
    }

    fn resumed(&self, out: &Path) -> Command {
        let mut command = Command::new(&self.cli);
        command
            .args(["train", "--backend", &self.backend, "--resume"])
            .arg(out);
        command
    }

    /// The run from start to end, sampling its memory.
    fn uninterrupted(&self, out: &Path) -> Result<Vec<Sample>> {
        let mut child = quiet(self.fresh(out)).spawn()?;
        let started = Instant::now();
        let mut samples = Vec::new();
        loop {
            if let Some(status) = child.try_wait()? {
                if !status.success() {
                    bail!(
                        "the uninterrupted run failed ({status}); see {}",
                        out.display()
                    );
                }
                return Ok(samples);
            }
            if let Some(rss_kib) = resident_kib(child.id()) {
                samples.push(Sample {
                    seconds: started.elapsed().as_secs_f64(),
                    step: logged_steps(out) * self.save_every,
                    rss_kib,
                });
            }
            std::thread::sleep(SAMPLE_EVERY);
        }
    }

    /// The run, killed `kills` times at random moments and once during its final save,
    /// resumed after each kill until it completes.
    fn with_kills(&self, out: &Path, kills: usize, seed: u64) -> Result<Tally> {
        let mut rng = XorShift(seed.max(1));
        let mut tally = Tally::default();
        let mut child = self.start(out, &mut tally)?;
        for _ in 0..kills {
            // Somewhere in the next stretch of steps, or in the first checkpoint write after it.
            let wait = Duration::from_millis(200 + rng.below(3000));
            let landed = if rng.below(2) == 0 {
                wait_or_exit(&mut child, wait)?.then_some(Landed::Step)
            } else {
                (wait_or_exit(&mut child, wait)?
                    && wait_for_partial(&mut child, out, "checkpoint-")?)
                .then_some(Landed::Checkpoint)
            };
            let Some(landed) = landed else {
                break; // it finished first; the final-save kill below restarts nothing
            };
            kill(&mut child)?;
            match landed {
                Landed::Step => tally.step += 1,
                Landed::Checkpoint => tally.checkpoint += 1,
            }
            child = self.start(out, &mut tally)?;
        }
        if wait_for_partial(&mut child, out, "final")? {
            kill(&mut child)?;
            tally.final_save += 1;
            child = self.start(out, &mut tally)?;
        }
        let status = child.wait()?;
        if !status.success() {
            bail!(
                "the last resumed run failed ({status}); see {}",
                out.display()
            );
        }
        Ok(tally)
    }

    /// Resumes from the last checkpoint, or starts afresh when there is none yet.
    fn start(&self, out: &Path, tally: &mut Tally) -> Result<Child> {
        let has_checkpoint = std::fs::read_dir(out).is_ok_and(|entries| {
            entries
                .flatten()
                .any(|e| e.file_name().to_string_lossy().starts_with("checkpoint-"))
        });
        let command = if has_checkpoint {
            tally.resumes += 1;
            self.resumed(out)
        } else {
            if out.exists() {
                tally.restarts += 1;
                std::fs::remove_dir_all(out)?;
            }
            self.fresh(out)
        };
        let mut command = quiet(command);
        command.env(WRITE_DELAY_ENV, WRITE_DELAY_MS.to_string());
        Ok(command.spawn()?)
    }
}

enum Landed {
    Step,
    Checkpoint,
}

fn quiet(mut command: Command) -> Command {
    command.stdout(Stdio::null()).stderr(Stdio::null());
    command
}

/// Waits `wait`, or less if the child exits; true when it is still running.
fn wait_or_exit(child: &mut Child, wait: Duration) -> Result<bool> {
    let until = Instant::now() + wait;
    while Instant::now() < until {
        if child.try_wait()?.is_some() {
            return Ok(false);
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    Ok(true)
}

/// Waits until a hidden `.<prefix>*.partial` folder (a write in progress) exists in `out`;
/// false when the child exits first.
fn wait_for_partial(child: &mut Child, out: &Path, prefix: &str) -> Result<bool> {
    let hidden = format!(".{prefix}");
    loop {
        if child.try_wait()?.is_some() {
            return Ok(false);
        }
        let writing = std::fs::read_dir(out).is_ok_and(|entries| {
            entries.flatten().any(|e| {
                let name = e.file_name().to_string_lossy().into_owned();
                name.starts_with(&hidden) && name.ends_with(".partial")
            })
        });
        if writing {
            // Into the pause, past the first file of the folder.
            std::thread::sleep(Duration::from_millis(WRITE_DELAY_MS / 3));
            return Ok(child.try_wait()?.is_none());
        }
        std::thread::sleep(Duration::from_millis(2));
    }
}

/// SIGKILL, as `kill -9` sends it.
fn kill(child: &mut Child) -> Result<()> {
    child.kill()?;
    child.wait()?;
    Ok(())
}

/// The process's resident set (`VmRSS` in `/proc/<pid>/status`), in KiB.
fn resident_kib(pid: u32) -> Option<u64> {
    status_kib(pid, "VmRSS")
}

/// A memory figure of `/proc/<pid>/status` (`VmRSS`, `VmHWM`, ...), in KiB.
pub(crate) fn status_kib(pid: u32, field: &str) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
}

/// Lines in `out/metrics.jsonl` (one per logged step).
fn logged_steps(out: &Path) -> usize {
    std::fs::read_to_string(out.join("metrics.jsonl")).map_or(0, |t| t.lines().count())
}

/// Whether two runs saved the same final adapter bytes and logged the same losses,
/// learning rates and gradient norms (timings differ, of course).
fn same_result(a: &Path, b: &Path) -> Result<bool> {
    let adapter = |dir: &Path| std::fs::read(dir.join("final/adapter_model.safetensors"));
    let logged = |dir: &Path| -> Result<Vec<serde_json::Value>> {
        std::fs::read_to_string(dir.join("metrics.jsonl"))?
            .lines()
            .map(|line| {
                let mut value: serde_json::Value = serde_json::from_str(line)?;
                if let Some(fields) = value.as_object_mut() {
                    fields.remove("tokens_per_s");
                    fields.remove("step_ms");
                }
                Ok(value)
            })
            .collect()
    };
    Ok(adapter(a)? == adapter(b)? && logged(a)? == logged(b)?)
}

/// Resident memory after warm-up against the end of the run.
struct RssReport {
    warm_kib: u64,
    end_kib: u64,
    peak_kib: u64,
}

impl RssReport {
    /// From `samples`, warm-up ending at the first sample past step `warm_up`.
    fn of(samples: &[Sample], warm_up: usize) -> Self {
        let rss = |s: Option<&Sample>| s.map_or(0, |s| s.rss_kib);
        Self {
            warm_kib: rss(samples.iter().find(|s| s.step > warm_up)),
            end_kib: rss(samples.last()),
            peak_kib: samples.iter().map(|s| s.rss_kib).max().unwrap_or(0),
        }
    }

    fn growth_fraction(&self) -> f64 {
        (self.end_kib as f64 - self.warm_kib as f64) / self.warm_kib.max(1) as f64
    }
}

impl std::fmt::Display for RssReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{:.1} MiB after warm-up, {:.1} MiB at the end ({:+.1}%), peak {:.1} MiB",
            self.warm_kib as f64 / 1024.0,
            self.end_kib as f64 / 1024.0,
            100.0 * self.growth_fraction(),
            self.peak_kib as f64 / 1024.0
        )
    }
}

fn write_rss_csv(path: &Path, samples: &[Sample]) -> Result<()> {
    let mut file = std::fs::File::create(path)?;
    writeln!(file, "seconds,step,rss_kib")?;
    for s in samples {
        writeln!(file, "{:.2},{},{}", s.seconds, s.step, s.rss_kib)?;
    }
    Ok(())
}

/// xorshift64: the kill schedule needs a seeded sequence, not a random-number crate.
struct XorShift(u64);

impl XorShift {
    /// A number in `0..n`.
    fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % n
    }
}
