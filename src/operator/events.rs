//! Events on the objects the controller acts on: `events.k8s.io/v1` Events,
//! each created as it is published.
//!
//! Not kube-runtime's `Recorder`, which keeps every Event it published in
//! the last six minutes (to turn a repeat into a series) and scans them all
//! on every publish: at depth, with an Event per waiting Job, per admission
//! and per release, that cache held most of the controller's memory and its
//! scans much of its CPU (10,000 Jobs: about 30,000 Events kept, each
//! publish scanning all of them). This controller tells a Job each thing
//! once (see `reconcile`), so it has no repeats to count.

use k8s_openapi::api::core::v1::ObjectReference;
use k8s_openapi::api::events::v1::Event as K8sEvent;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use k8s_openapi::jiff::Timestamp;
use kube::Client;
use kube::api::{Api, PostParams};
use kube::runtime::events::{Event, EventType, Reporter};

#[derive(Clone)]
pub struct Publisher {
    client: Client,
    reporter: Reporter,
}

impl Publisher {
    pub fn new(client: Client, reporter: Reporter) -> Self {
        Publisher { client, reporter }
    }

    /// Creates `event` about `regarding`, in its namespace (`default` for a
    /// cluster-scoped object).
    pub async fn publish(&self, event: &Event, regarding: &ObjectReference) -> kube::Result<()> {
        let ns = regarding.namespace.as_deref().unwrap_or("default");
        let api: Api<K8sEvent> = Api::namespaced(self.client.clone(), ns);
        api.create(
            &PostParams::default(),
            &build(&self.reporter, event, regarding, Timestamp::now()),
        )
        .await
        .map(|_| ())
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
