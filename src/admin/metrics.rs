//! Prometheus metrics, registered once per process and shared by every
//! configuration snapshot. Label values are `Arc<str>` taken from the routing
//! table, so recording a request allocates nothing.

use std::fmt::Write;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use prometheus_client::encoding::{EncodeLabelSet, EncodeLabelValue, LabelValueEncoder};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

use crate::portal::Membership;

/// A label value shared with the routing table.
#[derive(Clone, Debug, Hash, PartialEq, Eq)]
pub struct Label(pub Arc<str>);

impl EncodeLabelValue for Label {
    /// Escaped as the text exposition format needs (`\\`, `\"`, `\n`):
    /// prometheus-client writes label values as they are, and a site or
    /// route name may hold any of these.
    fn encode(&self, encoder: &mut LabelValueEncoder<'_>) -> std::fmt::Result {
        let mut rest: &str = &self.0;
        while let Some(at) = rest.find(['\\', '"', '\n']) {
            encoder.write_str(&rest[..at])?;
            encoder.write_str(match rest.as_bytes()[at] {
                b'\\' => "\\\\",
                b'"' => "\\\"",
                _ => "\\n",
            })?;
            rest = &rest[at + 1..];
        }
        encoder.write_str(rest)
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RequestLabels {
    pub route: Label,
    pub status: u16,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct UpstreamLabels {
    pub upstream: Label,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OutcomeLabels {
    pub result: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct MailLabels {
    pub kind: &'static str,
}

/// Portal outcomes, counted by the portal and exported here.
#[derive(Clone, Default)]
pub struct MembershipCounters {
    /// `ok`, `failed` (wrong email or password, or a disabled account),
    /// `not_ready` (the right password for a confirmed address that waits
    /// for approval), `limited`, `busy` (password hashing was full).
    pub logins: Family<OutcomeLabels, Counter>,
    /// `created`, `duplicate` (the address has an account), `refused` (mode
    /// or domain), `limited`, `failed` (the store failed).
    pub registrations: Family<OutcomeLabels, Counter>,
    /// Mails not sent because the address had one of the same `kind`
    /// within `portal::membership::MAIL_COOLDOWN`: `reset` (a reset link;
    /// no token was stored either), `already_registered` (the note to an
    /// address someone tried to register again) and `email_change` (the
    /// link, or the note, to an address a member asked to move to).
    pub mails_held_back: Family<MailLabels, Counter>,
}

impl MembershipCounters {
    pub fn login(&self, result: &'static str) {
        self.logins.get_or_create(&OutcomeLabels { result }).inc();
    }

    pub fn registration(&self, result: &'static str) {
        self.registrations
            .get_or_create(&OutcomeLabels { result })
            .inc();
    }

    pub fn mail_held_back(&self, kind: &'static str) {
        self.mails_held_back
            .get_or_create(&MailLabels { kind })
            .inc();
    }
}

type HistogramFamily<L> = Family<L, Histogram, fn() -> Histogram>;

pub struct Metrics {
    registry: Registry,
    requests: Family<RequestLabels, Counter>,
    upstream_latency: HistogramFamily<UpstreamLabels>,
    upstream_errors: Family<UpstreamLabels, Counter>,
    active_connections: Gauge,
    reloads: Family<OutcomeLabels, Counter>,
    tls_handshake_failures: Counter,
    tls_handshakes: Family<OutcomeLabels, Counter>,
    session_cache_entries: Gauge,
    identification_cache_entries: Gauge,
    connections_over_ip_cap: Counter,
    requests_unparsed: Counter,
    http2_connections_stalled: Counter,
    log_lines_dropped: Counter,
    /// The log writer's count that `log_lines_dropped` has been brought up
    /// to, so that two scrapes at once add each dropped line once.
    log_lines_counted: AtomicU64,
}

/// The route label for requests refused before a route was chosen.
pub const NO_ROUTE: &str = "-";

impl Metrics {
    pub fn new() -> Metrics {
        let mut registry = Registry::with_prefix("membergate");
        let requests = Family::<RequestLabels, Counter>::default();
        registry.register(
            "requests",
            "Requests answered, by route and status",
            requests.clone(),
        );
        let upstream_latency: HistogramFamily<UpstreamLabels> =
            Family::new_with_constructor(|| Histogram::new(exponential_buckets(0.0005, 2.0, 16)));
        registry.register(
            "upstream_response_seconds",
            "Time from sending a request upstream to receiving its response head",
            upstream_latency.clone(),
        );
        let upstream_errors = Family::<UpstreamLabels, Counter>::default();
        registry.register(
            "upstream_errors",
            "Upstream requests that failed before their response was passed on (connect, timeout, reset, malformed, a refused 101); a body cut short later is logged as a warning",
            upstream_errors.clone(),
        );
        let active_connections = Gauge::default();
        registry.register(
            "active_connections",
            "Client connections currently open",
            active_connections.clone(),
        );
        let reloads = Family::<OutcomeLabels, Counter>::default();
        registry.register(
            "config_reloads",
            "Configuration reloads by result",
            reloads.clone(),
        );
        let tls_handshake_failures = Counter::default();
        registry.register(
            "tls_handshake_failures",
            "TLS handshakes that failed or timed out",
            tls_handshake_failures.clone(),
        );
        let log_lines_dropped = Counter::default();
        registry.register(
            "log_lines_dropped",
            "Log lines dropped because the log output was not being read fast enough",
            log_lines_dropped.clone(),
        );
        let tls_handshakes = Family::<OutcomeLabels, Counter>::default();
        registry.register(
            "tls_handshakes",
            "Completed TLS handshakes, full or resumed (session ticket or cache)",
            tls_handshakes.clone(),
        );
        let session_cache_entries = Gauge::default();
        registry.register(
            "session_cache_entries",
            "Sessions held in the in-memory cache",
            session_cache_entries.clone(),
        );
        let identification_cache_entries = Gauge::default();
        registry.register(
            "identification_cache_entries",
            "Members' identification tokens held in memory, each with the name and address it was minted for",
            identification_cache_entries.clone(),
        );
        let connections_over_ip_cap = Counter::default();
        registry.register(
            "connections_over_ip_cap",
            "Connections closed on arrival: their IP had limits.max_connections_per_ip open",
            connections_over_ip_cap.clone(),
        );
        let requests_unparsed = Counter::default();
        registry.register(
            "requests_unparsed",
            "HTTP/1 requests refused by the parser before the gateway saw them (answered 400, 414 or 431)",
            requests_unparsed.clone(),
        );
        let http2_connections_stalled = Counter::default();
        registry.register(
            "http2_connections_stalled",
            "HTTP/2 connections closed: a stream's client held its window shut for limits.send_timeout",
            http2_connections_stalled.clone(),
        );
        Metrics {
            registry,
            connections_over_ip_cap,
            requests_unparsed,
            http2_connections_stalled,
            session_cache_entries,
            identification_cache_entries,
            tls_handshakes,
            requests,
            upstream_latency,
            upstream_errors,
            active_connections,
            reloads,
            tls_handshake_failures,
            log_lines_dropped,
            log_lines_counted: AtomicU64::new(0),
        }
    }

    /// Exports the portal's counters and the session lookups' outcomes.
    pub fn register_membership(&mut self, membership: &Membership) {
        let counters = &membership.counters;
        self.registry.register(
            "logins",
            "Login attempts by result (ok, failed, not_ready, limited, busy)",
            counters.logins.clone(),
        );
        self.registry.register(
            "registrations",
            "Registration attempts by result (created, duplicate, refused, limited, failed)",
            counters.registrations.clone(),
        );
        self.registry.register(
            "mails_held_back",
            "Portal mails not sent because the address had one of the kind within the cooldown, by kind (reset, already_registered, email_change)",
            counters.mails_held_back.clone(),
        );
        let sessions = membership.sessions.counters();
        self.registry.register(
            "session_cache_hits",
            "Session lookups answered from memory",
            sessions.hits,
        );
        self.registry.register(
            "session_cache_misses",
            "Session lookups that read the member store",
            sessions.misses,
        );
        self.registry.register(
            "sessions_renewed",
            "Sessions moved to a new id because their member gained a privilege",
            sessions.renewed,
        );
        self.registry.register(
            "session_store_failures",
            "Session lookups the member store failed to answer (the visitor kept their cookie)",
            sessions.unavailable,
        );
    }

    /// Exports identification token outcomes (cached, minted, failed,
    /// timeout, refused, paused).
    pub fn register_identification(&mut self, identifier: &crate::identity::Identifier) {
        self.registry.register(
            "identification_tokens",
            "Identification tokens for page views by result (cached, minted, failed, timeout; refused: HubSpot refused the member lately; paused: HubSpot is resting after failures)",
            identifier.outcomes(),
        );
    }

    /// Brings the dropped log lines' counter up to the log writer's count.
    pub fn update_log_lines_dropped(&self, dropped_since_start: u64) {
        let counted = self
            .log_lines_counted
            .fetch_max(dropped_since_start, Ordering::Relaxed);
        if dropped_since_start > counted {
            self.log_lines_dropped.inc_by(dropped_since_start - counted);
        }
    }

    pub fn set_session_cache_entries(&self, entries: u64) {
        self.session_cache_entries
            .set(i64::try_from(entries).unwrap_or(i64::MAX));
    }

    pub fn set_identification_cache_entries(&self, entries: u64) {
        self.identification_cache_entries
            .set(i64::try_from(entries).unwrap_or(i64::MAX));
    }

    pub fn request(&self, route: &Arc<str>, status: u16) {
        self.requests
            .get_or_create(&RequestLabels {
                route: Label(route.clone()),
                status,
            })
            .inc();
    }

    pub fn upstream_latency(&self, upstream: &Arc<str>, seconds: f64) {
        self.upstream_latency
            .get_or_create(&UpstreamLabels {
                upstream: Label(upstream.clone()),
            })
            .observe(seconds);
    }

    pub fn upstream_error(&self, upstream: &Arc<str>) {
        self.upstream_errors
            .get_or_create(&UpstreamLabels {
                upstream: Label(upstream.clone()),
            })
            .inc();
    }

    pub fn reload(&self, ok: bool) {
        let result = if ok { "ok" } else { "rejected" };
        self.reloads.get_or_create(&OutcomeLabels { result }).inc();
    }

    pub fn tls_handshake_completed(&self, resumed: bool) {
        let result = if resumed { "resumed" } else { "full" };
        self.tls_handshakes
            .get_or_create(&OutcomeLabels { result })
            .inc();
    }

    pub fn tls_handshake_failed(&self) {
        self.tls_handshake_failures.inc();
    }

    pub fn request_unparsed(&self) {
        self.requests_unparsed.inc();
    }

    pub fn connection_over_ip_cap(&self) {
        self.connections_over_ip_cap.inc();
    }

    pub fn http2_connection_stalled(&self) {
        self.http2_connections_stalled.inc();
    }

    /// Counts a connection as open until the returned guard is dropped.
    pub fn connection_opened(&self) -> ConnectionGuard {
        self.active_connections.inc();
        ConnectionGuard(self.active_connections.clone())
    }

    /// The Prometheus text exposition.
    pub fn render(&self) -> String {
        let mut out = String::with_capacity(4096);
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}

pub struct ConnectionGuard(Gauge);

impl Drop for ConnectionGuard {
    fn drop(&mut self) {
        self.0.dec();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A label value with a quote, a backslash or a newline (a site named
    /// `Tom's "Club"`) stays one label in the exposition format.
    #[test]
    fn label_values_are_escaped() {
        let family = Family::<RequestLabels, Counter>::default();
        let route = Label("Tom's \"Club\" \\ A\nB:/".into());
        family
            .get_or_create(&RequestLabels { route, status: 200 })
            .inc();
        let mut registry = Registry::default();
        registry.register("requests", "Requests", family);
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &registry).unwrap();
        assert!(
            text.contains(r#"requests_total{route="Tom's \"Club\" \\ A\nB:/",status="200"} 1"#),
            "{text}"
        );
    }
}
