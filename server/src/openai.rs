//! The OpenAI request bodies Ferry accepts, parsed with the path of any wrong field, and checked
//! into an engine [`Generation`].

use serde::Deserialize;

use crate::engine::{Generation, Input};
use crate::error::ApiError;

#[derive(Deserialize, Debug)]
pub struct ChatRequest {
    pub model: String,
    pub messages: Vec<ChatMessage>,
    #[serde(default)]
    pub stream: bool,
    pub stream_options: Option<StreamOptions>,
    pub max_tokens: Option<u32>,
    pub max_completion_tokens: Option<u32>,
    /// Parsed separately (see [`parse_request`]): `serde(flatten)` would lose the field paths.
    #[serde(skip)]
    pub common: Sampling,
    pub response_format: Option<ResponseFormat>,
    #[serde(default)]
    pub logprobs: bool,
    pub top_logprobs: Option<u32>,
}

#[derive(Deserialize, Debug)]
pub struct CompletionRequest {
    pub model: String,
    pub prompt: Prompt,
    #[serde(default)]
    pub stream: bool,
    pub stream_options: Option<StreamOptions>,
    pub max_tokens: Option<u32>,
    /// Parsed separately (see [`parse_request`]): `serde(flatten)` would lose the field paths.
    #[serde(skip)]
    pub common: Sampling,
    /// Number of top log probabilities per token (the legacy completions form).
    pub logprobs: Option<u32>,
    #[serde(default)]
    pub echo: bool,
}

/// Fields shared by both endpoints.
#[derive(Deserialize, Debug, Default)]
pub struct Sampling {
    pub temperature: Option<f64>,
    pub top_p: Option<f64>,
    pub stop: Option<Stop>,
    pub seed: Option<u64>,
    pub n: Option<u32>,
    pub user: Option<String>,
    pub frequency_penalty: Option<f32>,
    pub presence_penalty: Option<f32>,
    /// Ferry extension: never stop at end-of-sequence (fixed-length benchmark runs).
    #[serde(default)]
    pub ignore_eos: bool,
    /// Ferry extension: generate at least this many tokens before an end-of-sequence.
    pub min_tokens: Option<u32>,
}

#[derive(Deserialize, Debug)]
pub struct StreamOptions {
    #[serde(default)]
    pub include_usage: bool,
}

#[derive(Deserialize, Debug)]
#[serde(untagged)]
pub enum Stop {
    One(String),
    Many(Vec<String>),
}

#[derive(Deserialize, Debug)]
#[serde(untagged)]
pub enum Prompt {
    One(String),
    Many(Vec<String>),
}

#[derive(Deserialize, Debug)]
pub struct ChatMessage {
    pub role: String,
    pub content: Option<Content>,
}

#[derive(Deserialize, Debug)]
#[serde(untagged)]
pub enum Content {
    Text(String),
    Parts(Vec<ContentPart>),
}

#[derive(Deserialize, Debug)]
pub struct ContentPart {
    #[serde(rename = "type")]
    pub kind: String,
    pub text: Option<String>,
}

#[derive(Deserialize, Debug)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ResponseFormat {
    Text,
    JsonObject,
    JsonSchema { json_schema: JsonSchemaFormat },
}

#[derive(Deserialize, Debug)]
pub struct JsonSchemaFormat {
    pub name: Option<String>,
    pub schema: Option<serde_json::Value>,
}

/// An endpoint's body plus the shared sampling fields, each parsed with field paths.
pub trait WithSampling: serde::de::DeserializeOwned {
    fn set_sampling(&mut self, s: Sampling);
}

impl WithSampling for ChatRequest {
    fn set_sampling(&mut self, s: Sampling) {
        self.common = s;
    }
}

impl WithSampling for CompletionRequest {
    fn set_sampling(&mut self, s: Sampling) {
        self.common = s;
    }
}

pub fn parse_request<T: WithSampling>(body: &[u8]) -> Result<T, ApiError> {
    let mut request: T = parse(body)?;
    request.set_sampling(parse(body)?);
    Ok(request)
}

