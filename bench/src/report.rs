//! A sweep's results as a table, CSV, JSON and PNG plots.

use std::fmt::Write as _;
use std::path::Path;

use plotters::prelude::*;
use serde::Serialize;

use crate::run::{Level, Target, Workload};

/// Everything one invocation measured.
#[derive(Debug, Serialize)]
pub struct Sweep {
    pub targets: Vec<Target>,
    pub workload: Workload,
    pub levels: Vec<Level>,
}

fn ms(d: Option<crate::stats::Distribution>, f: fn(&crate::stats::Distribution) -> f64) -> String {
    d.map_or("-".into(), |d| format!("{:.1}", f(&d)))
}

impl Sweep {
    /// A Markdown table: one row per target and level.
    pub fn table(&self) -> String {
        let mut out = String::from(
            "| target | conc | tok/s | req/s | TTFT p50 | TTFT p95 | TTFT p99 | ITL p50 | ITL p95 | E2E p50 | E2E p95 | E2E p99 | ok | err | incomplete |\n|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|\n",
        );
        for l in &self.levels {
            let _ = writeln!(
                out,
                "| {} | {} | {:.1} | {:.2} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} |",
                l.target,
                l.concurrency,
                l.output_tokens_per_second,
                l.requests_per_second,
                ms(l.ttft_ms, |d| d.p50),
                ms(l.ttft_ms, |d| d.p95),
                ms(l.ttft_ms, |d| d.p99),
                ms(l.inter_token_ms, |d| d.p50),
                ms(l.inter_token_ms, |d| d.p95),
                ms(l.e2e_ms, |d| d.p50),
                ms(l.e2e_ms, |d| d.p95),
                ms(l.e2e_ms, |d| d.p99),
                l.successes,
                l.errors,
                l.incomplete,
            );
        }
        out.push_str("\n(latencies in ms; tok/s = output tokens of complete answers per second of the level)\n");
        out
    }

    /// With two or more targets: each one's tokens/s and TTFT p50 relative to the first target.
    pub fn ratios(&self) -> Option<String> {
        let first = self.targets.first()?;
        if self.targets.len() < 2 {
            return None;
        }
        let mut out = format!(
            "| target | conc | tok/s vs {0} | TTFT p50 vs {0} |\n|---|---|---|---|\n",
            first.name
        );
        for l in self.levels.iter().filter(|l| l.target != first.name) {
            let Some(base) = self
                .levels
                .iter()
                .find(|b| b.target == first.name && b.concurrency == l.concurrency)
            else {
                continue;
            };
            let ratio = |a: f64, b: f64| {
                if b > 0.0 {
                    format!("{:.2}", a / b)
                } else {
                    "-".into()
                }
            };
            let ttft = match (l.ttft_ms, base.ttft_ms) {
                (Some(a), Some(b)) => ratio(a.p50, b.p50),
                _ => "-".into(),
            };
            let _ = writeln!(
                out,
                "| {} | {} | {} | {} |",
                l.target,
                l.concurrency,
                ratio(l.output_tokens_per_second, base.output_tokens_per_second),
                ttft
            );
        }
        Some(out)
    }

    /// One CSV row per target and level (milliseconds for latencies).
    pub fn csv(&self) -> String {
        let mut out = String::from(
            "target,concurrency,requests,successes,errors,incomplete,seconds,output_tokens_per_second,requests_per_second,mean_prompt_tokens,mean_output_tokens",
        );
        for m in ["ttft", "itl", "e2e"] {
            for s in ["mean", "p50", "p95", "p99"] {
                let _ = write!(out, ",{m}_{s}_ms");
            }
        }
        out.push('\n');
        for l in &self.levels {
            let _ = write!(
                out,
                "{},{},{},{},{},{},{:.3},{:.3},{:.4},{:.1},{:.1}",
                l.target.replace(',', ";"),
                l.concurrency,
                l.requests,
                l.successes,
                l.errors,
                l.incomplete,
                l.seconds,
                l.output_tokens_per_second,
                l.requests_per_second,
                l.mean_prompt_tokens,
                l.mean_output_tokens
            );
            for d in [l.ttft_ms, l.inter_token_ms, l.e2e_ms] {
                match d {
                    Some(d) => {
                        let _ =
                            write!(out, ",{:.3},{:.3},{:.3},{:.3}", d.mean, d.p50, d.p95, d.p99);
                    }
                    None => out.push_str(",,,,"),
                }
            }
            out.push('\n');
        }
        out
    }

    /// Writes `results.csv`, `results.json`, `results.md` and (when a font is found)
    /// `throughput.png` and `ttft.png` into `dir`; returns the files written.
    pub fn write(&self, dir: &Path) -> anyhow::Result<Vec<String>> {
        std::fs::create_dir_all(dir)?;
        let mut written = Vec::new();
        let mut save = |name: &str, text: String| -> anyhow::Result<()> {
            let path = dir.join(name);
            std::fs::write(&path, text)?;
            written.push(path.display().to_string());
            Ok(())
        };
        save("results.csv", self.csv())?;
        save("results.json", serde_json::to_string_pretty(self)?)?;
        let mut md = self.table();
        if let Some(r) = self.ratios() {
            md.push('\n');
            md.push_str(&r);
        }
        save("results.md", md)?;
        match font() {
            Some(()) => {
                for (file, title, unit, value) in [
                    (
                        "throughput.png",
                        "Output tokens/s vs concurrency",
                        "tokens/s",
                        (|l: &Level| Some(l.output_tokens_per_second)) as fn(&Level) -> Option<f64>,
                    ),
                    ("ttft.png", "TTFT p50 vs concurrency", "ms", |l: &Level| {
                        l.ttft_ms.map(|d| d.p50)
                    }),
                ] {
                    let path = dir.join(file);
                    self.plot(&path, title, unit, value)?;
                    written.push(path.display().to_string());
                }
            }
            None => eprintln!(
                "ferry-bench: no plots: DejaVu Sans not found (Debian: apt-get install fonts-dejavu-core; or FERRY_BENCH_FONT=FILE.ttf)"
            ),
        }
        Ok(written)
    }

