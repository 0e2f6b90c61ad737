//! An HTTP proxy that turns conditional writes into plain ones: it drops
//! the preconditions of every write (S3's and Azure's `If-Match` and
//! `If-None-Match` headers, GCS's `ifGenerationMatch` query parameter and
//! `x-goog-if-generation-match` header) and forwards the rest unchanged.
//! Behind it a store behaves as GCS's S3-compatible API does (last writer
//! wins), which `jobgate doctor` must catch. Requests signed over those
//! headers (S3 SigV4, Azure SharedKey) fail behind it unless the server
//! ignores signatures, as moto and fake-gcs-server do.

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpListener;

const HEADERS: [&str; 3] = ["if-match", "if-none-match", "x-goog-if-generation-match"];
const PARAMS: [&str; 2] = ["ifGenerationMatch", "ifMetagenerationMatch"];

pub struct Stripper {
    pub endpoint: String,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Stripper {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// `path?query` with the precondition parameters removed.
fn strip_query(path_and_query: &str) -> String {
    let Some((path, query)) = path_and_query.split_once('?') else {
        return path_and_query.to_string();
    };
    let kept: Vec<&str> = query
        .split('&')
        .filter(|pair| {
            let name = pair.split('=').next().unwrap_or("");
            !PARAMS.contains(&name)
        })
        .collect();
    if kept.is_empty() {
        path.to_string()
    } else {
        format!("{path}?{}", kept.join("&"))
    }
}

async fn handle(
    req: Request<Incoming>,
    client: Client<HttpConnector, Full<Bytes>>,
    upstream: String,
) -> Result<Response<Full<Bytes>>, hyper::Error> {
    let (parts, body) = req.into_parts();
    let body = body.collect().await?.to_bytes();
    let write = matches!(parts.method, Method::PUT | Method::POST | Method::DELETE);
    let path = parts
        .uri
        .path_and_query()
        .map(|p| p.as_str())
        .unwrap_or("/");
    let path = if write {
        strip_query(path)
    } else {
        path.to_string()
    };
    let mut out = Request::builder()
        .method(parts.method.clone())
        .uri(format!("{upstream}{path}"));
    for (name, value) in &parts.headers {
        if write && HEADERS.contains(&name.as_str()) {
            continue;
        }
        out = out.header(name, value);
    }
    let bad_gateway = || {
        let mut r = Response::new(Full::new(Bytes::new()));
        *r.status_mut() = StatusCode::BAD_GATEWAY;
        r
    };
    let Ok(out) = out.body(Full::new(body)) else {
        return Ok(bad_gateway());
    };
    let Ok(resp) = client.request(out).await else {
        return Ok(bad_gateway());
    };
    let (parts, body) = resp.into_parts();
    let body = body.collect().await?.to_bytes();
    Ok(Response::from_parts(parts, Full::new(body)))
}

impl Stripper {
    pub async fn start(upstream: &str) -> Stripper {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind proxy");
        let endpoint = format!("http://{}", listener.local_addr().expect("proxy addr"));
        let client: Client<HttpConnector, Full<Bytes>> =
            Client::builder(TokioExecutor::new()).build_http();
        let upstream = upstream.trim_end_matches('/').to_string();
        let task = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                let (client, upstream) = (client.clone(), upstream.clone());
                tokio::spawn(async move {
                    let service =
                        service_fn(move |req| handle(req, client.clone(), upstream.clone()));
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        Stripper { endpoint, task }
    }
}

#[cfg(test)]
mod tests {
    use super::strip_query;

    #[test]
    fn only_the_preconditions_go() {
        assert_eq!(
            strip_query("/upload/storage/v1/b/b/o?uploadType=media&name=k&ifGenerationMatch=0"),
            "/upload/storage/v1/b/b/o?uploadType=media&name=k"
        );
        assert_eq!(strip_query("/b/k?ifGenerationMatch=3"), "/b/k");
        assert_eq!(strip_query("/b/k"), "/b/k");
    }
}
