//! HTTP/2 streams whose client has stopped reading (attack catalogue H3 over
//! HTTP/2).
//!
//! Over HTTP/1.1 a client that stops reading stalls the socket, and the
//! connection's write timeout cuts it off. Over HTTP/2 the socket keeps moving
//! (pings, other streams) while one stream's flow-control window stays shut:
//! hyper then stops polling that stream's body, so the body, and the origin
//! connection behind it, would be held for as long as the client likes.
//!
//! A [`Watched`] body notes when it is not asked for its next frame (from its
//! start, and after each frame it hands over), which is exactly the time hyper
//! spends waiting for window. A
//! body waiting on its origin is not counted: hyper is polling it. The
//! connection's [`StallWatch`] closes the connection once some stream has
//! waited on its client for `send_timeout`, the same limit HTTP/1.1 gets.
//!
//! A stream whose last frames were handed over whole escapes that count: its
//! body has ended, and the rest waits in HTTP/2's send buffer for window. A
//! closing connection (idle, or shutting down) is therefore also dropped once
//! no request has been in flight on it for `send_timeout`: whatever it still
//! waits for then is its client's window ([`StallWatch::idle_for`]).
//!
//! Cost per frame: two uncontended atomic additions; no clock reads, no
//! locks. Per request, two more. Streams are counted by the epoch (a tick of half the limit) in which
//! they began to wait; a ring of four epochs is enough because a count that
//! is old enough to be checked ends the connection.

use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use pin_project_lite::pin_project;

const EPOCHS: usize = 4;

/// One HTTP/2 connection's count of streams waiting on their client.
#[derive(Default)]
pub struct StallWatch {
    epoch: AtomicU32,
    /// Streams waiting now, by the epoch they began waiting in (mod 4).
    waiting_since: [AtomicU32; EPOCHS],
    /// Requests in flight (started, their response body not yet dropped) in
    /// the low half; every start and end adds one to the high half, so that
    /// equal values some time apart mean nothing started or ended between.
    requests: AtomicU64,
}

/// One unit of the count of requests in [`StallWatch::requests`].
const REQUEST: u64 = 1;
/// One unit of the count of changes in [`StallWatch::requests`].
const CHANGE: u64 = 1 << 32;

impl StallWatch {
    pub fn new() -> StallWatch {
        StallWatch::default()
    }

    /// Counts a request as in flight until its response body is dropped
    /// (or, if it never gets one, until the returned guard is).
    pub fn request_started(self: &Arc<Self>) -> InFlight {
        self.requests.fetch_add(CHANGE + REQUEST, Ordering::Relaxed);
        InFlight(self.clone())
    }

    /// Resolves once no request has been in flight for at least `limit` (and
    /// at most 1.5 times it).
    pub async fn idle_for(&self, limit: Duration) {
        let tick = (limit / 2).max(Duration::from_millis(1));
        // The counts seen at the last two ticks, where none was in flight.
        let mut seen: [Option<u64>; 2] = [None, None];
        loop {
            tokio::time::sleep(tick).await;
            let requests = self.requests.load(Ordering::Relaxed);
            let in_flight = requests & (CHANGE - 1);
            let now = (in_flight == 0).then_some(requests);
            // None in flight two ticks ago and now, and no change between.
            if now.is_some() && now == seen[0] {
                return;
            }
            seen = [seen[1], now];
        }
    }

    /// Resolves once a stream has waited on its client for at least `limit`
    /// (and at most 1.5 times it).
    pub async fn stalled(&self, limit: Duration) {
        let tick = (limit / 2).max(Duration::from_millis(1));
        loop {
            tokio::time::sleep(tick).await;
            let now = self.epoch.fetch_add(1, Ordering::Relaxed).wrapping_add(1);
            // A stream counted in epoch `now - 3` began waiting before epoch
            // `now - 2` started, two ticks (one limit) ago. That slot is also
            // the one epoch `now + 1` will use, so nothing is added to it
            // until the next tick.
            if self.slot(now.wrapping_sub(3)).load(Ordering::Relaxed) > 0 {
                return;
            }
        }
    }

    fn slot(&self, epoch: u32) -> &AtomicU32 {
        &self.waiting_since[epoch as usize % EPOCHS]
    }

    fn begin_wait(&self) -> u32 {
        let epoch = self.epoch.load(Ordering::Relaxed);
        self.slot(epoch).fetch_add(1, Ordering::Relaxed);
        epoch
    }

    fn end_wait(&self, epoch: u32) {
        self.slot(epoch).fetch_sub(1, Ordering::Relaxed);
    }
}

/// A request in flight on an HTTP/2 connection (see
/// [`StallWatch::request_started`]).
pub struct InFlight(Arc<StallWatch>);

impl InFlight {
    /// Wraps the request's response body so its waits count on this
    /// connection. A body with anything to send waits from the start: hyper
    /// asks for its first frame only once the stream has window.
    pub fn watch<B: Body>(self, inner: B) -> Watched<B> {
        let waiting_in = (!inner.is_end_stream()).then(|| self.0.begin_wait());
        Watched {
            inner,
            request: self,
            waiting_in,
        }
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0
            .requests
            .fetch_add(CHANGE.wrapping_sub(REQUEST), Ordering::Relaxed);
    }
}

