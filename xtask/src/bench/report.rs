//! The benchmark's outputs: the rows as JSON, a markdown table, and an SVG chart of tokens/s and
//! peak memory per method and backend. The chart is a few rectangles and labels written out
//! directly; a plotting crate would bring a dependency tree for two bar charts.

use std::fmt::Write as _;
use std::path::Path;

use anyhow::{Context, Result};
use serde_json::Value;

/// Writes `<timestamp>.{json,md,svg}` and `latest.{json,md,svg}` into `dir`.
pub fn write(dir: &Path, rows: &[Value]) -> Result<()> {
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let stamp = utc_timestamp();
    let json = serde_json::to_string_pretty(rows)?;
    let table = markdown(rows);
    let chart = svg(rows);
    for name in [stamp.as_str(), "latest"] {
        std::fs::write(dir.join(format!("{name}.json")), &json)?;
        std::fs::write(dir.join(format!("{name}.md")), &table)?;
        std::fs::write(dir.join(format!("{name}.svg")), &chart)?;
    }
    println!("{table}");
    println!("wrote {}/{{{stamp},latest}}.{{json,md,svg}}", dir.display());
    Ok(())
}

fn num(row: &Value, key: &str) -> Option<f64> {
    row.get(key).and_then(Value::as_f64)
}

fn text<'a>(row: &'a Value, key: &str) -> &'a str {
    row.get(key).and_then(Value::as_str).unwrap_or("?")
}

/// `1234567` → `1.2M`.
fn human(n: f64) -> String {
    match n {
        n if n >= 1e9 => format!("{:.2}G", n / 1e9),
        n if n >= 1e6 => format!("{:.1}M", n / 1e6),
        n if n >= 1e3 => format!("{:.1}K", n / 1e3),
        n => format!("{n:.0}"),
    }
}

/// A chart label: [`human`] from 10 up (without a trailing `.0`: `100K`), two significant
/// digits below 10.
fn chart_value(v: f64) -> String {
    if v >= 10.0 {
        let h = human(v);
        match h.find(".0") {
            Some(i) if h[i + 2..].chars().all(char::is_alphabetic) => {
                format!("{}{}", &h[..i], &h[i + 2..])
            }
            _ => h,
        }
    } else {
        let decimals = (1.0 - v.log10().floor()).max(0.0) as usize;
        format!("{v:.decimals$}")
    }
}

/// The method with its targets when the row names them, `+ckpt` with per-layer activation
/// checkpointing and `+q4`/`+q8` on a packed base: `lora (all-linear) +ckpt +q4`.
fn method_label(row: &Value) -> String {
    let mut method = match row.get("targets").and_then(Value::as_str) {
        Some(targets) => format!("{} ({targets})", text(row, "method")),
        None => text(row, "method").to_string(),
    };
    if row.get("gradient_checkpointing").and_then(Value::as_bool) == Some(true) {
        method.push_str(" +ckpt");
    }
    if let Some(quantize) = row.get("quantize").and_then(Value::as_str) {
        let _ = write!(method, " +{quantize}");
    }
    method
}

/// A chart group: model, then method and shape (rows of several shapes share one chart).
fn group_of(row: &Value) -> String {
    let mut group = format!("{} {}", text(row, "model"), method_label(row));
    if let (Some(batch), Some(seq)) = (num(row, "batch"), num(row, "seq")) {
        let _ = write!(group, " {batch}×{seq}");
    }
    group
}

fn mib(bytes: Option<f64>) -> String {
    bytes.map_or("-".into(), |b| format!("{:.0}", b / (1024.0 * 1024.0)))
}

/// One line per row.
fn markdown(rows: &[Value]) -> String {
    let mut out = String::from(
        "| backend | model | method | batch×seq | dtype | ms/step (min–max) | tokens/s | fwd tokens/s | gen tokens/s | MFU | peak MiB | trainable / total | adapter | HF tokens/s | HF peak MiB | burn/HF |\n\
         |---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|\n",
    );
    for r in rows {
        let opt = |key: &str, f: &dyn Fn(f64) -> String| num(r, key).map_or("-".into(), f);
        let _ = writeln!(
            out,
            "| {} | {} | {} | {}×{} | {} | {:.1} ({:.1}–{:.1}) | {} | {} | {} | {} | {} | {} / {} | {} | {} | {} | {} |",
            text(r, "backend"),
            text(r, "model"),
            method_label(r),
            num(r, "batch").unwrap_or(0.0),
            num(r, "seq").unwrap_or(0.0),
            text(r, "dtype"),
            num(r, "step_ms_median").unwrap_or(f64::NAN),
            num(r, "step_ms_min").unwrap_or(f64::NAN),
            num(r, "step_ms_max").unwrap_or(f64::NAN),
            opt("tokens_per_s", &|v| format!("{v:.0}")),
            opt("forward_tokens_per_s", &|v| format!("{v:.0}")),
            opt("generate_tokens_per_s", &|v| format!("{v:.1}")),
            opt("mfu", &|v| format!("{:.1}%", 100.0 * v)),
            mib(num(r, "peak_mem_bytes")),
            human(num(r, "trainable_params").unwrap_or(0.0)),
            human(num(r, "total_params").unwrap_or(0.0)),
            opt("adapter_bytes", &|v| format!("{}B", human(v))),
            opt("hf_tokens_per_s", &|v| format!("{v:.0}")),
            mib(num(r, "hf_peak_mem_bytes")),
            opt("ratio_vs_hf", &|v| format!("{v:.2}×")),
        );
    }
    out
}

