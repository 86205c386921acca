//! Events (`events.k8s.io/v1`) that say what happened when it happened.
//!
//! kube-runtime's `Recorder` folds every Event with the same type, action, reason and object into
//! one series and keeps the first one's note: a canary's second step showed as its first, a new
//! rollout's start as the previous rollout's. Here only an exact repeat folds (same object, type,
//! reason *and* note), and only a Warning (an error that recurs each retry): a Normal Event
//! reports a condition's transition, which happens once per change, so each one stays its own
//! Event with its own time, and `kubectl ferry history` lists every rollout's steps in order.

use std::collections::HashMap;
use std::sync::Mutex;

use k8s_openapi::api::core::v1::ObjectReference;
use k8s_openapi::api::events::v1::{Event, EventSeries};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use k8s_openapi::jiff::{SignedDuration, Timestamp};
use kube::api::{Api, Patch, PatchParams, PostParams};
use kube::runtime::events::EventType;

/// A repeat of a Warning within this long folds into the first one's series (as client-go's
/// recorder does); after it, a new Event.
pub const FOLD_WITHIN: SignedDuration = SignedDuration::from_secs(10 * 60);
/// Series remembered at most (the oldest are forgotten first).
const MAX_SERIES: usize = 4096;
/// The API server refuses an Event note longer than this (bytes).
pub const MAX_NOTE_BYTES: usize = 1024;

/// What one Event says about one object.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
struct Key {
    uid: String,
    kind: String,
    namespace: String,
    name: String,
    warning: bool,
    reason: String,
    note: String,
}

#[derive(Clone, Debug)]
struct Series {
    /// The Event's name.
    name: String,
    count: i32,
    last: Timestamp,
}

/// Publishes Events for the operator (one per process: its instance is the pod's identity).
pub struct Recorder {
    client: kube::Client,
    controller: String,
    instance: String,
    series: Mutex<HashMap<Key, Series>>,
}

/// What to do with an Event: create it, or count it into the series of an earlier one.
#[derive(Debug, PartialEq, Eq)]
pub enum Fold {
    Create,
    /// Patch the Event `name` to this count.
    Repeat {
        name: String,
        count: i32,
    },
}

/// The note as the API server accepts it: at most [`MAX_NOTE_BYTES`], cut at a character.
pub fn note(message: &str) -> String {
    if message.len() <= MAX_NOTE_BYTES {
        return message.to_string();
    }
    let mut end = MAX_NOTE_BYTES - '…'.len_utf8();
    while !message.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &message[..end])
}

impl Recorder {
    pub fn new(client: kube::Client, controller: &str, instance: &str) -> Self {
        Self {
            client,
            controller: controller.to_string(),
            instance: instance.to_string(),
            series: Mutex::new(HashMap::new()),
        }
    }

    /// Publishes one Event about `regarding`.
    pub async fn publish(
        &self,
        regarding: &ObjectReference,
        type_: EventType,
        reason: &str,
        message: &str,
    ) -> Result<(), kube::Error> {
        let now = Timestamp::now();
        let note = note(message);
        let key = Key {
            uid: regarding.uid.clone().unwrap_or_default(),
            kind: regarding.kind.clone().unwrap_or_default(),
            namespace: regarding.namespace.clone().unwrap_or_default(),
            name: regarding.name.clone().unwrap_or_default(),
            warning: type_ == EventType::Warning,
            reason: reason.to_string(),
            note: note.clone(),
        };
        let fold = decide(&self.series.lock().unwrap(), &key, now);
        let namespace = key.namespace.clone();
        let events: Api<Event> = Api::namespaced(self.client.clone(), &namespace);
        let name = match fold {
            Fold::Repeat { name, count } => {
                let patch = serde_json::json!({"series": EventSeries {
                    count,
                    last_observed_time: MicroTime(now),
                }});
                events
                    .patch(&name, &PatchParams::default(), &Patch::Merge(&patch))
                    .await?;
                name
            }
            Fold::Create => {
                let event = Event {
                    action: Some("Reconcile".into()),
                    reason: Some(reason.to_string()),
                    note: Some(note),
                    event_time: Some(MicroTime(now)),
                    regarding: Some(regarding.clone()),
                    reporting_controller: Some(self.controller.clone()),
                    reporting_instance: Some(self.instance.clone()),
                    type_: Some(
                        match type_ {
                            EventType::Normal => "Normal",
                            EventType::Warning => "Warning",
                        }
                        .into(),
                    ),
                    metadata: ObjectMeta {
                        namespace: Some(namespace),
                        name: Some(format!("{}.{:x}", key.name, now.as_nanosecond() as u128)),
                        ..Default::default()
                    },
                    ..Default::default()
                };
                let created = events.create(&PostParams::default(), &event).await?;
                created.metadata.name.unwrap_or_default()
            }
        };
        if key.warning {
            remember(&mut self.series.lock().unwrap(), key, name, now);
        }
        Ok(())
    }
}

