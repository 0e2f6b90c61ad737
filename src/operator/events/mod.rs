//! Events on the objects the controller acts on: `events.k8s.io/v1` Events,
//! created in the background as they are published.
//!
//! Not kube-runtime's `Recorder`, which keeps every Event it published in
//! the last six minutes (to turn a repeat into a series) and scans them all
//! on every publish: at depth, with an Event per waiting Job, per admission
//! and per release, that cache held most of the controller's memory and its
//! scans much of its CPU (10,000 Jobs: about 30,000 Events kept, each
//! publish scanning all of them). Here repeats are counted by a bounded map
//! of hashes (`series`), and the queue of Events not yet created is bounded
//! too: past its size Events are dropped and counted
//! (`jobgate_events_dropped_total`), Normal ones already past half of it,
//! so that a flood of "waiting" notes cannot crowd out a Warning.

use std::sync::{Arc, Mutex};

use futures::StreamExt;
use k8s_openapi::api::core::v1::ObjectReference;
use k8s_openapi::api::events::v1::Event as K8sEvent;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use k8s_openapi::jiff::Timestamp;
use kube::Client;
use kube::api::{Api, Patch, PatchParams, PostParams};
use kube::runtime::events::{Event, EventType, Reporter};
use serde_json::json;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tracing::debug;

use super::metrics::Metrics;

mod series;

use series::{Key, Send, Series};

/// How many Events are being created at once.
const AT_ONCE: usize = 16;

/// How many Events may wait to be created. At 16 at once and about 15 ms
/// each that is about a second of them; a pass at depth hands over
/// thousands at once, most of them "waiting" notes that say again what
/// the status and `kubectl describe` already say.
pub const QUEUE: usize = 1024;

/// One request to the API server.
#[derive(Debug)]
enum Request {
    Create(Box<K8sEvent>),
    Series {
        namespace: String,
        name: String,
        count: u32,
        last: Timestamp,
    },
}

/// Hands Events to a task that creates them, so that no pass waits for
/// its Events: at depth a pass has an Event for every Job it admits,
/// releases or first sees waiting (thousands, for the first pass), and the
/// next admission waits for the pass. The task ends once every `Publisher`
/// is dropped and the Events handed to it are created.
#[derive(Clone)]
pub struct Publisher {
    reporter: Reporter,
    queue: mpsc::Sender<Request>,
    series: Arc<Mutex<Series>>,
    metrics: Arc<Metrics>,
}

impl Publisher {
    pub fn start(client: Client, reporter: Reporter, metrics: Arc<Metrics>) -> Self {
        let (queue, events) = mpsc::channel(QUEUE);
        let task_metrics = metrics.clone();
        tokio::spawn(
            ReceiverStream::new(events).for_each_concurrent(AT_ONCE, move |send| {
                create(client.clone(), task_metrics.clone(), send)
            }),
        );
        Publisher {
            reporter,
            queue,
            series: Arc::default(),
            metrics,
        }
    }

    /// Creates `event` about `regarding`, in its namespace, soon; its time
    /// is now. A repeat of a recent Event counts on it instead.
    pub fn publish(&self, event: &Event, regarding: &ObjectReference) {
        let now = Timestamp::now();
        let built = build(&self.reporter, event, regarding, now);
        let name = built.metadata.name.clone().unwrap_or_default();
        let key = Key {
            namespace: regarding.namespace.as_deref().unwrap_or_default(),
            object: regarding.name.as_deref().unwrap_or_default(),
            uid: regarding.uid.as_deref().unwrap_or_default(),
            type_: built.type_.as_deref().unwrap_or_default(),
            reason: &event.reason,
            action: &event.action,
            note: event.note.as_deref().unwrap_or_default(),
        };
        let observed = match self.series.lock() {
            Ok(mut series) => series.observe(&key, &name, std::time::Instant::now()),
            // A panic elsewhere while counting: send it as a new one.
            Err(_) => Send::Create,
        };
        let send = match observed {
            Send::Create => Request::Create(Box::new(built)),
            Send::Series { name, count } => Request::Series {
                namespace: key.namespace.to_string(),
                name,
                count,
                last: now,
            },
            Send::Nothing => {
                self.metrics.event_repeats.inc();
                return;
            }
        };
        if matches!(send, Request::Series { .. }) {
            self.metrics.event_repeats.inc();
        }
        let normal = matches!(event.type_, EventType::Normal);
        if !admit(self.queue.capacity(), normal) || self.queue.try_send(send).is_err() {
            self.metrics.events_dropped.inc();
        }
    }
}