    fn plot(
        &self,
        path: &Path,
        title: &str,
        unit: &str,
        value: fn(&Level) -> Option<f64>,
    ) -> anyhow::Result<()> {
        let root = BitMapBackend::new(path, (900, 560)).into_drawing_area();
        root.fill(&WHITE)?;
        let max_c = self.levels.iter().map(|l| l.concurrency).max().unwrap_or(1) as f64;
        let max_v = self
            .levels
            .iter()
            .filter_map(value)
            .fold(0.0f64, f64::max)
            .max(1e-9)
            * 1.1;
        let mut chart = ChartBuilder::on(&root)
            .caption(title, ("sans-serif", 26))
            .margin(16)
            .x_label_area_size(44)
            .y_label_area_size(70)
            .build_cartesian_2d(0f64..max_c * 1.05, 0f64..max_v)?;
        chart
            .configure_mesh()
            .x_desc("concurrency")
            .y_desc(unit)
            .label_style(("sans-serif", 16))
            .draw()?;
        for (i, target) in self.targets.iter().enumerate() {
            let color = Palette99::pick(i).to_rgba();
            let points: Vec<(f64, f64)> = self
                .levels
                .iter()
                .filter(|l| l.target == target.name)
                .filter_map(|l| Some((l.concurrency as f64, value(l)?)))
                .collect();
            chart
                .draw_series(LineSeries::new(points.clone(), color.stroke_width(3)))?
                .label(target.name.clone())
                .legend(move |(x, y)| {
                    PathElement::new(vec![(x, y), (x + 20, y)], color.stroke_width(3))
                });
            chart.draw_series(
                points
                    .into_iter()
                    .map(|p| Circle::new(p, 5, color.filled())),
            )?;
        }
        chart
            .configure_series_labels()
            .background_style(WHITE.mix(0.8))
            .border_style(BLACK)
            .label_font(("sans-serif", 16))
            .draw()?;
        root.present()?;
        Ok(())
    }
}

/// Registers DejaVu Sans (Debian's fonts-dejavu-core) as the plots' font, once.
fn font() -> Option<()> {
    static REGISTERED: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    let ok = *REGISTERED.get_or_init(|| {
        // FERRY_BENCH_FONT: any TrueType font (machines without Debian's fonts-dejavu-core, e.g.
        // matplotlib's copy of DejaVu Sans on the GPU machine).
        let path = std::env::var_os("FERRY_BENCH_FONT")
            .unwrap_or_else(|| "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf".into());
        let Ok(bytes) = std::fs::read(path) else {
            return false;
        };
        let bytes: &'static [u8] = Box::leak(bytes.into_boxed_slice());
        plotters::style::register_font("sans-serif", FontStyle::Normal, bytes).is_ok()
    });
    ok.then_some(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::stats::Distribution;

    fn level(target: &str, concurrency: usize, tps: f64, ttft: f64) -> Level {
        Level {
            target: target.into(),
            concurrency,
            requests: 10,
            successes: 10,
            errors: 0,
            incomplete: 0,
            seconds: 1.0,
            output_tokens_per_second: tps,
            requests_per_second: 10.0,
            mean_prompt_tokens: 128.0,
            mean_output_tokens: 128.0,
            ttft_ms: Distribution::of(&[ttft]),
            inter_token_ms: None,
            e2e_ms: Distribution::of(&[ttft * 2.0]),
            error_samples: vec![],
        }
    }

    fn sweep() -> Sweep {
        Sweep {
            targets: vec!["a=http://a".parse().unwrap(), "b=http://b".parse().unwrap()],
            workload: Workload {
                model: "m".into(),
                prompt_tokens: 128,
                output_tokens: 128,
                fixed_length: true,
                api_key: None,
                timeout: std::time::Duration::from_secs(1),
            },
            levels: vec![
                level("a", 1, 100.0, 50.0),
                level("b", 1, 70.0, 100.0),
                level("a", 4, 200.0, 60.0),
                level("b", 4, 300.0, 30.0),
            ],
        }
    }

    #[test]
    fn ratios_compare_each_level_with_the_first_target() {
        let r = sweep().ratios().unwrap();
        assert!(r.contains("| b | 1 | 0.70 | 2.00 |"), "{r}");
        assert!(r.contains("| b | 4 | 1.50 | 0.50 |"), "{r}");
    }

    #[test]
    fn csv_has_a_row_per_level_and_all_columns() {
        let csv = sweep().csv();
        let lines: Vec<&str> = csv.lines().collect();
        assert_eq!(lines.len(), 5);
        let columns = lines[0].split(',').count();
        assert!(
            lines.iter().all(|l| l.split(',').count() == columns),
            "{csv}"
        );
        assert!(lines[2].starts_with("b,1,10,10,0,0,1.000,70.000"), "{csv}");
    }

    #[test]
    fn writes_tables_json_and_plots() {
        let dir = std::env::temp_dir().join(format!("ferry-bench-{}", std::process::id()));
        let written = sweep().write(&dir).unwrap();
        let json: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(dir.join("results.json")).unwrap())
                .unwrap();
        assert_eq!(json["levels"].as_array().unwrap().len(), 4);
        if font().is_some() {
            let png = std::fs::read(dir.join("throughput.png")).unwrap();
            assert_eq!(&png[1..4], b"PNG");
            assert_eq!(written.len(), 5);
        }
        std::fs::remove_dir_all(dir).ok();
    }
}
