//! The metrics endpoint (`METRICS_ADDR`, off by default): `GET /metrics` answers with every
//! instrument in Prometheus' text format, collected at that moment from the same meter
//! provider the OTLP exporter reads ([`crate::telemetry::prometheus`]), for a Prometheus
//! that scrapes mfoundry without a collector in between.
//!
//! No authentication: the series carry listener and connector names, ACK codes, causes and
//! outcomes, never message content; keep the port reachable by the scraper only (a
//! NetworkPolicy). Bounded like the admin listener, with the admin listener's serving loop
//! ([`crate::admin::serve_router`]): [`MAX_CONNECTIONS`] connections at once, headers within
//! [`crate::admin::HEADER_TIMEOUT`]; a scrape collects off the async runtime (the queue
//! gauges read the store), one at a time (the reader's lock).

use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::admin::{self, ConnectionLimits};
use crate::config::Settings;
use crate::telemetry::prometheus::CONTENT_TYPE;

/// Connections the metrics endpoint holds at once: a scraper or two, and a person with curl.
pub const MAX_CONNECTIONS: usize = 4;

/// The metrics endpoint's listener and task.
#[derive(Debug)]
pub(super) struct Metrics {
    /// The serving task and its stop switch.
    serving: super::HttpServing,
}

impl Metrics {
    /// Bind `METRICS_ADDR` and serve `/metrics`; `None` when it is off.
    pub(super) async fn bind(settings: &Settings) -> anyhow::Result<Option<Self>> {
        let Some(addr) = &settings.metrics_addr else {
            return Ok(None);
        };
        let (listener, local) = admin::bind(addr).await.map_err(|error| {
            super::bind_error(
                "METRICS_ADDR",
                addr,
                &error,
                "a free address, e.g. :9464, or off",
            )
        })?;
        info!(metrics_addr = %local, "Prometheus metrics listening on /metrics");
        let shutdown = CancellationToken::new();
        let limits = ConnectionLimits {
            name: "metrics endpoint",
            max_connections: MAX_CONNECTIONS,
            header_timeout: admin::HEADER_TIMEOUT,
        };
        let task = tokio::spawn(admin::serve_router(
            listener,
            router(),
            shutdown.clone(),
            limits,
            std::sync::Arc::default(),
        ));
        Ok(Some(Self {
            serving: super::HttpServing { task, shutdown },
        }))
    }

    /// Stop serving (see [`super::HttpServing::stop`]).
    pub(super) async fn shutdown(self, deadline: Instant) {
        self.serving.stop(deadline, "metrics endpoint").await;
    }
}

/// `GET /metrics`, a hint at `/`, 404 for anything else.
fn router() -> axum::Router {
    axum::Router::new()
        .route("/metrics", axum::routing::get(scrape))
        .route(
            "/",
            axum::routing::get(|| async { "mfoundry: Prometheus metrics are at /metrics\n" }),
        )
        .fallback(|| async {
            (
                StatusCode::NOT_FOUND,
                "not found: Prometheus metrics are at /metrics\n",
            )
        })
}

/// Collect and render, off the runtime.
async fn scrape() -> Response {
    let rendered = tokio::task::spawn_blocking(crate::telemetry::metrics::scrape)
        .await
        .unwrap_or_else(|error| Err(format!("the collection failed: {error}")));
    match rendered {
        Ok(text) => ([(header::CONTENT_TYPE, CONTENT_TYPE)], text).into_response(),
        Err(problem) => {
            warn!(error = %problem, "a metrics scrape failed");
            (StatusCode::SERVICE_UNAVAILABLE, format!("{problem}\n")).into_response()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tower::ServiceExt as _;

    #[tokio::test]
    async fn only_get_metrics_and_the_hint_are_served() {
        let response = router()
            .oneshot(
                axum::http::Request::get("/")
                    .body(axum::body::Body::empty())
                    .expect("request"),
            )
            .await
            .expect("answer");
        assert_eq!(response.status(), StatusCode::OK);
        for path in ["/api/v1/stats", "/metrics/x", "/livez"] {
            let response = router()
                .oneshot(
                    axum::http::Request::get(path)
                        .body(axum::body::Body::empty())
                        .expect("request"),
                )
                .await
                .expect("answer");
            assert_eq!(response.status(), StatusCode::NOT_FOUND, "{path}");
        }
        let response = router()
            .oneshot(
                axum::http::Request::post("/metrics")
                    .body(axum::body::Body::empty())
                    .expect("request"),
            )
            .await
            .expect("answer");
        assert_eq!(response.status(), StatusCode::METHOD_NOT_ALLOWED);
    }
}