/// Whether an Event goes into a queue with `free` places left: a Warning
/// while there is room, a Normal one while at least half is free.
fn admit(free: usize, normal: bool) -> bool {
    if normal { free > QUEUE / 2 } else { free > 0 }
}

async fn create(client: Client, metrics: Arc<Metrics>, send: Request) {
    let started = std::time::Instant::now();
    let result = match send {
        Request::Create(event) => {
            let ns = event.metadata.namespace.as_deref().unwrap_or("default");
            let api: Api<K8sEvent> = Api::namespaced(client, ns);
            api.create(&PostParams::default(), &event).await.map(drop)
        }
        Request::Series {
            namespace,
            name,
            count,
            last,
        } => {
            let api: Api<K8sEvent> = Api::namespaced(client, &namespace);
            let patch = json!({"series": {
                "count": count,
                "lastObservedTime": MicroTime(last),
            }});
            api.patch(&name, &PatchParams::default(), &Patch::Merge(&patch))
                .await
                .map(drop)
        }
    };
    metrics.observe_api("publish_event", started.elapsed());
    if let Err(e) = result {
        // Events are for humans; never fail anything over one.
        debug!(error = %e, "could not publish an event");
    }
}

/// The Event as created: named after its object and the time in
/// nanoseconds, as kube-runtime and client-go name theirs.
fn build(
    reporter: &Reporter,
    event: &Event,
    regarding: &ObjectReference,
    now: Timestamp,
) -> K8sEvent {
    let controller = reporter.controller.clone();
    K8sEvent {
        metadata: ObjectMeta {
            namespace: regarding.namespace.clone(),
            name: Some(format!(
                "{}.{:x}",
                regarding.name.as_deref().unwrap_or(&controller),
                now.as_nanosecond()
            )),
            ..Default::default()
        },
        action: Some(event.action.clone()),
        reason: Some(event.reason.clone()),
        note: event.note.clone(),
        event_time: Some(MicroTime(now)),
        regarding: Some(regarding.clone()),
        related: event.secondary.clone(),
        reporting_instance: Some(
            reporter
                .instance
                .clone()
                .unwrap_or_else(|| controller.clone()),
        ),
        reporting_controller: Some(controller),
        type_: Some(
            match event.type_ {
                EventType::Normal => "Normal",
                EventType::Warning => "Warning",
            }
            .to_string(),
        ),
        ..Default::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_event_names_its_object_reporter_and_time() {
        let reporter = Reporter {
            controller: "jobgate".into(),
            instance: Some("jobgate-0".into()),
        };
        let event = Event {
            type_: EventType::Warning,
            reason: "LeaseLost".into(),
            note: Some("suspended".into()),
            action: "Suspend".into(),
            secondary: None,
        };
        let regarding = ObjectReference {
            kind: Some("Job".into()),
            name: Some("etl".into()),
            namespace: Some("batch".into()),
            uid: Some("u1".into()),
            ..Default::default()
        };
        let now = Timestamp::from_second(1_800_000_000).unwrap();
        let built = build(&reporter, &event, &regarding, now);
        assert_eq!(built.metadata.namespace.as_deref(), Some("batch"));
        assert_eq!(
            built.metadata.name,
            Some(format!("etl.{:x}", now.as_nanosecond()))
        );
        assert_eq!(built.type_.as_deref(), Some("Warning"));
        assert_eq!(built.reason.as_deref(), Some("LeaseLost"));
        assert_eq!(built.action.as_deref(), Some("Suspend"));
        assert_eq!(built.note.as_deref(), Some("suspended"));
        assert_eq!(built.regarding, Some(regarding));
        assert_eq!(built.reporting_controller.as_deref(), Some("jobgate"));
        assert_eq!(built.reporting_instance.as_deref(), Some("jobgate-0"));
        assert_eq!(built.event_time, Some(MicroTime(now)));
        assert!(built.series.is_none());
    }

    #[test]
    fn normal_events_give_way_to_warnings_when_the_queue_is_half_full() {
        assert!(admit(QUEUE, true));
        assert!(admit(QUEUE / 2 + 1, true));
        assert!(!admit(QUEUE / 2, true));
        assert!(admit(1, false));
        assert!(!admit(0, false));
    }
}
