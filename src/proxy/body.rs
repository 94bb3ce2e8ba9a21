//! Body types of the data plane.
//!
//! - [`ForwardBody`]: a client's request body on its way to an origin: capped in
//!   size, aborted when the client goes silent, trailers dropped.
//! - [`GatewayBody`]: every response body the gateway sends, as one enum so the
//!   hot path needs no boxing.
//! - [`IdleTimeout`]: fails a body that produces nothing for too long.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll, ready};
use std::time::Duration;

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;
use pin_project_lite::pin_project;
use tokio::sync::oneshot;
use tokio::time::{Instant, Sleep};
use tower_http::services::fs::ServeFileSystemResponseBody;

use crate::inject::InjectBody;
use crate::routing::pool::PooledBody;

pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Why the gateway itself ended a body early.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BodyError {
    /// The request body grew beyond the route's `max_body_bytes`.
    TooLarge,
    /// Nothing arrived for the idle timeout.
    Idle,
    /// The client's body was malformed (bad chunk framing) or cut short.
    Malformed,
}

impl fmt::Display for BodyError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            BodyError::TooLarge => "body exceeds the size limit",
            BodyError::Idle => "body idle timeout",
            BodyError::Malformed => "the client's body was malformed or cut short",
        })
    }
}

impl std::error::Error for BodyError {}