pin_project! {
    /// A response body whose waits for the client count on its connection's
    /// [`StallWatch`]; its request is in flight until it is dropped.
    pub struct Watched<B> {
        #[pin]
        inner: B,
        request: InFlight,
        // The epoch this body began waiting in, while it waits.
        waiting_in: Option<u32>,
    }

    impl<B> PinnedDrop for Watched<B> {
        fn drop(this: Pin<&mut Self>) {
            let this = this.project();
            if let Some(epoch) = this.waiting_in.take() {
                this.request.0.end_wait(epoch);
            }
        }
    }
}

impl<B> Body for Watched<B>
where
    B: Body<Data = Bytes>,
{
    type Data = Bytes;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, B::Error>>> {
        let mut this = self.project();
        let watch = &this.request.0;
        if let Some(epoch) = this.waiting_in.take() {
            watch.end_wait(epoch);
        }
        let polled = this.inner.as_mut().poll_frame(cx);
        // A frame handed over, more to come: until hyper asks again, this
        // stream waits for its client's window.
        if let Poll::Ready(Some(Ok(_))) = &polled
            && !this.inner.is_end_stream()
        {
            *this.waiting_in = Some(watch.begin_wait());
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

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::{BodyExt, StreamBody};

    fn two_frames() -> impl Body<Data = Bytes, Error = std::convert::Infallible> {
        let frames = [
            Ok(Frame::data(Bytes::from_static(b"a"))),
            Ok(Frame::data(Bytes::from_static(b"b"))),
        ];
        StreamBody::new(futures_util::stream::iter(frames))
    }

    fn waiting(watch: &StallWatch) -> u32 {
        watch
            .waiting_since
            .iter()
            .map(|n| n.load(Ordering::Relaxed))
            .sum()
    }

    #[tokio::test]
    async fn a_body_waits_between_frames_and_not_after_its_end() {
        let watch = Arc::new(StallWatch::new());
        let mut body = std::pin::pin!(watch.request_started().watch(two_frames()));
        assert_eq!(waiting(&watch), 1, "not asked for its first frame yet");
        assert!(body.frame().await.is_some());
        assert_eq!(waiting(&watch), 1, "handed a frame, not asked again");
        assert!(body.frame().await.is_some());
        assert!(body.frame().await.is_none());
        assert_eq!(waiting(&watch), 0);
    }

    #[tokio::test]
    async fn dropping_a_waiting_body_ends_its_wait() {
        let watch = Arc::new(StallWatch::new());
        let mut body = Box::pin(watch.request_started().watch(two_frames()));
        assert!(body.frame().await.is_some());
        drop(body);
        assert_eq!(waiting(&watch), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn a_wait_older_than_the_limit_is_a_stall() {
        let watch = Arc::new(StallWatch::new());
        let mut body = Box::pin(watch.request_started().watch(two_frames()));
        assert!(body.frame().await.is_some());
        let started = tokio::time::Instant::now();
        let limit = Duration::from_secs(60);
        let outcome = tokio::time::timeout(limit * 2, watch.stalled(limit)).await;
        let waited = started.elapsed();
        assert!(outcome.is_ok(), "a wait of {waited:?} went unnoticed");
        assert!(waited >= limit && waited <= limit * 3 / 2, "{waited:?}");
    }

    #[tokio::test(start_paused = true)]
    async fn short_waits_are_not_a_stall() {
        let watch = Arc::new(StallWatch::new());
        let limit = Duration::from_secs(60);
        let stalled = tokio::time::timeout(Duration::from_secs(600), watch.stalled(limit));
        let reader = async {
            // A slow reader: each frame waits 20 s for the window, many times over.
            let mut body = Box::pin(watch.request_started().watch(StreamBody::new(
                futures_util::stream::iter((0..40).map(|_| {
                    Ok::<_, std::convert::Infallible>(Frame::data(Bytes::from_static(b"x")))
                })),
            )));
            while body.frame().await.is_some() {
                tokio::time::sleep(Duration::from_secs(20)).await;
            }
            std::future::pending::<()>().await;
        };
        tokio::select! {
            outcome = stalled => assert!(outcome.is_err(), "a slow reader was taken for a stalled one"),
            _ = reader => {}
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_connection_is_idle_only_once_no_request_is_in_flight() {
        let watch = Arc::new(StallWatch::new());
        let limit = Duration::from_secs(60);
        let request = watch.request_started();
        let idle = tokio::time::timeout(limit * 10, watch.idle_for(limit)).await;
        assert!(idle.is_err(), "idle with a request in flight");
        // The looks come every 30 s. A request that starts and ends between
        // two of them (at 45 s) still counts: idle from 45 s, noticed at 120 s
        // (without it, at 90 s).
        let idle = watch.idle_for(limit);
        let brief = async {
            tokio::time::sleep(limit * 3 / 4).await;
            drop(watch.request_started());
            std::future::pending::<()>().await;
        };
        drop(request);
        let started = tokio::time::Instant::now();
        tokio::select! {
            _ = idle => {}
            _ = brief => unreachable!(),
        }
        let waited = started.elapsed();
        assert!(waited > limit * 3 / 2 && waited <= limit * 2, "{waited:?}");
    }
}