/// Parses a JSON body; a wrong field names its path (`messages[0].role`) as the error's `param`.
pub fn parse<T: serde::de::DeserializeOwned>(body: &[u8]) -> Result<T, ApiError> {
    let de = &mut serde_json::Deserializer::from_slice(body);
    serde_path_to_error::deserialize(de).map_err(|e| {
        let path = e.path().to_string();
        let inner = e.into_inner();
        if inner.is_syntax() || inner.is_eof() {
            ApiError::invalid(format!("The body is not valid JSON: {inner}"))
        } else if path == "." {
            ApiError::invalid(format!("Invalid request body: {inner}"))
        } else {
            ApiError::invalid_param(&path, format!("Invalid value for `{path}`: {inner}"))
        }
    })
}

const ROLES: &[&str] = &["system", "developer", "user", "assistant", "tool"];

impl ChatRequest {
    pub fn into_generation(self) -> Result<(Generation, RequestShape), ApiError> {
        if self.messages.is_empty() {
            return Err(ApiError::invalid_param(
                "messages",
                "`messages` must contain at least one message.",
            ));
        }
        let mut messages = Vec::with_capacity(self.messages.len());
        for (i, m) in self.messages.into_iter().enumerate() {
            if !ROLES.contains(&m.role.as_str()) {
                return Err(ApiError::invalid_param(
                    &format!("messages[{i}].role"),
                    format!(
                        "Invalid role {:?}: expected one of system, developer, user, assistant, tool.",
                        m.role
                    ),
                ));
            }
            let text = match m.content {
                None => String::new(),
                Some(Content::Text(t)) => t,
                Some(Content::Parts(parts)) => {
                    let mut text = String::new();
                    for (j, p) in parts.into_iter().enumerate() {
                        match (p.kind.as_str(), p.text) {
                            ("text", Some(t)) => text.push_str(&t),
                            (kind, _) => {
                                return Err(ApiError::invalid_param(
                                    &format!("messages[{i}].content[{j}]"),
                                    format!(
                                        "Content parts of type {kind:?} are not supported: this model reads text."
                                    ),
                                ));
                            }
                        }
                    }
                    text
                }
            };
            messages.push((m.role, text));
        }
        if self.max_tokens.is_some() && self.max_completion_tokens.is_some() {
            return Err(ApiError::invalid_param(
                "max_tokens",
                "Set `max_tokens` or `max_completion_tokens`, not both.",
            ));
        }
        let json_schema = match self.response_format {
            None | Some(ResponseFormat::Text) => None,
            Some(ResponseFormat::JsonObject) => Some(serde_json::json!({"type": "object"})),
            Some(ResponseFormat::JsonSchema { json_schema }) => match json_schema.schema {
                Some(schema) if schema.is_object() => Some(schema),
                _ => {
                    return Err(ApiError::invalid_param(
                        "response_format.json_schema.schema",
                        "`response_format.json_schema.schema` must be a JSON Schema object.",
                    ));
                }
            },
        };
        let logprobs = match (self.logprobs, self.top_logprobs) {
            (false, Some(_)) => {
                return Err(ApiError::invalid_param(
                    "top_logprobs",
                    "`top_logprobs` needs `logprobs: true`.",
                ));
            }
            (false, None) => None,
            (true, n) => Some(n.unwrap_or(0) as usize),
        };
        let shape = RequestShape::new(self.model, self.stream, self.stream_options, &self.common);
        let g = build(
            Input::Chat(messages),
            self.max_tokens.or(self.max_completion_tokens),
            self.common,
            json_schema,
            logprobs,
        )?;
        Ok((g, shape))
    }
}

impl CompletionRequest {
    pub fn into_generation(self) -> Result<(Generation, RequestShape), ApiError> {
        let prompt = match self.prompt {
            Prompt::One(p) => p,
            Prompt::Many(mut ps) if ps.len() == 1 => ps.remove(0),
            Prompt::Many(_) => {
                return Err(ApiError::invalid_param(
                    "prompt",
                    "Only one prompt per request is supported.",
                ));
            }
        };
        if prompt.is_empty() {
            return Err(ApiError::invalid_param(
                "prompt",
                "`prompt` must not be empty.",
            ));
        }
        if self.echo {
            return Err(ApiError::invalid_param("echo", "`echo` is not supported."));
        }
        let shape = RequestShape::new(self.model, self.stream, self.stream_options, &self.common);
        let g = build(
            Input::Prompt(prompt),
            self.max_tokens,
            self.common,
            None,
            self.logprobs.map(|n| n as usize),
        )?;
        Ok((g, shape))
    }
}

