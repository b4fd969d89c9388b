//! Prometheus `/metrics` and `/health` over plain HTTP/1.1 on the configured address.

use std::sync::Arc;

use anyhow::{Context, Result};
use floe_loader::metrics::{COMMIT_SECONDS, Health};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

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

/// Serves `/metrics` and `/health` on `listen` until the process ends.
pub async fn serve(listen: &str, handle: PrometheusHandle, health: Arc<Health>) -> Result<()> {
    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .with_context(|| format!("metrics.listen {listen}: cannot listen"))?;
    tracing::info!(address = %listener.local_addr()?, "serving /metrics and /health");
    tokio::spawn(async move {
        loop {
            let Ok((mut sock, _)) = listener.accept().await else {
                continue;
            };
            let handle = handle.clone();
            let health = health.clone();
            tokio::spawn(async move {
                let mut buf = [0u8; 2048];
                let n = sock.read(&mut buf).await.unwrap_or(0);
                let request = String::from_utf8_lossy(&buf[..n]);
                let path = request.split_whitespace().nth(1).unwrap_or("/");
                let (status, body) = match path {
                    "/metrics" => ("200 OK", handle.render()),
                    "/health" => match health.check() {
                        Ok(s) => ("200 OK", s + "\n"),
                        Err(s) => ("503 Service Unavailable", s + "\n"),
                    },
                    _ => ("404 Not Found", "try /metrics or /health\n".to_string()),
                };
                let response = format!(
                    "HTTP/1.1 {status}\r\ncontent-type: text/plain; version=0.0.4\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                    body.len()
                );
                let _ = sock.write_all(response.as_bytes()).await;
            });
        }
    });
    Ok(())
}
