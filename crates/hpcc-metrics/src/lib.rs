//! Prometheus metrics of hpcc's services, through the Prometheus project's `prometheus-client`
//! (metric types, label sets, the OpenMetrics text format): each service keeps its metric
//! families in a struct of its own, registers them in a [`Registry`], and serves it with
//! [`serve`] at `GET /metrics`.
//!
//! Conventions, for every service: names start with `hpcc_` and end in their base unit
//! (`_seconds`, `_bytes`) or `_total` for counters (added by the encoder); latencies are
//! histograms in seconds; labels are bounded: a configured tenant (never one a client merely
//! names), a tier, a result or a reason from a fixed list, never a path, a key or a worker's
//! address.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use futures_util::stream::{FuturesUnordered, StreamExt};
use http_body_util::Full;
use hyper::body::Bytes;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;

pub use prometheus_client;
pub use prometheus_client::registry::Registry;

/// Scrape connections served at once.
pub const MAX_CONNECTIONS: usize = 16;

/// How long one scrape connection may take.
const CONNECTION_TIMEOUT: Duration = Duration::from_secs(10);

/// The content type of the OpenMetrics text format.
const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// Latency buckets in seconds, from a memory hit (0.5 ms) to a long compile (5 min).
pub const LATENCY_BUCKETS: [f64; 14] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 5.0, 30.0, 300.0,
];

/// A histogram over [`LATENCY_BUCKETS`].
pub fn latency_histogram() -> prometheus_client::metrics::histogram::Histogram {
    prometheus_client::metrics::histogram::Histogram::new(LATENCY_BUCKETS)
}

/// The text of `registry` in the OpenMetrics format, after `refresh` (which sets the gauges
/// that are read at scrape time) has run.
pub fn render(registry: &Registry, refresh: &(dyn Fn() + Send + Sync)) -> String {
    refresh();
    let mut text = String::new();
    if let Err(error) = prometheus_client::encoding::text::encode(&mut text, registry) {
        tracing::warn!(%error, "encoding the metrics");
    }
    text
}

/// Serves `registry` at `GET /metrics` on `listener` until the future is dropped: up to
/// [`MAX_CONNECTIONS`] connections at once, each within [`CONNECTION_TIMEOUT`] (so a client
/// that connects and sends nothing holds a place for that long, not the endpoint). Anything
/// but `GET /metrics` is `404`; `refresh` runs before every scrape.
pub async fn serve(
    listener: TcpListener,
    registry: Arc<Registry>,
    refresh: Arc<dyn Fn() + Send + Sync>,
) {
    let mut connections = FuturesUnordered::new();
    loop {
        tokio::select! {
            accepted = listener.accept(), if connections.len() < MAX_CONNECTIONS => {
                let stream = match accepted {
                    Ok((stream, _)) => stream,
                    Err(error) => {
                        tracing::warn!(%error, "accepting a metrics connection");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        continue;
                    }
                };
                let (registry, refresh) = (Arc::clone(&registry), Arc::clone(&refresh));
                let service = hyper::service::service_fn(move |request: Request<_>| {
                    let reply = answer(&request, &registry, refresh.as_ref());
                    async move { Ok::<_, Infallible>(reply) }
                });
                let connection = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service);
                connections.push(async move {
                    match tokio::time::timeout(CONNECTION_TIMEOUT, connection).await {
                        Ok(Ok(())) => {}
                        Ok(Err(error)) => tracing::debug!(%error, "a metrics connection"),
                        Err(_) => tracing::debug!("a metrics connection timed out"),
                    }
                });
            }
            Some(()) = connections.next(), if !connections.is_empty() => {}
        }
    }
}

fn answer<B>(
    request: &Request<B>,
    registry: &Registry,
    refresh: &(dyn Fn() + Send + Sync),
) -> Response<Full<Bytes>> {
    let (status, content_type, body) =
        if request.method() == Method::GET && request.uri().path() == "/metrics" {
            (StatusCode::OK, CONTENT_TYPE, render(registry, refresh))
        } else {
            (
                StatusCode::NOT_FOUND,
                "text/plain; charset=utf-8",
                "metrics are at GET /metrics\n".to_owned(),
            )
        };
    let mut response = Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() = status;
    if let Ok(value) = hyper::header::HeaderValue::from_str(content_type) {
        response
            .headers_mut()
            .insert(hyper::header::CONTENT_TYPE, value);
    }
    response
}

#[cfg(test)]
mod tests {
    use super::*;
    use prometheus_client::metrics::counter::Counter;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    async fn get(address: std::net::SocketAddr, path: &str) -> String {
        let mut stream = tokio::net::TcpStream::connect(address)
            .await
            .expect("connects");
        stream
            .write_all(
                format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").as_bytes(),
            )
            .await
            .expect("writes");
        let mut reply = String::new();
        stream.read_to_string(&mut reply).await.expect("reads");
        reply
    }

    #[tokio::test]
    async fn metrics_are_served_after_a_refresh_and_nothing_else_is() {
        let mut registry = Registry::default();
        let jobs = Counter::<u64>::default();
        registry.register("hpcc_test_jobs", "Jobs.", jobs.clone());
        let refreshed = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let seen = Arc::clone(&refreshed);
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("binds");
        let address = listener.local_addr().expect("an address");
        let server = serve(
            listener,
            Arc::new(registry),
            Arc::new(move || {
                seen.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            }),
        );
        let client = async {
            jobs.inc_by(3);
            let reply = get(address, "/metrics").await;
            assert!(reply.starts_with("HTTP/1.1 200"), "{reply}");
            assert!(reply.contains("application/openmetrics-text"), "{reply}");
            assert!(reply.contains("hpcc_test_jobs_total 3"), "{reply}");
            assert!(reply.trim_end().ends_with("# EOF"), "{reply}");
            assert_eq!(refreshed.load(std::sync::atomic::Ordering::Relaxed), 1);
            let other = get(address, "/").await;
            assert!(other.starts_with("HTTP/1.1 404"), "{other}");
            // A connection that sends nothing does not hold up the next scrape.
            let _silent = tokio::net::TcpStream::connect(address)
                .await
                .expect("connects");
            let again = tokio::time::timeout(Duration::from_secs(5), get(address, "/metrics"))
                .await
                .expect("served beside a silent connection");
            assert!(again.contains("hpcc_test_jobs_total 3"), "{again}");
        };
        tokio::select! {
            () = server => panic!("the server stopped"),
            () = client => {}
        }
    }
}
