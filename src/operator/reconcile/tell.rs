//! Events: hands an Event about a workload or the group to the publisher
//! (`operator::events`), which creates it in the background. Shared by the
//! steps that act and the one that reports, so that neither imports the
//! other.

use super::*;

pub(super) fn publish(
    ctx: &Context,
    job: &Object,
    type_: EventType,
    reason: &str,
    action: &str,
    note: String,
) {
    publish_on(ctx, job.object_ref(), type_, reason, action, note);
}

pub(super) fn publish_on(
    ctx: &Context,
    target: k8s_openapi::api::core::v1::ObjectReference,
    type_: EventType,
    reason: &str,
    action: &str,
    note: String,
) {
    let event = Event {
        type_,
        reason: reason.to_string(),
        note: Some(note),
        action: action.to_string(),
        secondary: None,
    };
    ctx.recorder.publish(&event, &target);
}
