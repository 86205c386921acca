//! Canary analysis from a Prometheus (`spec.canary.analysis.prometheus`): the query templates
//! rendered for one version, run as instant queries, read as the numbers a verdict needs.

use std::time::Duration;

use ferry_crds::{PrometheusSource, TemplatePiece, template_pieces};
use serde::Deserialize;

use crate::analysis::Measured;

/// How long one query may take.
const TIMEOUT: Duration = Duration::from_secs(5);

/// What a template's placeholders stand for.
pub struct Vars<'a> {
    pub model: &'a str,
    pub version: &'a str,
    pub namespace: &'a str,
    pub name: &'a str,
    pub window_seconds: u64,
}

/// `template` with each `{{placeholder}}` (spaces inside allowed) replaced. Values are escaped
/// for a PromQL double-quoted string; unknown placeholders (refused by validation) stay as they
/// are.
pub fn render(template: &str, vars: &Vars) -> String {
    let mut out = String::with_capacity(template.len() + 32);
    for piece in template_pieces(template) {
        match piece {
            TemplatePiece::Text(text) | TemplatePiece::Unclosed(text) => out.push_str(text),
            TemplatePiece::Placeholder { name, raw } => match name {
                "model" => out.push_str(&escape(vars.model)),
                "version" => out.push_str(&escape(vars.version)),
                "namespace" => out.push_str(&escape(vars.namespace)),
                "name" => out.push_str(&escape(vars.name)),
                "window" => out.push_str(&format!("{}s", vars.window_seconds)),
                _ => out.push_str(raw),
            },
        }
    }
    out
}

fn escape(s: &str) -> String {
    s.replace('\\', "\\\\").replace('"', "\\\"")
}

/// The Prometheus HTTP API's answer to `/api/v1/query`.
#[derive(Deserialize)]
struct Answer {
    status: String,
    #[serde(default)]
    data: Option<Data>,
    #[serde(default, rename = "errorType")]
    error_type: Option<String>,
    #[serde(default)]
    error: Option<String>,
}

#[derive(Deserialize)]
struct Data {
    #[serde(rename = "resultType")]
    result_type: String,
    result: serde_json::Value,
}

/// The one number an instant query's answer holds: `None` for an empty vector or NaN (no data in
/// the window); an error for a failed query or several series.
pub fn value_of(body: &str) -> Result<Option<f64>, String> {
    let answer: Answer = serde_json::from_str(body)
        .map_err(|e| format!("not a Prometheus API answer ({e}): {}", clip(body)))?;
    if answer.status != "success" {
        return Err(format!(
            "{}: {}",
            answer.error_type.as_deref().unwrap_or("error"),
            answer.error.as_deref().unwrap_or("no message")
        ));
    }
    let data = answer.data.ok_or("a success without data")?;
    let sample = match data.result_type.as_str() {
        "scalar" => data.result,
        "vector" => {
            let series = data.result.as_array().cloned().unwrap_or_default();
            match series.as_slice() {
                [] => return Ok(None),
                [one] => one.get("value").cloned().unwrap_or_default(),
                many => {
                    return Err(format!(
                        "the query returned {} series; it must return one number (aggregate it, e.g. with sum)",
                        many.len()
                    ));
                }
            }
        }
        other => {
            return Err(format!(
                "the query returned a {other}; it must return one number"
            ));
        }
    };
    let text = sample
        .get(1)
        .and_then(|v| v.as_str())
        .ok_or_else(|| format!("unexpected sample {sample}"))?;
    let value = match text {
        "+Inf" => f64::INFINITY,
        "-Inf" => f64::NEG_INFINITY,
        t => t
            .parse::<f64>()
            .map_err(|e| format!("sample {t:?} is not a number: {e}"))?,
    };
    Ok((!value.is_nan()).then_some(value))
}

fn clip(s: &str) -> &str {
    let end = s.char_indices().nth(200).map_or(s.len(), |(i, _)| i);
    &s[..end]
}

/// Runs one instant query.
async fn query(
    http: &reqwest::Client,
    address: &str,
    promql: String,
) -> Result<Option<f64>, String> {
    let url = format!("{}/api/v1/query", address.trim_end_matches('/'));
    let with_query = reqwest::Url::parse_with_params(&url, &[("query", &promql)])
        .map_err(|e| format!("{url}: {e}"))?;
    let response = http
        .get(with_query)
        .timeout(TIMEOUT)
        .send()
        .await
        .map_err(|e| format!("{url}: {e}"))?;
    // Prometheus answers a bad query with 400 and the reason in the JSON body.
    let body = crate::signals::read_capped(response, 4 * 1024 * 1024)
        .await
        .map_err(|e| format!("{url}: {e}"))?;
    let body = String::from_utf8_lossy(&body);
    value_of(&body).map_err(|e| format!("{e} (query: {promql})"))
}