/// What shapes the response, kept apart from what shapes the generation.
#[derive(Debug, Clone)]
pub struct RequestShape {
    pub model: String,
    pub stream: bool,
    pub include_usage: bool,
    pub user: Option<String>,
    /// `max_tokens` as asked; `None` means "up to the context length".
    pub max_tokens: Option<usize>,
}

impl RequestShape {
    fn new(model: String, stream: bool, options: Option<StreamOptions>, s: &Sampling) -> Self {
        Self {
            model,
            stream,
            include_usage: options.is_some_and(|o| o.include_usage),
            user: s.user.clone(),
            max_tokens: None,
        }
    }
}

fn build(
    input: Input,
    max_tokens: Option<u32>,
    s: Sampling,
    json_schema: Option<serde_json::Value>,
    logprobs: Option<usize>,
) -> Result<Generation, ApiError> {
    if let Some(n) = s.n
        && n != 1
    {
        return Err(ApiError::invalid_param(
            "n",
            format!("Only n=1 is supported, got {n}."),
        ));
    }
    if let Some(t) = s.temperature
        && !(0.0..=2.0).contains(&t)
    {
        return Err(ApiError::invalid_param(
            "temperature",
            format!("`temperature` must be between 0 and 2, got {t}."),
        ));
    }
    if let Some(p) = s.top_p
        && !(p > 0.0 && p <= 1.0)
    {
        return Err(ApiError::invalid_param(
            "top_p",
            format!("`top_p` must be above 0 and at most 1, got {p}."),
        ));
    }
    for (name, v) in [
        ("frequency_penalty", s.frequency_penalty),
        ("presence_penalty", s.presence_penalty),
    ] {
        if let Some(v) = v
            && !(-2.0..=2.0).contains(&v)
        {
            return Err(ApiError::invalid_param(
                name,
                format!("`{name}` must be between -2 and 2, got {v}."),
            ));
        }
    }
    if max_tokens == Some(0) {
        return Err(ApiError::invalid_param(
            "max_tokens",
            "`max_tokens` must be at least 1.",
        ));
    }
    if logprobs.is_some_and(|n| n > 20) {
        return Err(ApiError::invalid_param(
            "top_logprobs",
            "At most 20 top log probabilities per token.",
        ));
    }
    let stop = match s.stop {
        None => Vec::new(),
        Some(Stop::One(s)) => vec![s],
        Some(Stop::Many(v)) => v,
    };
    if stop.len() > 4 {
        return Err(ApiError::invalid_param("stop", "At most 4 stop sequences."));
    }
    if stop.iter().any(String::is_empty) {
        return Err(ApiError::invalid_param(
            "stop",
            "Stop sequences must not be empty.",
        ));
    }
    if json_schema.is_some() && !stop.is_empty() {
        return Err(ApiError::invalid_param(
            "stop",
            "`stop` cannot be combined with `response_format` json_object/json_schema: structured output ends when the JSON value is complete.",
        ));
    }
    let min_tokens = s.min_tokens.unwrap_or(0) as usize;
    if let Some(max) = max_tokens
        && min_tokens > max as usize
    {
        return Err(ApiError::invalid_param(
            "min_tokens",
            format!("`min_tokens` ({min_tokens}) exceeds `max_tokens` ({max})."),
        ));
    }
    Ok(Generation {
        input,
        // Resolved against the context length once the prompt is tokenized.
        max_tokens: max_tokens.map(|m| m as usize).unwrap_or(0),
        temperature: s.temperature,
        top_p: s.top_p,
        stop,
        seed: s.seed,
        json_schema,
        logprobs,
        frequency_penalty: s.frequency_penalty,
        presence_penalty: s.presence_penalty,
        ignore_eos: s.ignore_eos,
        min_tokens,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chat(body: &str) -> Result<(Generation, RequestShape), ApiError> {
        parse_request::<ChatRequest>(body.as_bytes())?.into_generation()
    }

    fn err(body: &str) -> (String, Option<String>) {
        match chat(body) {
            Err(ApiError::InvalidRequest { message, param }) => (message, param),
            Err(other) => panic!("unexpected error {other:?}"),
            Ok(_) => panic!("accepted: {body}"),
        }
    }

    #[test]
    fn bad_requests_name_the_field() {
        let cases = [
            (r#"{"model":"m","messages":[]}"#, Some("messages")),
            (
                r#"{"model":"m","messages":[{"role":"wizard","content":"hi"}]}"#,
                Some("messages[0].role"),
            ),
            (
                r#"{"model":"m","messages":[{"role":"user","content":"hi"}],"temperature":"hot"}"#,
                Some("temperature"),
            ),
            (
                r#"{"model":"m","messages":[{"role":"user","content":"hi"}],"temperature":3}"#,
                Some("temperature"),
            ),
            (
                r#"{"model":"m","messages":[{"role":"user","content":"hi"}],"n":2}"#,
                Some("n"),
            ),
            (
                r#"{"model":"m","messages":[{"role":"user","content":"hi"}],"max_tokens":0}"#,
                Some("max_tokens"),
            ),
            (
                r#"{"model":"m","messages":[{"role":"user","content":"hi"}],"stop":["a","b","c","d","e"]}"#,
                Some("stop"),
            ),
            (
                r#"{"model":"m","messages":[{"role":"user","content":[{"type":"image_url"}]}]}"#,
                Some("messages[0].content[0]"),
            ),
            (r#"{"model":"m"}"#, None),
            (
                r#"{"model":"m","messages":[{"role":"user","content":"hi"}],"#,
                None,
            ),
            (
                r#"{"model":"m","messages":[{"role":"user","content":"x"}],"response_format":{"type":"json_schema","json_schema":{"name":"x"}}}"#,
                Some("response_format.json_schema.schema"),
            ),
        ];
        for (body, param) in cases {
            let (message, got) = err(body);
            assert_eq!(got.as_deref(), param, "{body}: {message}");
            assert!(!message.is_empty());
        }
    }

    #[test]
    fn a_full_request_maps_onto_the_engine() {
        let (g, shape) = chat(
            r#"{"model":"m","messages":[{"role":"system","content":"be brief"},{"role":"user","content":[{"type":"text","text":"hi"}]}],
               "stream":true,"stream_options":{"include_usage":true},"max_completion_tokens":7,"temperature":0.5,"top_p":0.9,
               "seed":42,"stop":"\n","user":"u1","logprobs":true,"top_logprobs":3,"min_tokens":2}"#,
        )
        .unwrap();
        assert!(shape.stream && shape.include_usage);
        assert_eq!(shape.user.as_deref(), Some("u1"));
        assert_eq!(g.max_tokens, 7);
        assert_eq!(g.stop, ["\n"]);
        assert_eq!((g.seed, g.logprobs, g.min_tokens), (Some(42), Some(3), 2));
        match g.input {
            Input::Chat(m) => assert_eq!(
                m,
                [
                    ("system".into(), "be brief".into()),
                    ("user".into(), "hi".into())
                ]
            ),
            Input::Prompt(_) => panic!("chat expected"),
        }
    }

    #[test]
    fn parsing_never_panics_on_arbitrary_bytes() {
        // A deterministic fuzz: mutations of a valid body must give Ok or a 400, never a panic.
        let valid = br#"{"model":"m","messages":[{"role":"user","content":"hi"}],"max_tokens":5,"stop":["x"],"response_format":{"type":"json_object"}}"#;
        let mut state = 0x1234_5678_9abc_def0u64;
        let mut next = || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        };
        for _ in 0..20_000 {
            let mut body = valid.to_vec();
            for _ in 0..(1 + next() % 4) {
                let i = (next() as usize) % body.len();
                match next() % 3 {
                    0 => body[i] = next() as u8,
                    1 => {
                        body.remove(i);
                    }
                    _ => body.insert(i, b"{}[]\",:0"[(next() % 8) as usize]),
                }
            }
            if let Err(e) =
                parse_request::<ChatRequest>(&body).and_then(|r| r.into_generation().map(|_| ()))
            {
                assert_eq!(e.status(), axum::http::StatusCode::BAD_REQUEST);
            }
        }
    }
}