/// Finds a [`BodyError`] anywhere in an error's source chain.
pub fn body_error_in(error: &(dyn std::error::Error + 'static)) -> Option<BodyError> {
    let mut current = Some(error);
    while let Some(e) = current {
        if let Some(found) = e.downcast_ref::<BodyError>() {
            return Some(*found);
        }
        current = e.source();
    }
    None
}

/// Times a body's waits for its next frame. Armed only when the body has to
/// wait: a body whose frames are there when asked for (most pages arrive in
/// one read) costs no timer. Time nobody polls the body is not counted.
struct IdleTimer {
    idle: Duration,
    sleep: Option<Pin<Box<Sleep>>>,
    /// True while a wait is being timed.
    waiting: bool,
}

impl IdleTimer {
    fn new(idle: Duration) -> Self {
        IdleTimer {
            idle,
            sleep: None,
            waiting: false,
        }
    }

    /// A frame came: the next wait starts a fresh idle period.
    fn progress(&mut self) {
        self.waiting = false;
    }

    /// The body has nothing yet: ready once the wait has lasted `idle`.
    fn poll_expired(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        let idle = self.idle;
        let mut fresh = false;
        let sleep = self.sleep.get_or_insert_with(|| {
            fresh = true;
            Box::pin(tokio::time::sleep(idle))
        });
        if !fresh && !self.waiting {
            sleep.as_mut().reset(Instant::now() + idle);
        }
        self.waiting = true;
        sleep.as_mut().poll(cx)
    }
}

pin_project! {
    /// Wraps a body so that it fails with [`BodyError::Idle`] when no frame
    /// arrives within `idle` of being asked for one.
    pub struct IdleTimeout<B> {
        #[pin]
        inner: B,
        timer: IdleTimer,
    }
}

impl<B> IdleTimeout<B> {
    pub fn new(inner: B, idle: Duration) -> Self {
        IdleTimeout {
            inner,
            timer: IdleTimer::new(idle),
        }
    }
}

impl<B> Body for IdleTimeout<B>
where
    B: Body<Data = Bytes>,
    B::Error: Into<BoxError>,
{
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = self.project();
        match this.inner.poll_frame(cx) {
            Poll::Ready(frame) => {
                this.timer.progress();
                Poll::Ready(frame.map(|f| f.map_err(Into::into)))
            }
            Poll::Pending => {
                ready!(this.timer.poll_expired(cx));
                Poll::Ready(Some(Err(BodyError::Idle.into())))
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// A client's request body forwarded to an origin: capped, and failed when
/// the client goes silent for the idle timeout. `Unpin`, as hyper's client
/// needs.
pub struct ForwardBody {
    inner: Incoming,
    remaining: u64,
    timer: IdleTimer,
    /// Told when the last of the body has been handed on.
    sent: Option<oneshot::Sender<()>>,
    /// Frames handed on so far, and where they are shown to the request.
    taken: u64,
    progress: Option<Arc<Progress>>,
}

/// A request body under way, as the request waiting for its answer sees it.
pub struct Upload {
    /// Resolves once the whole body has been handed on to the origin's
    /// connection (or the body has failed, or been dropped).
    pub sent: oneshot::Receiver<()>,
    pub progress: Arc<Progress>,
}

/// How far the origin's connection has taken a body: the frames it has
/// taken, shifted left once, with the low bit set while it waits on the
/// client for the next. The body keeps the count and stores it each time it
/// is polled: one uncontended store, no clock.
#[derive(Default)]
pub struct Progress(AtomicU64);

const WAITING_ON_CLIENT: u64 = 1;

impl Progress {
    /// The frames the origin's connection has taken, or `None` while it waits
    /// on the client for more. The same number some time apart means it has
    /// held everything it was handed since, without asking for more.
    pub fn taken_by_origin(&self) -> Option<u64> {
        let value = self.0.load(Ordering::Relaxed);
        (value & WAITING_ON_CLIENT == 0).then_some(value >> 1)
    }
}

impl ForwardBody {
    pub fn new(inner: Incoming, max_bytes: u64, idle: Duration) -> Self {
        ForwardBody {
            inner,
            remaining: max_bytes,
            timer: IdleTimer::new(idle),
            sent: None,
            taken: 0,
            progress: None,
        }
    }

    /// Word of the body's way to the origin, for the request that waits for
    /// the answer.
    pub fn watch(&mut self) -> Upload {
        let (tell, told) = oneshot::channel();
        self.sent = Some(tell);
        let progress = Arc::new(Progress::default());
        self.progress = Some(progress.clone());
        Upload {
            sent: told,
            progress,
        }
    }

    fn all_sent(&mut self) {
        if let Some(tell) = self.sent.take() {
            let _ = tell.send(());
        }
    }

    /// Records what the origin's connection did when it last polled.
    fn note(&mut self, waiting_on_client: bool) {
        if let Some(progress) = &self.progress {
            let value = self.taken << 1 | u64::from(waiting_on_client);
            progress.0.store(value, Ordering::Relaxed);
        }
    }
}

impl Body for ForwardBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = &mut *self;
        loop {
            let frame = match Pin::new(&mut this.inner).poll_frame(cx) {
                Poll::Ready(frame) => frame,
                Poll::Pending => {
                    this.note(true);
                    ready!(this.timer.poll_expired(cx));
                    return Poll::Ready(Some(Err(BodyError::Idle.into())));
                }
            };
            this.timer.progress();
            this.taken += 1;
            this.note(false);
            return match frame {
                Some(Ok(frame)) => match frame.into_data() {
                    Ok(data) => {
                        let len = data.len() as u64;
                        if len > this.remaining {
                            return Poll::Ready(Some(Err(BodyError::TooLarge.into())));
                        }
                        this.remaining -= len;
                        // hyper stops polling a body that says it has ended.
                        if this.inner.is_end_stream() {
                            this.all_sent();
                        }
                        Poll::Ready(Some(Ok(Frame::data(data))))
                    }
                    // Request trailers are dropped: none of our origins needs
                    // them, and they are a way to smuggle reserved headers (G4).
                    Err(_trailers) => continue,
                },
                Some(Err(e)) => {
                    tracing::debug!(error = %e, "request body unreadable");
                    Poll::Ready(Some(Err(BodyError::Malformed.into())))
                }
                None => {
                    this.all_sent();
                    Poll::Ready(None)
                }
            };
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

pin_project! {
    /// Every response body the gateway sends.
    #[project = GatewayBodyProj]
    pub enum GatewayBody {
        Empty,
        Full { data: Option<Bytes> },
        Upstream { #[pin] inner: IdleTimeout<PooledBody> },
        Dir { #[pin] inner: ServeFileSystemResponseBody },
        /// An HTML page with the chat widget put in on the way (`inject`).
        Injected { inner: Pin<Box<InjectBody<GatewayBody>>> },
    }
}

impl GatewayBody {
    pub fn full(data: impl Into<Bytes>) -> Self {
        let data: Bytes = data.into();
        if data.is_empty() {
            GatewayBody::Empty
        } else {
            GatewayBody::Full { data: Some(data) }
        }
    }

    pub fn upstream(inner: PooledBody, idle: Duration) -> Self {
        GatewayBody::Upstream {
            inner: IdleTimeout::new(inner, idle),
        }
    }
}

impl Body for GatewayBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        match self.project() {
            GatewayBodyProj::Empty => Poll::Ready(None),
            GatewayBodyProj::Full { data } => Poll::Ready(data.take().map(|d| Ok(Frame::data(d)))),
            GatewayBodyProj::Upstream { inner } => inner.poll_frame(cx),
            GatewayBodyProj::Dir { inner } => inner.poll_frame(cx).map_err(Into::into),
            GatewayBodyProj::Injected { inner } => inner.as_mut().poll_frame(cx),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            GatewayBody::Empty => true,
            GatewayBody::Full { data } => data.is_none(),
            GatewayBody::Upstream { inner } => inner.is_end_stream(),
            GatewayBody::Dir { inner } => inner.is_end_stream(),
            GatewayBody::Injected { inner } => inner.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            GatewayBody::Empty => SizeHint::with_exact(0),
            GatewayBody::Full { data } => {
                SizeHint::with_exact(data.as_ref().map_or(0, |d| d.len() as u64))
            }
            GatewayBody::Upstream { inner } => inner.size_hint(),
            GatewayBody::Dir { inner } => inner.size_hint(),
            GatewayBody::Injected { inner } => inner.size_hint(),
        }
    }
}