/// Requests, error rate and p95s of one version over the window, from the source's queries.
pub async fn measure(
    http: &reqwest::Client,
    source: &PrometheusSource,
    vars: &Vars<'_>,
) -> Result<Measured, String> {
    let queries = source.queries.effective();
    let answers = futures::future::join_all(
        queries
            .iter()
            .map(|template| query(http, &source.address, render(template, vars))),
    )
    .await;
    let mut values = Vec::with_capacity(answers.len());
    for answer in answers {
        values.push(answer.map_err(|e| format!("prometheus {}: {e}", source.address))?);
    }
    let requests = values[0].unwrap_or(0.0);
    Ok(Measured {
        // `increase` extrapolates to the window's edges: a count rounded to the nearest request.
        requests: if requests.is_finite() && requests > 0.0 {
            requests.round() as u64
        } else {
            0
        },
        error_rate_percent: values[1].or((requests > 0.0).then_some(0.0)),
        ttft_p95_ms: values[2],
        latency_p95_ms: values[3],
        inter_token_p95_ms: values[4],
        counts: None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use ferry_crds::PrometheusQueries;

    fn vars() -> Vars<'static> {
        Vars {
            model: "chat",
            version: "v2",
            namespace: "team-a",
            name: "chat-llmd",
            window_seconds: 30,
        }
    }

    #[test]
    fn templates_render_every_placeholder_and_escape_values() {
        assert_eq!(
            render(
                r#"x{m="{{model}}",v="{{ version }}",ns="{{namespace}}",d="{{name}}"}[{{window}}] {{other}}"#,
                &vars()
            ),
            r#"x{m="chat",v="v2",ns="team-a",d="chat-llmd"}[30s] {{other}}"#
        );
        let odd = Vars {
            model: r#"a"b\c"#,
            ..vars()
        };
        assert_eq!(render(r#"{m="{{model}}"}"#, &odd), r#"{m="a\"b\\c"}"#);
        assert_eq!(render("x{{window", &vars()), "x{{window");
    }

    #[test]
    fn the_default_queries_measure_the_routers_metrics_of_the_version() {
        let defaults = PrometheusQueries::default();
        let q = defaults.effective();
        assert_eq!(
            render(q[0], &vars()),
            r#"sum(increase(ferry_router_requests_total{model="chat",version="v2"}[30s]))"#
        );
        assert_eq!(
            render(q[1], &vars()),
            r#"100 * sum(increase(ferry_router_errors_total{model="chat",version="v2"}[30s])) / sum(increase(ferry_router_requests_total{model="chat",version="v2"}[30s]))"#
        );
        assert_eq!(
            render(q[3], &vars()),
            r#"1000 * histogram_quantile(0.95, sum by (le) (rate(ferry_router_request_duration_seconds_bucket{model="chat",version="v2"}[30s])))"#
        );
        assert!(q[2].contains("ferry_router_time_to_first_token_seconds_bucket"));
        assert!(q[4].contains("ferry_router_inter_token_latency_seconds_bucket"));
        let custom = PrometheusQueries {
            latency_p95_ms: Some("my_latency".into()),
            ..Default::default()
        };
        assert_eq!(custom.effective()[3], "my_latency");
        assert_eq!(custom.effective()[0], q[0]);
    }

    #[test]
    fn answers_are_read_as_one_number_or_no_data_or_a_clear_error() {
        let vector = |result: &str| {
            format!(r#"{{"status":"success","data":{{"resultType":"vector","result":{result}}}}}"#)
        };
        assert_eq!(
            value_of(&vector(r#"[{"metric":{},"value":[1700000000.1,"42.5"]}]"#)),
            Ok(Some(42.5))
        );
        assert_eq!(value_of(&vector("[]")), Ok(None));
        assert_eq!(
            value_of(&vector(r#"[{"metric":{},"value":[1,"NaN"]}]"#)),
            Ok(None)
        );
        assert_eq!(
            value_of(&vector(r#"[{"metric":{},"value":[1,"+Inf"]}]"#)),
            Ok(Some(f64::INFINITY))
        );
        let two = vector(
            r#"[{"metric":{"a":"1"},"value":[1,"1"]},{"metric":{"a":"2"},"value":[1,"2"]}]"#,
        );
        assert!(value_of(&two).unwrap_err().contains("2 series"));
        assert_eq!(
            value_of(r#"{"status":"success","data":{"resultType":"scalar","result":[1,"7"]}}"#),
            Ok(Some(7.0))
        );
        assert_eq!(
            value_of(
                r#"{"status":"error","errorType":"bad_data","error":"1:5: parse error: unexpected \"}\""}"#
            ),
            Err(r#"bad_data: 1:5: parse error: unexpected "}""#.to_string())
        );
        assert!(
            value_of("<html>502 Bad Gateway</html>")
                .unwrap_err()
                .starts_with("not a Prometheus API answer")
        );
        let matrix = r#"{"status":"success","data":{"resultType":"matrix","result":[]}}"#;
        assert!(value_of(matrix).unwrap_err().contains("matrix"));
    }
}
