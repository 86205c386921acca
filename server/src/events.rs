//! Engine responses → [`Event`]s: drained as fast as the engine sends them, with stop
//! sequences applied and the final chunk synthesized when the engine drops it.

use mistralrs::Response;
use tokio::sync::mpsc;

use crate::engine::{Event, TokenLogprob, Usage};

/// Drains the engine's responses into events as fast as they come. Ends with exactly one
/// `Finish` or `Error`; when the engine closes the stream without its final chunk (it drops it
/// when the last bytes are an incomplete UTF-8 character), the `Finish` is synthesized.
/// `hold` (the engine slot) is dropped when the engine is done or the client is gone.
pub(crate) fn forward(
    mut rx: mpsc::Receiver<Response>,
    is_chat: bool,
    prompt_tokens: usize,
    max_tokens: usize,
    stop: Vec<String>,
    hold: impl Send + 'static,
) -> mpsc::UnboundedReceiver<Event> {
    let (out, events) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        let _hold = hold;
        let mut generated = 0usize;
        let mut filter = StopFilter::new(stop);
        while let Some(response) = rx.recv().await {
            let (deltas, finish, error) = translate(response, is_chat);
            for event in deltas {
                generated += 1;
                let Event::Delta { text, logprob } = event else {
                    continue;
                };
                let (release, stopped) = filter.push(&text, logprob);
                if let Some(event) = release
                    && out.send(event).is_err()
                {
                    return; // client gone: dropping `rx` cancels the sequence
                }
                if stopped {
                    let usage = Usage {
                        prompt_tokens,
                        completion_tokens: generated,
                    };
                    let _ = out.send(Event::Finish {
                        reason: "stop".into(),
                        usage: Some(usage),
                    });
                    return;
                }
            }
            if (finish.is_some() || error.is_some())
                && let Some(event) = filter.flush()
            {
                let _ = out.send(event);
            }
            if let Some(message) = error {
                let _ = out.send(Event::Error(message));
                return;
            }
            if let Some((reason, usage)) = finish {
                let usage = usage.unwrap_or(Usage {
                    prompt_tokens,
                    completion_tokens: generated,
                });
                let _ = out.send(Event::Finish {
                    reason,
                    usage: Some(usage),
                });
                return;
            }
        }
        if let Some(event) = filter.flush() {
            let _ = out.send(event);
        }
        let reason = if generated >= max_tokens {
            "length"
        } else {
            "stop"
        };
        let usage = Usage {
            prompt_tokens,
            completion_tokens: generated,
        };
        let _ = out.send(Event::Finish {
            reason: reason.into(),
            usage: Some(usage),
        });
    });
    events
}

/// Applies stop sequences to streamed text: the engine streams each token as it is sampled and
/// detects a stop sequence only once complete, so text that may begin a stop sequence is held
/// back, and the stop sequence itself is never sent.
struct StopFilter {
    stops: Vec<String>,
    pending: String,
    pending_logprobs: Vec<TokenLogprob>,
}

impl StopFilter {
    fn new(stops: Vec<String>) -> Self {
        Self {
            stops,
            pending: String::new(),
            pending_logprobs: Vec::new(),
        }
    }

    /// Adds a token's text; returns what can be released and whether a stop sequence was hit.
    fn push(&mut self, text: &str, logprob: Option<TokenLogprob>) -> (Option<Event>, bool) {
        if self.stops.is_empty() {
            return (
                Some(Event::Delta {
                    text: text.to_string(),
                    logprob,
                }),
                false,
            );
        }
        self.pending.push_str(text);
        self.pending_logprobs.extend(logprob);
        if let Some(cut) = self
            .stops
            .iter()
            .filter_map(|s| self.pending.find(s.as_str()))
            .min()
        {
            self.pending.truncate(cut);
            return (self.flush(), true);
        }
        // Hold the longest tail that is the beginning of some stop sequence.
        let hold = self
            .stops
            .iter()
            .flat_map(|s| {
                (1..s.len())
                    .filter(move |&k| s.is_char_boundary(k))
                    .map(move |k| &s[..k])
            })
            .filter(|prefix| self.pending.ends_with(prefix))
            .map(str::len)
            .max()
            .unwrap_or(0);
        let release = self.pending.len() - hold;
        if release == 0 {
            return (None, false);
        }
        let rest = self.pending.split_off(release);
        let text = std::mem::replace(&mut self.pending, rest);
        (Some(self.delta(text)), false)
    }

