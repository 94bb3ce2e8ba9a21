//! The cap on connections open at once from one client IP (attack catalogue
//! H3): a client that opens connections and then stalls can only hold its
//! share. Counted in bounded memory (pingora-limits' in-flight estimator: a
//! count-min sketch), so a spray of addresses cannot grow it.
//!
//! An HTTP/2 stream in flight counts as a connection does (as nginx's
//! `limit_conn` counts HTTP/2 requests): it holds an origin connection and
//! buffers as an HTTP/1.1 connection does, and one TCP connection carries up
//! to `http2_max_concurrent_streams` of them. The connection's own place is
//! its first stream's, so an HTTP/2 connection takes as many places as it
//! has streams in flight, and at least one.

use std::net::IpAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::task::{Context, Poll};

use http_body::{Body, Frame, SizeHint};
use ipnet::IpNet;
use pin_project_lite::pin_project;
use pingora_limits::inflight::{Guard, Inflight};

use crate::hygiene::headers::is_trusted;

pub struct PerIpConnections {
    open: Inflight,
}

/// Held for as long as its connection is open; dropping it counts it closed.
pub struct OpenConnection {
    _counted: Option<Guard>,
}

impl PerIpConnections {
    pub fn new() -> PerIpConnections {
        PerIpConnections {
            open: Inflight::new(),
        }
    }

    /// Counts a new connection from `ip`, or `None` when `ip` already has
    /// `cap` open. Trusted proxies carry many clients and are not counted;
    /// a `cap` of 0 counts nothing.
    pub fn admit(&self, ip: IpAddr, cap: u32, trusted: &[IpNet]) -> Option<OpenConnection> {
        if cap == 0 || is_trusted(ip, trusted) {
            return Some(OpenConnection { _counted: None });
        }
        let (guard, open) = self.open.incr(crate::limits::client_key(ip), 1);
        // The estimate never undercounts; over the cap, the guard's drop
        // takes this connection back out.
        (open <= isize::try_from(cap).unwrap_or(isize::MAX)).then_some(OpenConnection {
            _counted: Some(guard),
        })
    }
}

/// Where an HTTP/2 connection's streams take their places: its address's
/// count, under the cap read when the connection was accepted.
pub struct StreamPlaces {
    per_ip: Arc<PerIpConnections>,
    ip: IpAddr,
    cap: u32,
    /// Streams of this connection in flight.
    in_flight: Arc<AtomicUsize>,
}

/// One stream's place: the connection's own (its only stream in flight), or
/// one more in the address's count.
pub struct StreamPlace {
    in_flight: Arc<AtomicUsize>,
    _extra: Option<OpenConnection>,
}

impl Drop for StreamPlace {
    fn drop(&mut self) {
        self.in_flight.fetch_sub(1, Ordering::Relaxed);
    }
}

impl StreamPlaces {
    /// `None` when the address is not counted (a trusted proxy, or no cap).
    pub fn for_connection(
        per_ip: &Arc<PerIpConnections>,
        ip: IpAddr,
        cap: u32,
        trusted: &[IpNet],
    ) -> Option<StreamPlaces> {
        (cap != 0 && !is_trusted(ip, trusted)).then(|| StreamPlaces {
            per_ip: per_ip.clone(),
            ip,
            cap,
            in_flight: Arc::new(AtomicUsize::new(0)),
        })
    }

    /// A place for one stream, or `None` when the address is at its cap.
    /// A stream alone in flight has the connection's place.
    pub fn take(&self) -> Option<StreamPlace> {
        let others = self.in_flight.fetch_add(1, Ordering::Relaxed);
        let place = |extra| StreamPlace {
            in_flight: self.in_flight.clone(),
            _extra: extra,
        };
        if others == 0 {
            return Some(place(None));
        }
        match self.per_ip.admit(self.ip, self.cap, &[]) {
            Some(extra) => Some(place(Some(extra))),
            None => {
                self.in_flight.fetch_sub(1, Ordering::Relaxed);
                None
            }
        }
    }
}

pin_project! {
    /// A response body that keeps its stream's place while it has more to
    /// send: the stream holds its origin connection until then.
    pub struct Placed<B> {
        #[pin]
        inner: B,
        place: Option<StreamPlace>,
    }
}

impl<B: Body> Placed<B> {
    pub fn new(inner: B, place: Option<StreamPlace>) -> Placed<B> {
        // An answer with nothing to send holds nothing any more.
        let place = place.filter(|_| !inner.is_end_stream());
        Placed { inner, place }
    }
}

impl<B: Body> Body for Placed<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<B::Data>, B::Error>>> {
        let mut this = self.project();
        let polled = this.inner.as_mut().poll_frame(cx);
        // Given back with the last frame, before hyper sends it: a client
        // that waits for the end of one answer before it asks again never
        // finds this stream still counted (the body is dropped later).
        let ended = match &polled {
            Poll::Ready(None | Some(Err(_))) => true,
            Poll::Ready(Some(Ok(_))) => this.inner.is_end_stream(),
            Poll::Pending => false,
        };
        if ended {
            this.place.take();
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

impl Default for PerIpConnections {
    fn default() -> Self {
        PerIpConnections::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn caps_each_address_and_counts_closed_connections_out() {
        let caps = PerIpConnections::new();
        let (a, b): (IpAddr, IpAddr) = ("192.0.2.1".parse().unwrap(), "192.0.2.2".parse().unwrap());
        let first = caps.admit(a, 2, &[]);
        let second = caps.admit(a, 2, &[]);
        assert!(first.is_some() && second.is_some());
        assert!(caps.admit(a, 2, &[]).is_none(), "a third connection from a");
        assert!(caps.admit(b, 2, &[]).is_some(), "b has its own count");
        drop(first);
        assert!(
            caps.admit(a, 2, &[]).is_some(),
            "a closed connection frees its place"
        );
        let proxy: IpNet = "192.0.2.0/24".parse().unwrap();
        let through_proxy: Vec<_> = (0..10).map(|_| caps.admit(a, 2, &[proxy])).collect();
        assert!(
            through_proxy.iter().all(Option::is_some),
            "a trusted proxy is not capped"
        );
        let uncapped: Vec<_> = (0..10).map(|_| caps.admit(b, 0, &[])).collect();
        assert!(uncapped.iter().all(Option::is_some), "0 is no cap");
    }

    /// One subscriber rotating through the addresses of its /64 meets the
    /// cap as one client (`limits::client_key`).
    #[test]
    fn an_ipv6_subscriber_is_its_slash_64() {
        let caps = PerIpConnections::new();
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        let first = caps.admit(ip("2001:db8:1:2::1"), 1, &[]);
        assert!(first.is_some());
        assert!(
            caps.admit(ip("2001:db8:1:2:ffff::9"), 1, &[]).is_none(),
            "another address of the same /64"
        );
        assert!(
            caps.admit(ip("2001:db8:1:3::1"), 1, &[]).is_some(),
            "another /64"
        );
    }
}
