//! The connections to one HTTP origin: hyper's HTTP/1.1 client connections,
//! kept open between requests and reused most recently used first.
//!
//! A connection goes back to the pool when its response body ends, from the
//! body itself; one whose body is dropped unread, fails, or was upgraded is
//! closed instead. Idle connections are closed after the idle timeout (noticed
//! as the pool is used) or when the origin closes them. A request that an idle
//! connection could not take (the origin had closed it) is sent again on a new
//! connection: hyper hands such a request back unsent. A request given up
//! before its answer came (a timeout) ends its connection at once.
//!
//! Why not hyper-util's pooled client: decision 0019.

use std::collections::VecDeque;
use std::pin::Pin;
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Request, Response, StatusCode, Uri};
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;
use hyper::client::conn::http1::{self, SendRequest};
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::connect::HttpConnector;
use pin_project_lite::pin_project;
use tokio::task::AbortHandle;
use tower::ServiceExt;

use crate::proxy::body::{BoxError, ForwardBody};

pub struct OriginPool {
    connector: HttpsConnector<HttpConnector>,
    /// What the connector connects to: `scheme://authority/`.
    address: Uri,
    /// Oldest at the front, most recently used at the back.
    idle: Mutex<VecDeque<Idle>>,
    max_idle: usize,
    idle_timeout: Duration,
    /// The most a connection's read buffer may grow to.
    max_buf_size: usize,
    /// For TCP and TLS together (the connector's own covers TCP only).
    connect_timeout: Duration,
}

struct Idle {
    link: Link,
    since: Instant,
}

/// One connection: where requests go in, and the task that runs it.
struct Link {
    sender: SendRequest<ForwardBody>,
    task: AbortHandle,
}

/// Ends a connection's task when dropped, unless disarmed first.
struct EndOnDrop<'a>(Option<&'a AbortHandle>);

impl EndOnDrop<'_> {
    fn disarm(mut self) {
        self.0 = None;
    }
}

/// Awaits `sending` on the connection `task` runs. Dropped first (the
/// request given up), it ends the connection: hyper would close it only once
/// it had written out what it holds of the body, which an origin that has
/// stopped reading never lets it do.
async fn ending_if_given_up<T>(task: &AbortHandle, sending: impl Future<Output = T>) -> T {
    let given_up = EndOnDrop(Some(task));
    let sent = sending.await;
    given_up.disarm();
    sent
}

impl Drop for EndOnDrop<'_> {
    fn drop(&mut self) {
        if let Some(task) = self.0 {
            task.abort();
        }
    }
}

impl OriginPool {
    pub fn new(
        connector: HttpsConnector<HttpConnector>,
        address: Uri,
        max_idle: usize,
        idle_timeout: Duration,
        max_buf_size: usize,
        connect_timeout: Duration,
    ) -> Arc<OriginPool> {
        Arc::new(OriginPool {
            connector,
            address,
            idle: Mutex::new(VecDeque::new()),
            max_idle,
            idle_timeout,
            max_buf_size,
            connect_timeout,
        })
    }

    /// Sends `request` (its target in origin form, its `Host` set) on an
    /// idle connection, or on a new one.
    pub async fn send(
        self: &Arc<Self>,
        request: Request<ForwardBody>,
    ) -> Result<Response<PooledBody>, BoxError> {
        let mut request = request;
        if let Some(mut link) = self.checkout() {
            let sent = ending_if_given_up(&link.task, link.sender.try_send_request(request)).await;
            match sent {
                Ok(response) => return Ok(self.track(response, link)),
                Err(mut error) => match error.take_message() {
                    // Closed before it took the request: nothing reached the origin.
                    Some(unsent) => request = unsent,
                    None => return Err(error.into_error().into()),
                },
            }
        }
        // Boxed: connecting (a TLS session among its state) is rare, and
        // inline it would size every proxied request's future.
        let mut link = Box::pin(self.connect()).await?;
        let sent = ending_if_given_up(&link.task, link.sender.send_request(request)).await;
        Ok(self.track(sent?, link))
    }

