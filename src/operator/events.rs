//! Events on the objects the controller acts on: `events.k8s.io/v1` Events,
//! created in the background as they are published.
//!
//! Not kube-runtime's `Recorder`, which keeps every Event it published in
//! the last six minutes (to turn a repeat into a series) and scans them all
//! on every publish: at depth, with an Event per waiting Job, per admission
//! and per release, that cache held most of the controller's memory and its
//! scans much of its CPU (10,000 Jobs: about 30,000 Events kept, each
//! publish scanning all of them). This controller tells a Job each thing
//! once (see `reconcile`), so it has no repeats to count.

use std::sync::Arc;

use futures::StreamExt;
use k8s_openapi::api::core::v1::ObjectReference;
use k8s_openapi::api::events::v1::Event as K8sEvent;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use k8s_openapi::jiff::Timestamp;
use kube::Client;
use kube::api::{Api, PostParams};
use kube::runtime::events::{Event, EventType, Reporter};
use tokio::sync::mpsc;
use tokio_stream::wrappers::UnboundedReceiverStream;
use tracing::debug;

use super::metrics::Metrics;

/// How many Events are being created at once.
const AT_ONCE: usize = 16;

/// Hands Events to a task that creates them, so that no pass waits for
/// its Events: at depth a pass has an Event for every Job it admits,
/// releases or first sees waiting (thousands, for the first pass), and the
/// next admission waits for the pass. The task ends once every `Publisher`
/// is dropped and the Events handed to it are created.
#[derive(Clone)]
pub struct Publisher {
    reporter: Reporter,
    queue: mpsc::UnboundedSender<K8sEvent>,
}

impl Publisher {
    pub fn start(client: Client, reporter: Reporter, metrics: Arc<Metrics>) -> Self {
        let (queue, events) = mpsc::unbounded_channel();
        tokio::spawn(
            UnboundedReceiverStream::new(events).for_each_concurrent(AT_ONCE, move |event| {
                create(client.clone(), metrics.clone(), event)
            }),
        );
        Publisher { reporter, queue }
    }

    /// Creates `event` about `regarding`, in its namespace, soon; its time
    /// is now.
    pub fn publish(&self, event: &Event, regarding: &ObjectReference) {
        let event = build(&self.reporter, event, regarding, Timestamp::now());
        // The task ends only once every sender is dropped.
        let _ = self.queue.send(event);
    }
}

async fn create(client: Client, metrics: Arc<Metrics>, event: K8sEvent) {
    let ns = event.metadata.namespace.as_deref().unwrap_or("default");
    let api: Api<K8sEvent> = Api::namespaced(client, ns);
    let started = std::time::Instant::now();
    let result = api.create(&PostParams::default(), &event).await;
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
}
