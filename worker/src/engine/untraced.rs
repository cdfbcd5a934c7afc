//! Row streams made and polled outside the current tracing span.
//!
//! sqlx wraps every statement's row stream in `in_current_span()`, so each row it yields enters and
//! leaves the span that was current when the stream was made (a query's `db.query` span): through the
//! filter and the OpenTelemetry layer, that was about a fifth of the worker's CPU on a 1M-row stream
//! (bench/README.md, "Streaming"). A stream made and polled here sees no current span, so the span it
//! captures is the disabled one and entering it costs nothing. The query's own span is unchanged: it
//! still covers the statement, and its `db.rows` is still recorded.
//!
//! Invariant: only sqlx's code runs under the no-op dispatcher (the stream's creation and its polls);
//! what sqlx itself logs from inside a row stream (PostgreSQL notices, its slow-statement warning) is
//! not recorded, which also keeps a user's `RAISE NOTICE` loop out of the worker's logs.

use std::pin::Pin;
use std::task::{Context, Poll};

use futures_util::Stream;

/// A stream whose creation and polls run with no current span.
pub struct Untraced<S>(S);

impl<S> Untraced<S> {
    /// Makes the stream with no current span (so that is the span sqlx captures).
    pub fn new(make: impl FnOnce() -> S) -> Untraced<S> {
        Untraced(without_span(make))
    }
}

impl<S: Stream + Unpin> Stream for Untraced<S> {
    type Item = S::Item;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<S::Item>> {
        let inner = &mut self.0;
        // A statement's inner streams are made during its first polls: they must not see a span either.
        without_span(|| Pin::new(inner).poll_next(cx))
    }
}

fn without_span<T>(f: impl FnOnce() -> T) -> T {
    tracing::dispatcher::with_default(&tracing::Dispatch::none(), f)
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures_util::StreamExt;

    #[test]
    fn a_stream_made_here_sees_no_current_span() {
        let subscriber = tracing_subscriber::registry();
        tracing::subscriber::with_default(subscriber, || {
            let span = tracing::info_span!("db.query");
            let _entered = span.enter();
            assert!(!tracing::Span::current().is_none());
            let mut seen = Untraced::new(|| {
                let made_in = tracing::Span::current();
                futures_util::stream::poll_fn(move |_| {
                    Poll::Ready(Some((
                        made_in.is_none(),
                        tracing::Span::current().is_none(),
                    )))
                })
            });
            let first = futures_util::FutureExt::now_or_never(seen.next());
            assert_eq!(first, Some(Some((true, true))));
            // Outside the stream, the query's span is current again.
            assert!(!tracing::Span::current().is_none());
        });
    }
}
