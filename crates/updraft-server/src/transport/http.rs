//! The HTTP listener: HTTP/1.1 over hyper with the server's bounds. Every connection holds a
//! permit of the connection cap shared with the other TCP listeners (over the cap it is closed at
//! once); a request's headers — the first's, and each next one's on a kept-alive connection — must
//! arrive within the handshake timeout (slowloris, idle sockets); a request body that stalls
//! for the idle timeout ends with an error; headers are bounded in size and count.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::Request;
use axum::middleware::{self, Next};
use axum::response::Response;
use http_body::Frame;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;
use tokio::time::Sleep;
use tower::ServiceExt;

use crate::kernel::state::AppState;

/// Largest request head (request line and headers) read from a client.
const MAX_HEAD_BYTES: usize = 64 * 1024;
/// Most headers in one request.
const MAX_HEADERS: usize = 100;

/// Serves `router` on `listener` until `shutdown` completes; then stops accepting and lets open
/// requests finish (for at most the idle timeout).
pub async fn serve(
    listener: TcpListener,
    router: Router,
    state: AppState,
    shutdown: impl Future<Output = ()> + Send + 'static,
) {
    let limits = state.config.limits.clone();
    let refused = Arc::new(AtomicU64::new(0));
    state.metrics.register(
        "updraft_http_refused_connections_total",
        "HTTP connections closed at once because the server's connection cap was reached.",
        refused.clone(),
    );
    let idle = limits.idle_timeout;
    let router = router.layer(middleware::from_fn(move |request: Request, next: Next| {
        guard_body(request, next, idle)
    }));
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let mut shutdown = std::pin::pin!(shutdown);
    let open = tokio_util::task::TaskTracker::new();
    loop {
        let (stream, _) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(err) => {
                    tracing::warn!(error = %err, "http accept failed");
                    // Out of file descriptors, say: back off instead of spinning.
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        let Ok(permit) = state.connections.clone().try_acquire_owned() else {
            refused.fetch_add(1, Ordering::Relaxed);
            drop(stream);
            continue;
        };
        let _ = stream.set_nodelay(true);
        let router = router.clone();
        let service =
            hyper::service::service_fn(move |request: hyper::Request<hyper::body::Incoming>| {
                router.clone().oneshot(request.map(Body::new))
            });
        let mut builder = hyper::server::conn::http1::Builder::new();
        builder
            .timer(TokioTimer::new())
            .header_read_timeout(limits.handshake_timeout)
            .max_buf_size(MAX_HEAD_BYTES.max(8192))
            .max_headers(MAX_HEADERS);
        let mut stopped = stopped.clone();
        open.spawn(async move {
            let connection = builder.serve_connection(TokioIo::new(stream), service);
            let mut connection = std::pin::pin!(connection);
            tokio::select! {
                result = connection.as_mut() => {
                    if let Err(err) = result {
                        tracing::debug!(error = %err, "http connection ended");
                    }
                }
                _ = async { stopped.wait_for(|stop| *stop).await.map(|_| ()) } => {
                    connection.as_mut().graceful_shutdown();
                    let _ = tokio::time::timeout(idle, connection).await;
                }
            }
            drop(permit);
        });
    }
    let _ = stop.send(true);
    // Wait for the connections to drain.
    open.close();
    let _ = tokio::time::timeout(idle, open.wait()).await;
}

/// Wraps the request body so that a client that stops sending it for `idle` gets an error
/// instead of holding the handler forever.
async fn guard_body(request: Request, next: Next, idle: Duration) -> Response {
    let request = request.map(|body| {
        Body::new(StallGuard {
            inner: body,
            idle,
            deadline: Box::pin(tokio::time::sleep(idle)),
        })
    });
    next.run(request).await
}

/// A body whose every frame must come within `idle` of the previous one.
struct StallGuard {
    inner: Body,
    idle: Duration,
    deadline: Pin<Box<Sleep>>,
}

impl http_body::Body for StallGuard {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, axum::Error>>> {
        match Pin::new(&mut self.inner).poll_frame(cx) {
            Poll::Ready(frame) => {
                let next = tokio::time::Instant::now() + self.idle;
                self.deadline.as_mut().reset(next);
                Poll::Ready(frame)
            }
            Poll::Pending => match self.deadline.as_mut().poll(cx) {
                Poll::Ready(()) => Poll::Ready(Some(Err(axum::Error::new(std::io::Error::new(
                    std::io::ErrorKind::TimedOut,
                    "the request body stalled",
                ))))),
                Poll::Pending => Poll::Pending,
            },
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}