    fn flush(&mut self) -> Option<Event> {
        if self.pending.is_empty() {
            return None;
        }
        let text = std::mem::take(&mut self.pending);
        Some(self.delta(text))
    }

    fn delta(&mut self, text: String) -> Event {
        // Logprobs of held tokens travel with the text that releases them (the last one shown).
        let logprob = self.pending_logprobs.pop();
        self.pending_logprobs.clear();
        Event::Delta { text, logprob }
    }
}

/// Engine response → (deltas, finish, error).
#[allow(clippy::type_complexity)]
fn translate(
    response: Response,
    is_chat: bool,
) -> (Vec<Event>, Option<(String, Option<Usage>)>, Option<String>) {
    let logprob = |l: Option<mistralrs::core::ResponseLogprob>| {
        l.map(|l| TokenLogprob {
            token: l.token,
            logprob: l.logprob,
            top: l
                .top_logprobs
                .into_iter()
                .map(|t| (t.bytes.unwrap_or_default(), t.logprob))
                .collect(),
        })
    };
    let usage = |u: &mistralrs::Usage| Usage {
        prompt_tokens: u.prompt_tokens,
        completion_tokens: u.completion_tokens,
    };
    match response {
        Response::Chunk(chunk) if is_chat => {
            let mut deltas = Vec::new();
            let mut finish = None;
            for c in chunk.choices {
                if let Some(text) = c.delta.content
                    && !text.is_empty()
                {
                    deltas.push(Event::Delta {
                        text,
                        logprob: logprob(c.logprobs),
                    });
                }
                if let Some(reason) = c.finish_reason {
                    finish = Some((reason, chunk.usage.as_ref().map(usage)));
                }
            }
            (deltas, finish, None)
        }
        Response::CompletionChunk(chunk) => {
            let mut deltas = Vec::new();
            let mut finish = None;
            for c in chunk.choices {
                if !c.text.is_empty() {
                    deltas.push(Event::Delta {
                        text: c.text,
                        logprob: logprob(c.logprobs),
                    });
                }
                if let Some(reason) = c.finish_reason {
                    finish = Some((reason, None));
                }
            }
            (deltas, finish, None)
        }
        Response::Done(done) => {
            let reason = done
                .choices
                .first()
                .map(|c| c.finish_reason.clone())
                .unwrap_or_else(|| "stop".into());
            (Vec::new(), Some((reason, Some(usage(&done.usage)))), None)
        }
        Response::CompletionDone(done) => {
            let reason = done
                .choices
                .first()
                .map(|c| c.finish_reason.clone())
                .unwrap_or_else(|| "stop".into());
            (Vec::new(), Some((reason, Some(usage(&done.usage)))), None)
        }
        Response::InternalError(e) | Response::ValidationError(e) => {
            (Vec::new(), None, Some(e.to_string()))
        }
        Response::ModelError(e, _) | Response::CompletionModelError(e, _) => {
            (Vec::new(), None, Some(e))
        }
        _ => (Vec::new(), None, Some("unexpected engine response".into())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chunk(text: &str, finish: Option<&str>) -> Response {
        Response::Chunk(mistralrs::ChatCompletionChunkResponse {
            id: "1".into(),
            choices: vec![mistralrs::ChunkChoice {
                finish_reason: finish.map(String::from),
                index: 0,
                delta: mistralrs::Delta {
                    content: Some(text.into()),
                    role: "assistant".into(),
                    tool_calls: None,
                    reasoning_content: None,
                },
                logprobs: None,
            }],
            created: 0,
            model: "m".into(),
            system_fingerprint: "local".into(),
            object: "chat.completion.chunk".into(),
            usage: None,
        })
    }

    async fn collect(mut rx: mpsc::UnboundedReceiver<Event>) -> Vec<Event> {
        let mut out = Vec::new();
        while let Some(e) = rx.recv().await {
            out.push(e);
        }
        out
    }

    #[tokio::test]
    async fn missing_final_chunk_is_synthesized() {
        let (tx, rx) = mpsc::channel(1);
        let events = forward(rx, true, 7, 3, vec![], ());
        for t in ["a", "b"] {
            tx.send(chunk(t, None)).await.unwrap();
        }
        drop(tx); // the engine gives up without a finish_reason chunk
        let got = collect(events).await;
        assert_eq!(got.len(), 3);
        assert_eq!(
            got[2],
            Event::Finish {
                reason: "stop".into(),
                usage: Some(Usage {
                    prompt_tokens: 7,
                    completion_tokens: 2
                })
            }
        );
    }

    #[tokio::test]
    async fn synthesized_finish_at_max_tokens_says_length() {
        let (tx, rx) = mpsc::channel(1);
        let events = forward(rx, true, 1, 2, vec![], ());
        tx.send(chunk("a", None)).await.unwrap();
        tx.send(chunk("b", None)).await.unwrap();
        drop(tx);
        let got = collect(events).await;
        assert!(matches!(&got[2], Event::Finish { reason, .. } if reason == "length"));
    }

    #[tokio::test]
    async fn engine_finish_passes_through_once() {
        let (tx, rx) = mpsc::channel(1);
        let events = forward(rx, true, 1, 10, vec![], ());
        tx.send(chunk("a", Some("stop"))).await.unwrap();
        let got = collect(events).await;
        assert_eq!(got.len(), 2);
        assert!(matches!(&got[1], Event::Finish { reason, .. } if reason == "stop"));
    }

    #[tokio::test]
    async fn engine_is_drained_even_when_nobody_reads() {
        // The engine's channel holds one response; a reader that never reads must not block it.
        let (tx, rx) = mpsc::channel(1);
        let _events = forward(rx, true, 1, 100, vec![], ());
        for i in 0..50 {
            tokio::time::timeout(
                std::time::Duration::from_secs(2),
                tx.send(chunk(&i.to_string(), None)),
            )
            .await
            .expect("engine send blocked")
            .unwrap();
        }
    }

    #[tokio::test]
    async fn stop_sequences_spanning_tokens_are_cut_and_never_sent() {
        let (tx, rx) = mpsc::channel(1);
        let events = forward(rx, true, 1, 100, vec!["END".into(), "xyz".into()], ());
        for t in ["Hel", "lo E", "N", "D and more"] {
            tx.send(chunk(t, None)).await.unwrap();
        }
        drop(tx);
        let got = collect(events).await;
        let text = delta_text(&got);
        assert_eq!(text, "Hello ");
        assert!(matches!(got.last(), Some(Event::Finish { reason, .. }) if reason == "stop"));
    }

    /// The text of every delta, in order.
    fn delta_text(events: &[Event]) -> String {
        events
            .iter()
            .filter_map(|e| match e {
                Event::Delta { text, .. } => Some(text.as_str()),
                _ => None,
            })
            .collect()
    }

    #[tokio::test]
    async fn held_text_that_is_no_stop_sequence_is_released() {
        let (tx, rx) = mpsc::channel(1);
        let events = forward(rx, true, 1, 100, vec!["END".into()], ());
        for t in ["a E", "N", "b"] {
            tx.send(chunk(t, None)).await.unwrap();
        }
        tx.send(chunk("!", Some("length"))).await.unwrap();
        let got = collect(events).await;
        let text = delta_text(&got);
        assert_eq!(text, "a ENb!");
        assert!(matches!(got.last(), Some(Event::Finish { reason, .. }) if reason == "length"));
    }
}
