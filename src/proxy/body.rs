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
use std::task::{Context, Poll, ready};
use std::time::Duration;

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;
use pin_project_lite::pin_project;
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

pin_project! {
    /// Wraps a body so that it fails with [`BodyError::Idle`] when no frame
    /// arrives within `idle` of being asked for one. Time spent while nobody
    /// polls (a slow reader downstream) does not count.
    pub struct IdleTimeout<B> {
        #[pin]
        inner: B,
        #[pin]
        timer: Sleep,
        idle: Duration,
        waiting: bool,
    }
}

impl<B> IdleTimeout<B> {
    pub fn new(inner: B, idle: Duration) -> Self {
        IdleTimeout {
            inner,
            timer: tokio::time::sleep(idle),
            idle,
            waiting: true,
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
        let mut this = self.project();
        if !*this.waiting {
            this.timer.as_mut().reset(Instant::now() + *this.idle);
            *this.waiting = true;
        }
        match this.inner.poll_frame(cx) {
            Poll::Ready(frame) => {
                *this.waiting = false;
                Poll::Ready(frame.map(|f| f.map_err(Into::into)))
            }
            Poll::Pending => {
                ready!(this.timer.poll(cx));
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

/// A client's request body forwarded to an origin. hyper's client needs an
/// `Unpin` body, so the idle timer is boxed, and only created once the client
/// actually makes us wait: a body that arrives with its head costs no timer.
pub struct ForwardBody {
    inner: Incoming,
    remaining: u64,
    idle: Duration,
    timer: Option<Pin<Box<Sleep>>>,
    /// True while a wait is being timed; time nobody polls us is not counted.
    waiting: bool,
}

impl ForwardBody {
    pub fn new(inner: Incoming, max_bytes: u64, idle: Duration) -> Self {
        ForwardBody {
            inner,
            remaining: max_bytes,
            idle,
            timer: None,
            waiting: false,
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
                    let idle = this.idle;
                    let timer = this
                        .timer
                        .get_or_insert_with(|| Box::pin(tokio::time::sleep(idle)));
                    if !this.waiting {
                        timer.as_mut().reset(Instant::now() + idle);
                        this.waiting = true;
                    }
                    ready!(timer.as_mut().poll(cx));
                    return Poll::Ready(Some(Err(BodyError::Idle.into())));
                }
            };
            // Progress: the next wait starts a fresh idle period.
            this.waiting = false;
            return match frame {
                Some(Ok(frame)) => match frame.into_data() {
                    Ok(data) => {
                        let len = data.len() as u64;
                        if len > this.remaining {
                            return Poll::Ready(Some(Err(BodyError::TooLarge.into())));
                        }
                        this.remaining -= len;
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
                None => Poll::Ready(None),
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
