//! The report as markdown, JSON and an SVG bar chart.

use std::fmt::Write as _;
use std::path::Path;

use super::{Check, ModeResult, OrtResult, Report, Timing};
use crate::plan::partition::mib;
use crate::{Error, Result};

fn opt_ms(v: Option<f64>) -> String {
    v.map_or("n/a".into(), |v| format!("{v:.1}"))
}

fn opt_ratio(v: Option<f64>) -> String {
    v.map_or("n/a".into(), |v| format!("{v:.2}x"))
}

fn verdict(checks: &[Check]) -> String {
    if checks.is_empty() {
        return "n/a".into();
    }
    let worst = checks.iter().map(|c| c.relative_error).fold(0.0, f64::max);
    match checks.iter().find(|c| !c.passed) {
        None => format!("pass (rel. err. {worst:.1e})"),
        Some(c) => match &c.error {
            Some(e) => format!("FAIL: {}: {e}", c.output),
            None => format!("FAIL (rel. err. {worst:.1e})"),
        },
    }
}

/// One bar of the chart and one row of the latency table.
struct Row {
    label: String,
    timing: Option<Timing>,
    checks: String,
}

impl Report {
    fn rows(&self) -> Vec<Row> {
        let reference = |engine: &str, ort: &OrtResult| Row {
            label: format!("{engine} {}(1 thread)", ort.version.as_deref().map(|v| format!("{v} ")).unwrap_or_default()),
            timing: ort.timing.clone(),
            checks: match &ort.unavailable {
                Some(reason) => format!("n/a: {reason}"),
                None => verdict(&ort.checks),
            },
        };
        let mut rows = vec![
            reference("onnxruntime", &self.onnxruntime),
            reference("onnxruntime-web (wasm)", &self.onnxruntime_web),
            Row {
                label: "native tract (1 thread)".into(),
                timing: Some(self.native.timing.clone()),
                checks: "reference".into(),
            },
        ];
        for c in &self.configs {
            for (name, mode) in [("segments", &c.segments_mode), ("composed", &c.composed)] {
                let label = if c.k == 1 {
                    format!("wasm unsplit (K=1 {name})")
                } else {
                    format!("wasm K={} {name}", c.k)
                };
                let checks = match mode {
                    Some(ModeResult { error: Some(e), .. }) => format!("FAIL: {e}"),
                    Some(m) => verdict(&m.checks),
                    None => format!("n/a: {}", c.error.as_deref().unwrap_or("not run")),
                };
                rows.push(Row {
                    label,
                    timing: mode.as_ref().and_then(|m| m.timing.clone()),
                    checks,
                });
            }
        }
        rows
    }