/// Whether an Event is an exact repeat of a Warning published within [`FOLD_WITHIN`].
fn decide(series: &HashMap<Key, Series>, key: &Key, now: Timestamp) -> Fold {
    match series.get(key) {
        Some(s) if key.warning && now.duration_since(s.last) < FOLD_WITHIN => Fold::Repeat {
            name: s.name.clone(),
            count: s.count + 1,
        },
        _ => Fold::Create,
    }
}

fn remember(series: &mut HashMap<Key, Series>, key: Key, name: String, now: Timestamp) {
    series.retain(|_, s| now.duration_since(s.last) < FOLD_WITHIN);
    if series.len() >= MAX_SERIES
        && let Some(oldest) = series
            .iter()
            .min_by_key(|(_, s)| s.last)
            .map(|(k, _)| k.clone())
    {
        series.remove(&oldest);
    }
    let entry = series.entry(key).or_insert(Series {
        name: name.clone(),
        count: 0,
        last: now,
    });
    if entry.name == name {
        entry.count += 1;
    } else {
        *entry = Series {
            name,
            count: 1,
            last: now,
        };
    }
    entry.last = now;
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(warning: bool, reason: &str, note: &str) -> Key {
        Key {
            uid: "u1".into(),
            kind: "LLMDeployment".into(),
            namespace: "models".into(),
            name: "chat".into(),
            warning,
            reason: reason.into(),
            note: note.into(),
        }
    }

    /// kube-runtime's recorder folded these into one Event that kept the first note.
    #[test]
    fn events_with_the_same_reason_and_other_notes_are_each_their_own() {
        let mut series = HashMap::new();
        let now = Timestamp::now();
        let step = |weight| {
            key(
                false,
                "CanaryStep",
                &format!("canary v2 at {weight}% of traffic"),
            )
        };
        assert_eq!(decide(&series, &step(20), now), Fold::Create);
        remember(&mut series, step(20), "chat.1".into(), now);
        assert_eq!(decide(&series, &step(50), now), Fold::Create);
        // A second rollout's identical step is news too: Normal Events never fold.
        assert_eq!(decide(&series, &step(20), now), Fold::Create);
    }

    #[test]
    fn a_recurring_warning_folds_into_a_series_until_it_is_old() {
        let mut series = HashMap::new();
        let now = Timestamp::now();
        let failing = key(true, "InvalidSpec", "ModelVersion v9 not found");
        assert_eq!(decide(&series, &failing, now), Fold::Create);
        remember(&mut series, failing.clone(), "chat.1".into(), now);
        let later = now + SignedDuration::from_secs(30);
        assert_eq!(
            decide(&series, &failing, later),
            Fold::Repeat {
                name: "chat.1".into(),
                count: 2
            }
        );
        remember(&mut series, failing.clone(), "chat.1".into(), later);
        assert_eq!(
            decide(&series, &failing, later),
            Fold::Repeat {
                name: "chat.1".into(),
                count: 3
            }
        );
        // Another message, or the same after the fold window: a new Event.
        let other = key(true, "InvalidSpec", "ModelVersion v8 not found");
        assert_eq!(decide(&series, &other, later), Fold::Create);
        let much_later = later + FOLD_WITHIN;
        assert_eq!(decide(&series, &failing, much_later), Fold::Create);
    }

    #[test]
    fn remembered_series_stay_bounded() {
        let mut series = HashMap::new();
        let now = Timestamp::now();
        for i in 0..MAX_SERIES + 10 {
            remember(
                &mut series,
                key(true, "Failed", &i.to_string()),
                i.to_string(),
                now,
            );
        }
        assert_eq!(series.len(), MAX_SERIES);
    }

    #[test]
    fn a_long_note_is_cut_to_what_the_api_server_accepts() {
        let long = "é".repeat(MAX_NOTE_BYTES);
        let cut = note(&long);
        assert!(cut.len() <= MAX_NOTE_BYTES, "{}", cut.len());
        assert!(cut.ends_with('…'));
        assert_eq!(note("short"), "short");
    }
}
