//! The admin listener: `/healthz` (the process is alive), `/readyz` (the
//! configuration is loaded, every origin answers and the member store is
//! open), `/metrics` (Prometheus), and the admin JSON API under `/api/v1/`
//! (bearer key; see `api`). It is meant for a private address.

pub mod api;
pub mod commands;
pub mod metrics;
pub mod operations;
pub mod probe;

use std::convert::Infallible;
use std::sync::Arc;

use bytes::Bytes;
use http::header::{self, HeaderValue};
use http::{Method, Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;
use tokio::sync::watch;

use crate::gateway::Gateway;
use crate::server::conn::{drive, http1_builder};

pub async fn serve_connection(
    stream: TcpStream,
    gateway: Arc<Gateway>,
    shutdown: watch::Receiver<bool>,
) {
    let limits = gateway.runtime().config.limits.clone();
    let service = service_fn(move |request| {
        let gateway = gateway.clone();
        async move { Ok::<_, Infallible>(answer(&gateway, request).await) }
    });
    let connection = http1_builder(&limits)
        .serve_connection(TokioIo::new(stream), service)
        .with_upgrades();
    drive(connection, shutdown, None).await;
}

async fn answer(gateway: &Gateway, request: Request<Incoming>) -> Response<Full<Bytes>> {
    if request.uri().path().starts_with(api::PREFIX) {
        return api::handle(gateway, request).await;
    }
    if request.method() != Method::GET && request.method() != Method::HEAD {
        return text(
            StatusCode::METHOD_NOT_ALLOWED,
            "method not allowed\n".into(),
        );
    }
    match request.uri().path() {
        "/healthz" => text(StatusCode::OK, "ok\n".into()),
        "/readyz" => {
            let problems = gateway.readiness.problems(gateway).await;
            if problems.is_empty() {
                text(StatusCode::OK, "ready\n".into())
            } else {
                text(
                    StatusCode::SERVICE_UNAVAILABLE,
                    format!("not ready:\n{}\n", problems.join("\n")),
                )
            }
        }
        "/metrics" => {
            let sessions = &gateway.membership.sessions;
            gateway.metrics.set_session_cache_entries(sessions.cached());
            gateway
                .metrics
                .set_identification_cache_entries(gateway.identifier.cached().await);
            gateway
                .metrics
                .update_log_lines_dropped(crate::telemetry::dropped_lines());
            let mut response = text(StatusCode::OK, gateway.metrics.render());
            response.headers_mut().insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static(
                    "application/openmetrics-text; version=1.0.0; charset=utf-8",
                ),
            );
            response
        }
        _ => text(StatusCode::NOT_FOUND, "not found\n".into()),
    }
}

/// The last readiness probe's problems, reused for a second: `/readyz` is
/// polled by every replica's orchestrator and may be reachable by more, and
/// each probe opens a connection to every origin. Callers that arrive while
/// a probe runs wait for it and share its answer.
#[derive(Default)]
pub struct Readiness {
    last: tokio::sync::Mutex<Option<(std::time::Instant, Arc<Vec<String>>)>>,
}

const READINESS_FRESH_FOR: std::time::Duration = std::time::Duration::from_secs(1);

impl Readiness {
    async fn problems(&self, gateway: &Gateway) -> Arc<Vec<String>> {
        let mut last = self.last.lock().await;
        if let Some((at, problems)) = last.as_ref()
            && at.elapsed() < READINESS_FRESH_FOR
        {
            return problems.clone();
        }
        let problems = Arc::new(readiness(gateway).await);
        *last = Some((std::time::Instant::now(), problems.clone()));
        problems
    }
}

/// Probes every origin of the current configuration once (routes that share
/// one are one probe), and the member store, concurrently.
async fn readiness(gateway: &Gateway) -> Vec<String> {
    let runtime = gateway.runtime();
    let mut probes = tokio::task::JoinSet::new();
    let mut probed = std::collections::HashSet::new();
    for (site_index, site) in runtime.router.sites().enumerate() {
        for (route_index, route) in site.routes().enumerate() {
            if !probed.insert(route.origin.label().clone()) {
                continue;
            }
            let runtime = runtime.clone();
            probes.spawn(async move {
                let site = runtime.router.sites().nth(site_index)?;
                let route = site.routes().nth(route_index)?;
                route.origin.probe().await.err()
            });
        }
    }
    let store = gateway.membership.store.clone();
    probes.spawn(async move {
        store
            .ping()
            .await
            .err()
            .map(|e| format!("member store: {e}"))
    });
    let mut problems: Vec<String> = probes.join_all().await.into_iter().flatten().collect();
    problems.sort();
    problems.dedup();
    problems
}

fn text(status: StatusCode, body: String) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    response
        .headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response
}