    /// The report as markdown.
    pub fn to_markdown(&self) -> String {
        let mut md = String::new();
        let w = &mut md;
        let _ = writeln!(
            w,
            "### {} ({:.2} GFLOPs, {} of weights, file {:.1} MB)\n",
            self.model,
            self.gflops,
            mib(self.weight_bytes),
            self.model_bytes as f64 / 1e6
        );
        let inputs: Vec<String> = self
            .inputs
            .iter()
            .map(|i| format!("`{}` {} {:?}", i.name, i.dtype, i.shape))
            .collect();
        let _ = writeln!(
            w,
            "Inputs {} (generated deterministically, the same for every runtime); {} timed runs after one warm-up; \
             `--max-memory {}`. Machine: {}, {} cores, native SIMD {} (wasm: simd128); load average {} before, {} after.\n",
            inputs.join(", "),
            self.runs,
            mib(self.max_memory),
            self.machine.cpu,
            self.machine.cores,
            self.machine.native_simd,
            self.machine.load_before,
            self.machine.load_after
        );

        let native = self.native.timing.mean_ms;
        let unsplit = self
            .configs
            .iter()
            .find(|c| c.k == 1)
            .and_then(|c| c.segments_mode.as_ref())
            .and_then(|m| m.timing.as_ref())
            .map(|t| t.mean_ms);
        let _ = writeln!(
            w,
            "| configuration | mean ms | min ms | median ms | / native tract | / wasm unsplit | outputs vs native tract (1e-4) |"
        );
        let _ = writeln!(w, "|---|---:|---:|---:|---:|---:|---|");
        for row in self.rows() {
            let t = row.timing.as_ref();
            let _ = writeln!(
                w,
                "| {} | {} | {} | {} | {} | {} | {} |",
                row.label,
                opt_ms(t.map(|t| t.mean_ms)),
                opt_ms(t.map(|t| t.min_ms)),
                opt_ms(t.map(|t| t.median_ms)),
                opt_ratio(t.map(|t| t.mean_ms / native)),
                opt_ratio(t.zip(unsplit).map(|(t, u)| t.mean_ms / u)),
                row.checks.replace('|', "\\|")
            );
        }

        let _ = writeln!(w, "\n| ratio | of means | of minimums |\n|---|---:|---:|");
        for r in &self.ratios {
            let _ = writeln!(
                w,
                "| {} | {} | {} |",
                r.name,
                opt_ratio(r.mean),
                opt_ratio(r.min)
            );
        }

        if !self.operators.is_empty() {
            let wasm_total: f64 = self.operators.iter().map(|o| o.wasm_ms).sum();
            let native_total: f64 = self.operators.iter().map(|o| o.native_ms).sum();
            let _ = writeln!(
                w,
                "\nOne inference of the unsplit model by operator of tract's optimised plan (mean of {} profiled runs; \
                 nodes native / wasm):\n\n| operator | nodes | native ms | wasm ms | wasm / native | share of wasm time |\n|---|---:|---:|---:|---:|---:|",
                self.runs
            );
            for o in &self.operators {
                let ratio = if o.native_ms > 0.0 { format!("{:.2}x", o.wasm_ms / o.native_ms) } else { "n/a".into() };
                let _ = writeln!(
                    w,
                    "| {} | {} / {} | {:.2} | {:.2} | {ratio} | {:.1} % |",
                    o.op,
                    o.native_nodes,
                    o.wasm_nodes,
                    o.native_ms,
                    o.wasm_ms,
                    100.0 * o.wasm_ms / wasm_total.max(f64::MIN_POSITIVE)
                );
            }
            let _ = writeln!(w, "| all | | {native_total:.2} | {wasm_total:.2} | {:.2}x | 100 % |", wasm_total / native_total.max(f64::MIN_POSITIVE));
        }

        let _ = writeln!(
            w,
            "\n| target | measured | goal | met |\n|---|---:|---:|---|"
        );
        for t in &self.targets {
            let unit = t.unit.as_str();
            let measured = t.measured.map_or("n/a".into(), |m| {
                if unit == "x" {
                    format!("{m:.2}x")
                } else {
                    format!("{m:.1} ms")
                }
            });
            let goal = if unit == "x" {
                format!("≤ {:.1}x", t.goal)
            } else {
                format!("< {:.0} ms", t.goal)
            };
            let met = match t.met {
                Some(true) => "yes",
                Some(false) => "**no**",
                None => "n/a",
            };
            let _ = writeln!(
                w,
                "| {} | {measured} | {goal} | {met} ({}) |",
                t.name, t.note
            );
        }

        let _ = writeln!(w, "\nBuild (ms) and component sizes:\n");
        let _ = writeln!(
            w,
            "| K | split | build | compose | runtime.wasm | pipeline.wasm | seg-NN.wasm | seg-NN.data.wasm |\n|---:|---:|---:|---:|---:|---:|---|---|"
        );
        for c in &self.configs {
            let sizes = |f: &dyn Fn(&super::SegmentResult) -> u64| match c.segments.is_empty() {
                true => "n/a".to_string(),
                false => format!(
                    "{} MB",
                    c.segments
                        .iter()
                        .map(|s| format!("{:.1}", f(s) as f64 / 1e6))
                        .collect::<Vec<_>>()
                        .join(" / ")
                ),
            };
            let _ = writeln!(
                w,
                "| {} | {} | {} | {} | {} | {} | {} | {} |",
                c.k,
                opt_ms(c.split_ms),
                opt_ms(c.build_ms),
                opt_ms(c.compose_ms),
                c.runtime_bytes
                    .map_or("n/a".into(), |b| format!("{:.1} MB", b as f64 / 1e6)),
                c.pipeline_bytes
                    .map_or("n/a".into(), |b| format!("{:.1} MB", b as f64 / 1e6)),
                sizes(&|s| s.component_bytes),
                sizes(&|s| s.data_bytes)
            );
        }

        let _ = writeln!(
            w,
            "\nCold start. Runtime component ({:.1} MB): Cranelift compile with an empty cache {:.0} ms, precompiled load {:.1} ms. \
             Per segment, with a warm compile cache (ms; `load_segment` = data component build + its precompiled load + instantiation + \
             preparation; cold start = runtime precompiled load + `load_segment`; prebuilt = cold start without building the data component, as a deployment with `netless build`'s artifacts would pay):\n",
            self.runtime.component_bytes as f64 / 1e6,
            self.runtime.compile_ms,
            self.runtime.precompiled_load_ms
        );
        let _ = writeln!(
            w,
            "| K | seg | nodes | blob | data build | data load | instantiate | prepare (1st call) | load_segment | cold start | prebuilt | peak memory / budget |\n|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|"
        );
        for c in &self.configs {
            for s in &c.segments {
                let memory = match s.peak_memory {
                    Some(p) => format!(
                        "{} / {} ({:.0} %)",
                        mib(p),
                        mib(s.budget),
                        100.0 * p as f64 / s.budget.max(1) as f64
                    ),
                    None => format!("n/a / {}", mib(s.budget)),
                };
                let _ = writeln!(
                    w,
                    "| {} | {} | {} | {:.1} MB | {} | {} | {} | {} | {} | {} | {} | {memory} |",
                    c.k,
                    s.index,
                    s.nodes,
                    s.blob_bytes as f64 / 1e6,
                    opt_ms(s.data_build_ms),
                    opt_ms(s.data_load_ms),
                    opt_ms(s.instantiate_ms),
                    opt_ms(s.prepare_ms),
                    opt_ms(s.load_segment_ms),
                    opt_ms(s.cold_start_ms),
                    opt_ms(s.prebuilt_cold_start_ms)
                );
            }
        }
        let _ = writeln!(
            w,
            "\nPre-initialised segments (`netless build` without `--lazy`: the model is prepared inside `seg-NN.wasm`; ms; \
             cold start = precompiled load + instantiation + first call):\n\n\
             | K | seg | seg-NN.wasm | compile | precompiled load | instantiate | 1st call | cold start | 1st inference | 2nd inference | peak memory / budget |\n\
             |---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|"
        );
        for c in &self.configs {
            for s in &c.segments {
                if let Some(p) = &s.preinitialized {
                    let _ = writeln!(
                        w,
                        "| {} | {} | {:.1} MB | {:.0} | {:.1} | {:.2} | {:.2} | {:.1} | {:.1} | {:.1} | {} / {} ({:.0} %) |",
                        c.k,
                        s.index,
                        p.component_bytes as f64 / 1e6,
                        p.compile_ms,
                        p.load_ms,
                        p.instantiate_ms,
                        p.first_call_ms,
                        p.cold_start_ms,
                        p.first_infer_ms,
                        p.warm_infer_ms,
                        mib(p.peak_memory),
                        mib(s.budget),
                        100.0 * p.peak_memory as f64 / s.budget.max(1) as f64
                    );
                }
            }
        }
        for c in &self.configs {
            if let Some(m) = &c.preinitialized {
                let _ = writeln!(
                    w,
                    "\nK={}: pre-initialising took {} ms; the pre-initialised pipeline ran at {} mean, outputs {}.",
                    c.k,
                    opt_ms(c.preinit_ms),
                    m.timing.as_ref().map_or("n/a".into(), |t| format!("{:.1} ms", t.mean_ms)),
                    if m.passed { "pass" } else { "FAIL" }
                );
            }
        }
        let _ = writeln!(
            w,
            "\nComposed pipeline (one store for all segments):\n\n| K | load (incl. compile) ms | peak memory / budget |\n|---:|---:|---|"
        );
        for c in &self.configs {
            if let Some(m) = &c.composed {
                let memory = match (m.peak_memory.first(), m.budget.first()) {
                    (Some(&p), Some(&b)) => format!(
                        "{} / {} ({:.0} %)",
                        mib(p),
                        mib(b),
                        100.0 * p as f64 / b.max(1) as f64
                    ),
                    _ => "n/a".into(),
                };
                let _ = writeln!(w, "| {} | {} | {memory} |", c.k, opt_ms(m.load_ms));
            }
        }
        let errors: Vec<String> = self
            .configs
            .iter()
            .flat_map(|c| {
                let config = c.error.iter().map(move |e| format!("K={}: {e}", c.k));
                let segments = c.segments.iter().filter_map(move |s| {
                    s.error
                        .as_ref()
                        .map(|e| format!("K={} segment {}: {e}", c.k, s.index))
                });
                config.chain(segments)
            })
            .collect();
        if !errors.is_empty() {
            let _ = writeln!(w, "\nErrors:\n");
            for e in errors {
                let _ = writeln!(w, "- {e}");
            }
        }
        md
    }