/// Two panels of grouped bars (tokens/s, peak memory): one group per model and method, one
/// bar per backend, each bar labelled with its value. The axes are logarithmic, with a line per
/// decade: a 135M-parameter model runs at a hundredth of the tiny model's tokens/s, and on a
/// linear axis its bars would not show.
fn svg(rows: &[Value]) -> String {
    let mut groups: Vec<String> = Vec::new();
    let mut backends: Vec<String> = Vec::new();
    for r in rows {
        let g = group_of(r);
        if !groups.contains(&g) {
            groups.push(g);
        }
        let b = text(r, "backend").to_string();
        if !backends.contains(&b) {
            backends.push(b);
        }
    }
    const COLORS: [&str; 6] = [
        "#4e79a7", "#f28e2b", "#59a14f", "#e15759", "#76b7b2", "#b07aa1",
    ];
    let (bar, gap, left, panel_h, top) = (30.0, 30.0, 70.0, 220.0, 40.0);
    let group_w = (bar * backends.len() as f64 + gap).max(100.0);
    let legend_w = left + 110.0 * backends.len() as f64 + 20.0;
    let width = (left + group_w * groups.len() as f64 + 20.0).max(legend_w);
    let height = top + 2.0 * (panel_h + 70.0) + 30.0;
    let mut out = format!(
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{width:.0}\" height=\"{height:.0}\" \
         font-family=\"sans-serif\" font-size=\"11\">\n<rect width=\"100%\" height=\"100%\" fill=\"white\"/>\n"
    );
    for (i, b) in backends.iter().enumerate() {
        let x = left + 110.0 * i as f64;
        let _ = writeln!(
            out,
            "<rect x=\"{x}\" y=\"10\" width=\"12\" height=\"12\" fill=\"{}\"/><text x=\"{}\" y=\"20\">{b}</text>",
            COLORS[i % COLORS.len()],
            x + 16.0
        );
    }
    let panels = [
        ("training tokens/s", "tokens_per_s", 1.0),
        (
            "peak memory, MiB",
            "peak_mem_bytes",
            1.0 / (1024.0 * 1024.0),
        ),
    ];
    for (p, (title, key, scale)) in panels.iter().enumerate() {
        let y0 = top + p as f64 * (panel_h + 70.0);
        let base = y0 + panel_h;
        let values = || {
            rows.iter()
                .filter_map(|r| num(r, key))
                .map(|v| v * scale)
                .filter(|v| *v > 0.0)
        };
        // Whole decades around the values, at least one.
        let lo = values().fold(f64::INFINITY, f64::min).log10().floor();
        let hi = values().fold(0.0f64, f64::max).log10().ceil();
        let (lo, hi) = if lo.is_finite() && hi.is_finite() {
            (lo, hi.max(lo + 1.0))
        } else {
            (0.0, 1.0)
        };
        let y_of = |v: f64| base - (v.log10() - lo) / (hi - lo) * (panel_h - 16.0);
        let _ = writeln!(
            out,
            "<text x=\"{left}\" y=\"{}\" font-weight=\"bold\">{title} (log scale)</text>",
            y0 - 4.0,
        );
        for decade in lo as i32..=hi as i32 {
            let v = 10f64.powi(decade);
            let y = y_of(v);
            let stroke = if decade == lo as i32 { "black" } else { "#ddd" };
            let _ = writeln!(
                out,
                "<line x1=\"{left}\" y1=\"{y:.1}\" x2=\"{}\" y2=\"{y:.1}\" stroke=\"{stroke}\"/>\n\
                 <text x=\"{}\" y=\"{:.1}\" text-anchor=\"end\">{}</text>",
                width - 20.0,
                left - 4.0,
                y + 4.0,
                chart_value(v)
            );
        }
        for (gi, g) in groups.iter().enumerate() {
            let gx = left + group_w * gi as f64 + gap / 2.0;
            for (bi, b) in backends.iter().enumerate() {
                let Some(v) = rows
                    .iter()
                    .find(|r| group_of(r) == *g && text(r, "backend") == b)
                    .and_then(|r| num(r, key))
                    .map(|v| v * scale)
                    .filter(|v| *v > 0.0)
                else {
                    continue;
                };
                let y = y_of(v).min(base - 1.0);
                let x = gx + bar * bi as f64;
                let _ = writeln!(
                    out,
                    "<rect x=\"{x:.1}\" y=\"{y:.1}\" width=\"{:.1}\" height=\"{:.1}\" fill=\"{}\"><title>{b} {g}: {}</title></rect>\n\
                     <text x=\"{:.1}\" y=\"{:.1}\" font-size=\"9\" text-anchor=\"middle\">{}</text>",
                    bar - 2.0,
                    base - y,
                    COLORS[bi % COLORS.len()],
                    chart_value(v),
                    x + (bar - 2.0) / 2.0,
                    y - 2.0,
                    chart_value(v)
                );
            }
            // Model above method and shape, so that long names do not run into the next group.
            let center = gx + bar * backends.len() as f64 / 2.0;
            for (line, word) in g.splitn(2, ' ').enumerate() {
                let _ = writeln!(
                    out,
                    "<text x=\"{center:.1}\" y=\"{:.1}\" text-anchor=\"middle\">{word}</text>",
                    base + 14.0 + 13.0 * line as f64
                );
            }
        }
    }
    out.push_str("</svg>\n");
    out
}

