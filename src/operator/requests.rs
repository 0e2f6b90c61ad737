//! Counts every request the controller's Kubernetes client sends, by verb,
//! for `jobgate_kube_requests_total`: the load an admission controller puts
//! on the API server is what platform teams weigh, and watches, Events and
//! status updates count as much as the calls a pass makes.

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use tower::util::MapRequestLayer;

use super::metrics::VerbLabels;

/// The Kubernetes verb of a request: `watch`, `list` and `get` are told
/// apart by the query and by whether the path names one object; paths that
/// name no resource (`/version`, discovery) are `other`.
pub fn verb(method: &http::Method, path: &str, query: Option<&str>) -> &'static str {
    let watch = query.is_some_and(|q| {
        q.split('&')
            .any(|kv| matches!(kv, "watch=true" | "watch=1"))
    });
    let Some(one) = names_one_object(path) else {
        return "other";
    };
    match *method {
        http::Method::GET if watch => "watch",
        http::Method::GET if one => "get",
        http::Method::GET => "list",
        http::Method::POST => "create",
        http::Method::PUT => "update",
        http::Method::PATCH => "patch",
        http::Method::DELETE if one => "delete",
        http::Method::DELETE => "deletecollection",
        _ => "other",
    }
}

/// Whether a resource path names one object (`.../jobs/NAME`, maybe with a
/// subresource) rather than a collection (`.../jobs`); `None` for a path
/// that names no resource.
fn names_one_object(path: &str) -> Option<bool> {
    let segments: Vec<&str> = path.trim_matches('/').split('/').collect();
    // Past the group and version: /api/v1/... or /apis/GROUP/VERSION/...
    let rest = match segments.first() {
        Some(&"api") => segments.get(2..),
        Some(&"apis") => segments.get(3..),
        _ => None,
    }
    .filter(|rest| !rest.is_empty())?;
    Some(match rest {
        // namespaces/NS/RESOURCE[/NAME...]; namespaces/NS alone is one
        // Namespace.
        // namespaces/NS/status and /finalize are one Namespace's.
        ["namespaces", _, "status" | "finalize"] => true,
        ["namespaces", _, _, more @ ..] => !more.is_empty(),
        other => other.len() >= 2,
    })
}

/// The layer that counts each request into `counter`.
pub fn counting(
    counter: Family<VerbLabels, Counter>,
) -> MapRequestLayer<
    impl Fn(http::Request<kube::client::Body>) -> http::Request<kube::client::Body> + Clone,
> {
    MapRequestLayer::new(move |req: http::Request<kube::client::Body>| {
        let verb = verb(req.method(), req.uri().path(), req.uri().query());
        counter
            .get_or_create(&VerbLabels { verb: verb.into() })
            .inc();
        req
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::Method;

    #[test]
    fn verbs_are_told_apart_by_method_path_and_query() {
        let jobs = "/apis/batch/v1/namespaces/team/jobs";
        assert_eq!(verb(&Method::GET, jobs, Some("labelSelector=x")), "list");
        assert_eq!(
            verb(&Method::GET, jobs, Some("watch=true&resourceVersion=5")),
            "watch"
        );
        assert_eq!(
            verb(&Method::GET, "/apis/batch/v1/jobs", Some("watch=1")),
            "watch"
        );
        assert_eq!(verb(&Method::GET, "/apis/batch/v1/jobs", None), "list");
        assert_eq!(verb(&Method::GET, &format!("{jobs}/etl"), None), "get");
        assert_eq!(
            verb(&Method::PATCH, &format!("{jobs}/etl/status"), None),
            "patch"
        );
        assert_eq!(
            verb(&Method::POST, "/api/v1/namespaces/team/events", None),
            "create"
        );
        assert_eq!(
            verb(&Method::GET, "/api/v1/namespaces/kube-system", None),
            "get"
        );
        assert_eq!(verb(&Method::GET, "/api/v1/namespaces", None), "list");
        assert_eq!(verb(&Method::GET, "/api/v1/nodes/n1", None), "get");
        assert_eq!(verb(&Method::DELETE, jobs, None), "deletecollection");
        assert_eq!(
            verb(&Method::DELETE, &format!("{jobs}/etl"), None),
            "delete"
        );
        assert_eq!(verb(&Method::GET, "/version", None), "other");
        assert_eq!(verb(&Method::GET, "/apis/batch/v1", None), "other");
    }
}