    /// A horizontal bar chart of mean latency per configuration (min marked by a tick), as SVG.
    pub fn to_svg(&self) -> String {
        let rows = self.rows();
        let (label_w, bar_w, row_h, top) = (250.0, 420.0, 26.0, 40.0);
        let width = label_w + bar_w + 140.0;
        let height = top + row_h * rows.len() as f64 + 20.0;
        let max = rows
            .iter()
            .filter_map(|r| r.timing.as_ref().map(|t| t.mean_ms.max(t.max_ms)))
            .fold(0.0, f64::max)
            .max(1e-9);
        let mut svg = String::new();
        let _ = writeln!(
            svg,
            r#"<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" viewBox="0 0 {width} {height}" font-family="sans-serif" font-size="12">"#
        );
        let _ = writeln!(svg, r#"<rect width="100%" height="100%" fill="white"/>"#);
        let _ = writeln!(
            svg,
            r#"<text x="10" y="22" font-size="14" font-weight="bold">{}: mean latency per configuration, ms ({} runs; tick = min)</text>"#,
            xml(&self.model),
            self.runs
        );
        for (i, row) in rows.iter().enumerate() {
            let y = top + row_h * i as f64;
            let color = if row.label.starts_with("wasm") {
                "#4a7bd0"
            } else if row.label.starts_with("native") {
                "#3c9d5d"
            } else {
                "#d08a3c"
            };
            let _ = writeln!(
                svg,
                r#"<text x="{}" y="{}" text-anchor="end">{}</text>"#,
                label_w - 8.0,
                y + 16.0,
                xml(&row.label)
            );
            match &row.timing {
                Some(t) => {
                    let len = bar_w * t.mean_ms / max;
                    let tick = label_w + bar_w * t.min_ms / max;
                    let _ = writeln!(
                        svg,
                        r#"<rect x="{label_w}" y="{}" width="{len:.1}" height="{}" fill="{color}"/>"#,
                        y + 4.0,
                        row_h - 8.0
                    );
                    let _ = writeln!(
                        svg,
                        r#"<line x1="{tick:.1}" x2="{tick:.1}" y1="{}" y2="{}" stroke="black" stroke-width="1.5"/>"#,
                        y + 2.0,
                        y + row_h - 2.0
                    );
                    let _ = writeln!(
                        svg,
                        r#"<text x="{:.1}" y="{}">{:.1}</text>"#,
                        label_w + len + 6.0,
                        y + 16.0,
                        t.mean_ms
                    );
                }
                None => {
                    let _ = writeln!(
                        svg,
                        r#"<text x="{}" y="{}" fill="gray">n/a</text>"#,
                        label_w + 4.0,
                        y + 16.0
                    );
                }
            }
        }
        svg.push_str("</svg>\n");
        svg
    }

    /// Writes `report.md`, `report.json` and `chart.svg` into `dir` (created if missing).
    pub fn write(&self, dir: &Path) -> Result<()> {
        std::fs::create_dir_all(dir).map_err(Error::io(dir))?;
        let json = serde_json::to_string_pretty(self).map_err(|e| Error::Package {
            what: "report.json".into(),
            reason: e.to_string(),
        })?;
        for (name, text) in [
            ("report.md", self.to_markdown()),
            ("report.json", json),
            ("chart.svg", self.to_svg()),
        ] {
            let path = dir.join(name);
            std::fs::write(&path, text).map_err(Error::io(&path))?;
        }
        Ok(())
    }
}

fn xml(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}
