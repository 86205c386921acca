//! The OpenAI error body every Ferry HTTP API answers with (and sends as an SSE event when a
//! stream breaks): `{"error": {"message", "type", "param", "code"}}`. OpenAI's clients parse it
//! into their error types; `code` is Ferry's stable machine-readable name for the error.

use serde::Serialize;

/// One error, as OpenAI clients read it.
#[derive(Serialize, Clone, Debug, PartialEq, Eq)]
pub struct OpenAiError<'a> {
    pub message: String,
    /// OpenAI's error type, e.g. `invalid_request_error`, `server_error`.
    #[serde(rename = "type")]
    pub kind: &'a str,
    /// The request field at fault, if one is.
    pub param: Option<&'a str>,
    pub code: &'a str,
}

impl OpenAiError<'_> {
    /// `{"error": {...}}`.
    pub fn body(&self) -> serde_json::Value {
        serde_json::json!({ "error": self })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_body_has_the_four_fields_openai_clients_read() {
        let e = OpenAiError {
            message: "Unknown model.".into(),
            kind: "invalid_request_error",
            param: Some("model"),
            code: "model_not_found",
        };
        assert_eq!(
            e.body(),
            serde_json::json!({"error": {"message": "Unknown model.", "type": "invalid_request_error",
                                         "param": "model", "code": "model_not_found"}})
        );
        let none = OpenAiError { param: None, ..e };
        assert_eq!(none.body()["error"]["param"], serde_json::Value::Null);
    }
}