    /// The most recently used idle connection that can take a request.
    fn checkout(&self) -> Option<Link> {
        let mut idle = self.idle.lock().unwrap_or_else(PoisonError::into_inner);
        while let Some(Idle { link, since }) = idle.pop_back() {
            if link.sender.is_ready() && since.elapsed() < self.idle_timeout {
                return Some(link);
            }
            // Closed by the origin, or idle too long: dropping it closes it.
        }
        None
    }

    /// A new connection, its TCP connect and TLS handshake together within
    /// `connect_timeout`: an origin that takes the connection but never
    /// answers the handshake would otherwise hold the request until
    /// `response_timeout`.
    async fn connect(&self) -> Result<Link, BoxError> {
        let connecting = self.connector.clone().oneshot(self.address.clone());
        let Ok(io) = tokio::time::timeout(self.connect_timeout, connecting).await else {
            return Err(format!("connect timed out after {:?}", self.connect_timeout).into());
        };
        let io = io?;
        let (sender, connection) = http1::Builder::new()
            .max_buf_size(self.max_buf_size)
            .handshake(io)
            .await?;
        let task = tokio::spawn(async move {
            if let Err(e) = connection.with_upgrades().await {
                tracing::debug!(error = %e, "upstream connection ended with an error");
            }
        });
        Ok(Link {
            sender,
            task: task.abort_handle(),
        })
    }

    /// The response, with its body set to give the connection back when it
    /// ends. An upgraded connection is never given back: it is a tunnel now,
    /// and its sender stays with the body, which the tunnel holds until both
    /// sides are up.
    fn track(self: &Arc<Self>, response: Response<Incoming>, link: Link) -> Response<PooledBody> {
        let reusable = response.status() != StatusCode::SWITCHING_PROTOCOLS;
        let connection = Connection {
            pool: self.clone(),
            link,
            reusable,
        };
        response.map(|inner| {
            let connection = if reusable && inner.is_end_stream() {
                connection.give_back();
                None
            } else {
                Some(connection)
            };
            PooledBody { inner, connection }
        })
    }

    fn put(&self, link: Link) {
        let now = Instant::now();
        let mut idle = self.idle.lock().unwrap_or_else(PoisonError::into_inner);
        while idle
            .front()
            .is_some_and(|oldest| now.duration_since(oldest.since) >= self.idle_timeout)
        {
            idle.pop_front();
        }
        if idle.len() < self.max_idle {
            idle.push_back(Idle { link, since: now });
        }
    }
}

/// A connection whose response body is still being read.
struct Connection {
    pool: Arc<OriginPool>,
    link: Link,
    reusable: bool,
}

impl Connection {
    /// Back to the pool, once the connection has finished the response (it
    /// usually has by the time its body ends; otherwise a task waits for it).
    fn give_back(self) {
        let Connection {
            pool,
            mut link,
            reusable,
        } = self;
        if !reusable || link.sender.is_closed() {
            return;
        }
        if link.sender.is_ready() {
            pool.put(link);
            return;
        }
        tokio::spawn(async move {
            if link.sender.ready().await.is_ok() {
                pool.put(link);
            }
        });
    }
}

pin_project! {
    /// An origin's response body; its connection goes back to the pool when
    /// it ends, and is closed if it is dropped before that or fails.
    pub struct PooledBody {
        #[pin]
        inner: Incoming,
        connection: Option<Connection>,
    }
}

impl Body for PooledBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        let mut this = self.project();
        let polled = this.inner.as_mut().poll_frame(cx);
        let ended = match &polled {
            Poll::Ready(None) => true,
            // hyper's server does not ask again once a body says it has ended.
            Poll::Ready(Some(Ok(_))) => this.inner.is_end_stream(),
            Poll::Ready(Some(Err(_))) => {
                // Broken: dropping the connection closes it.
                *this.connection = None;
                false
            }
            Poll::Pending => false,
        };
        if ended && let Some(connection) = this.connection.take() {
            connection.give_back();
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
