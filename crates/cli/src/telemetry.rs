//! Prometheus `/metrics` and `/health` over HTTP/1.1 (hyper) on the configured address.
//!
//! The endpoint must never take what the loader needs: at most `metrics.max_connections`
//! connections are served at once (more are closed as soon as they are accepted, holding no
//! file descriptor), a client must send its headers within `metrics.read_timeout`, and a
//! connection serves one request and is dropped after `metrics.request_timeout` whatever it
//! does. Idle clients, however many, cost the loader nothing but those few descriptors.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use floe_loader::config::MetricsConfig;
use floe_loader::telemetry::{COMMIT_SECONDS, Health, METRICS_CONNECTIONS_REFUSED};
use http_body_util::Full;
use hyper::body::{Bytes, Incoming};
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use tokio::net::TcpListener;
use tokio::sync::Semaphore;

/// Installs the Prometheus recorder (once per process).
pub fn install() -> Result<PrometheusHandle> {
    PrometheusBuilder::new()
        .set_buckets_for_metric(
            Matcher::Full(COMMIT_SECONDS.to_string()),
            &[
                0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
            ],
        )?
        .install_recorder()
        .context("installing the metrics recorder")
}

/// After a failed accept (the process out of file descriptors, most likely), the listener
/// waits this long before accepting again instead of spinning on the error.
const ACCEPT_ERROR_PAUSE: Duration = Duration::from_millis(100);

/// Refused connections are logged at most this often (with how many since the last line).
const REFUSED_REPORT_EVERY: Duration = Duration::from_secs(60);

/// What a connection's requests are answered from.
#[derive(Clone)]
struct Endpoint {
    handle: PrometheusHandle,
    health: Arc<Health>,
}

impl Endpoint {
    fn answer(&self, req: &Request<Incoming>) -> Response<Full<Bytes>> {
        let (status, body) = match req.uri().path() {
            "/metrics" => (StatusCode::OK, self.handle.render()),
            "/health" => match self.health.check() {
                Ok(s) => (StatusCode::OK, s + "\n"),
                Err(s) => (StatusCode::SERVICE_UNAVAILABLE, s + "\n"),
            },
            _ => (
                StatusCode::NOT_FOUND,
                "try /metrics or /health\n".to_string(),
            ),
        };
        let mut response = Response::new(Full::new(Bytes::from(body)));
        *response.status_mut() = status;
        response.headers_mut().insert(
            hyper::header::CONTENT_TYPE,
            hyper::header::HeaderValue::from_static("text/plain; version=0.0.4"),
        );
        response
    }
}

/// Serves `/metrics` and `/health` on `cfg.listen` until the process ends.
pub async fn serve(
    cfg: &MetricsConfig,
    handle: PrometheusHandle,
    health: Arc<Health>,
) -> Result<()> {
    cfg.validate().map_err(anyhow::Error::msg)?;
    let listener = TcpListener::bind(&cfg.listen)
        .await
        .with_context(|| format!("metrics.listen {}: cannot listen", cfg.listen))?;
    tracing::info!(
        address = %listener.local_addr()?,
        max_connections = cfg.max_connections,
        "serving /metrics and /health"
    );
    tokio::spawn(accept_loop(
        listener,
        cfg.clone(),
        Endpoint { handle, health },
    ));
    Ok(())
}

async fn accept_loop(listener: TcpListener, cfg: MetricsConfig, endpoint: Endpoint) {
    let slots = Arc::new(Semaphore::new(cfg.max_connections));
    let refused = metrics::counter!(METRICS_CONNECTIONS_REFUSED);
    let mut unreported: u64 = 0;
    let mut reported: Option<Instant> = None;
    loop {
        let sock = match listener.accept().await {
            Ok((sock, _)) => sock,
            Err(e) => {
                tracing::warn!(error = %e, "metrics endpoint: accepting a connection failed");
                tokio::time::sleep(ACCEPT_ERROR_PAUSE).await;
                continue;
            }
        };
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            // Closed at once: a connection over the cap holds no descriptor.
            drop(sock);
            refused.increment(1);
            unreported += 1;
            if reported.is_none_or(|t| t.elapsed() >= REFUSED_REPORT_EVERY) {
                tracing::warn!(
                    refused = unreported,
                    max_connections = cfg.max_connections,
                    "metrics endpoint at metrics.max_connections: closing new connections \
                     unserved until open ones finish or time out"
                );
                reported = Some(Instant::now());
                unreported = 0;
            }
            continue;
        };
        let endpoint = endpoint.clone();
        let (read_timeout, request_timeout) = (cfg.read_timeout, cfg.request_timeout);
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |req: Request<Incoming>| {
                let response = endpoint.answer(&req);
                async move { Ok::<_, Infallible>(response) }
            });
            let conn = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(read_timeout)
                .keep_alive(false)
                .serve_connection(TokioIo::new(sock), service);
            if let Ok(Err(e)) = tokio::time::timeout(request_timeout, conn).await {
                tracing::debug!(error = %e, "metrics endpoint: connection failed");
            }
            drop(slot);
        });
    }
}