/// `YYYYMMDD-HHMMSS` in UTC, from the system clock (civil date from days since 1970,
/// Howard Hinnant's algorithm; no date crate for one file name).
fn utc_timestamp() -> String {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs()) as i64;
    format_utc(secs)
}

/// `secs` since 1970 as `YYYYMMDD-HHMMSS`.
fn format_utc(secs: i64) -> String {
    let (days, rem) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1_460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}{month:02}{day:02}-{:02}{:02}{:02}",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timestamps_are_utc_civil_dates() {
        assert_eq!(format_utc(0), "19700101-000000");
        assert_eq!(format_utc(1_700_000_000), "20231114-221320");
        assert_eq!(format_utc(951_782_400), "20000229-000000");
    }

    #[test]
    fn table_and_chart_have_a_row_and_a_bar_per_measurement() {
        let rows: Vec<Value> = ["flex", "wgpu"]
            .iter()
            .map(|b| {
                serde_json::json!({"backend": b, "model": "tiny", "method": "lora", "batch": 4,
                    "seq": 128, "dtype": "f32", "step_ms_median": 10.0, "step_ms_min": 9.0,
                    "step_ms_max": 11.0, "tokens_per_s": 51200.0, "peak_mem_bytes": 1048576.0,
                    "trainable_params": 7168, "total_params": 142656, "adapter_bytes": 30209,
                    "ratio_vs_hf": 1.5})
            })
            .collect();
        let table = markdown(&rows);
        assert_eq!(table.lines().count(), 4, "{table}");
        assert!(table.contains("| flex | tiny | lora | 4×128 |"), "{table}");
        assert!(table.contains("1.50×"), "{table}");
        let mut all_linear = rows[0].clone();
        all_linear["targets"] = "all-linear".into();
        assert!(
            markdown(&[all_linear.clone()]).contains("| lora (all-linear) |"),
            "targets are shown"
        );
        assert!(svg(&[all_linear.clone()]).contains(">lora (all-linear) 4×128</text>"));
        let mut checkpointed = all_linear;
        checkpointed["gradient_checkpointing"] = true.into();
        assert!(
            markdown(&[checkpointed.clone()]).contains("| lora (all-linear) +ckpt |"),
            "checkpointing is shown"
        );
        let mut quantized = checkpointed;
        quantized["quantize"] = "q4".into();
        assert!(
            markdown(&[quantized]).contains("| lora (all-linear) +ckpt +q4 |"),
            "a packed base is shown"
        );
        let chart = svg(&rows);
        // Two bars per panel, two panels, plus two legend squares.
        assert_eq!(chart.matches("<rect x=").count(), 6, "{chart}");
        assert!(
            chart.contains(">51.2K</text>"),
            "bars are labelled: {chart}"
        );
    }

    #[test]
    fn chart_axes_span_whole_decades() {
        let rows: Vec<Value> = [(51200.0, 30.0), (69.0, 900.0)]
            .iter()
            .zip(["tiny", "smollm2-135m"])
            .map(|((tps, mib), model)| {
                serde_json::json!({"backend": "flex", "model": model, "method": "lora",
                    "tokens_per_s": tps, "peak_mem_bytes": mib * 1048576.0})
            })
            .collect();
        let chart = svg(&rows);
        // tokens/s: 10 … 100K; memory: 10 … 1K MiB.
        for label in [">10</text>", ">100K</text>", ">1K</text>"] {
            assert!(chart.contains(label), "{label} missing: {chart}");
        }
        assert_eq!(chart_value(0.0731), "0.073");
        assert_eq!(chart_value(3.44), "3.4");
    }
}
