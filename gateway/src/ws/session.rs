//! One task per socket, read like mini-redis's `Handler::run`: [`Session::serve`] selects over the
//! client's frames, what its streams ask of it (their frames they write themselves: `outbound.rs`),
//! its timers and the node's signals, and delegates each to
//! one method that says what to do next ([`Next`]). The client's messages go through [`Session::dispatch`],
//! whose answer depends only on the endpoint's table ([`Endpoint::accepts`]).
//!
//! Invariants: every refusal is one [`Refusal`], sent from here; a frame is written within the send
//! timeout or the client is closed as a slow consumer (1013); the user's lease, the streams and the
//! session membership are released when the loop ends, whatever ended it.

use std::sync::Arc;
use std::time::{Duration, Instant};

use actix_ws::{
    AggregatedMessage, AggregatedMessageStream, CloseReason, MessageStream, ProtocolError,
};
use bytestring::ByteString;
use c2s_shared::bus::Topic;
use c2s_shared::codes::ErrorCode;
use c2s_shared::metrics::{self as m, count_frame_out};
use c2s_shared::now_ms;
use c2s_shared::protocol::{
    decode_client_frame, Ack, ClientFrame, ClientMessage, Close, NodeStatus, Pong, ServerFrame,
    ServerMessage,
};
use c2s_shared::telemetry;
use governor::DefaultDirectRateLimiter;
use tokio::sync::{broadcast, watch};
use tracing::Instrument;

use super::collab::{self, CollabJoin, Member};
use super::endpoint::Endpoint;
use super::outbound::Outbound;
use super::pacing::{over_rate, rate_limiter};
use super::queries::{ack, Queries};
use super::refusal::{close_reason, close_with, Refusal};
use super::streams::Streams;
use super::timers::{jittered_interval, tick_of, until};
use crate::auth::Identity;
use crate::per_user::UserLease;
use crate::state::{AppState, ConnectionSlot};

/// What the loop does after an event.
enum Next {
    Continue,
    /// End the socket, with this close frame (None: it is gone already).
    Close(Option<CloseReason>),
}

impl Next {
    /// The socket is gone (a write failed): nothing more to send.
    fn gone<T, E>(result: Result<T, E>) -> Next {
        match result {
            Ok(_) => Next::Continue,
            Err(_) => Next::Close(None),
        }
    }

    fn close(close: Close) -> Next {
        Next::Close(Some(close_reason(close)))
    }
}

/// What the loop selects over besides the session's own state.
struct Feeds {
    frames: AggregatedMessageStream,
    heartbeat: tokio::time::Interval,
    draining: watch::Receiver<bool>,
    notices: broadcast::Receiver<ByteString>,
    /// `/ws/monitoring` only: when this node's status goes out (the first tick is immediate).
    status_tick: Option<tokio::time::Interval>,
}

struct Session {
    state: Arc<AppState>,
    endpoint: Endpoint,
    /// Who is connected (from the token, or the development identity).
    identity: Identity,
    ws: actix_ws::Session,
    streams: Streams,
    /// This socket's place in a collaboration session (boxed: other endpoints pay a pointer).
    member: Option<Box<Member>>,
    /// The user's cap over all nodes (None: no cap); goes back when the socket ends. Boxed: without
    /// a cap a socket pays a pointer.
    lease: Option<Box<UserLease>>,
    rate: DefaultDirectRateLimiter,
    user_rate: Arc<DefaultDirectRateLimiter>,
    /// Frames refused for rate since the socket opened (over the limit: close 1008).
    refused: u32,
    last_heard: Instant,
}

/// What a new socket starts with. Handed to the socket's task boxed: an async fn keeps its arguments
/// for its whole life, so passed one by one they would cost every idle socket ~0.4 KB more.
struct Opening {
    state: Arc<AppState>,
    endpoint: Endpoint,
    ws: actix_ws::Session,
    stream: MessageStream,
    identity: Identity,
    collab: Option<CollabJoin>,
    slot: ConnectionSlot,
}

/// The socket's task, from the user's lease to the close frame.
pub fn run(
    state: Arc<AppState>,
    endpoint: Endpoint,
    ws: actix_ws::Session,
    stream: MessageStream,
    identity: Identity,
    collab: Option<CollabJoin>,
    slot: ConnectionSlot,
) -> impl std::future::Future<Output = ()> {
    run_opened(Box::new(Opening {
        state,
        endpoint,
        ws,
        stream,
        identity,
        collab,
        slot,
    }))
}

async fn run_opened(opening: Box<Opening>) {
    let Opening {
        state,
        endpoint,
        ws,
        stream,
        identity,
        collab,
        slot: _slot,
    } = *opening;
    // Boxed, as are the other one-off steps: the socket's future would otherwise keep room for the
    // largest of them (the lease's bus call) for its whole life.
    let Some(mut session) = Box::pin(Session::open(state, endpoint, ws, identity)).await else {
        return;
    };
    if let Some(join) = collab {
        if let Err(refusal) = Box::pin(session.join(join)).await {
            Box::pin(session.end(Some(refusal))).await;
            return;
        }
    }
    let mut feeds = session.feeds(stream);
    let path = endpoint.path();
    metrics::gauge!(m::WS_CONNECTIONS_OPEN, "endpoint" => path).increment(1.0);
    metrics::counter!(m::WS_CONNECTIONS_OPENED, "endpoint" => path).increment(1);
    tracing::debug!(endpoint = path, "socket opened");
    let reason = session.serve(&mut feeds).await;
    tracing::debug!(endpoint = path, ?reason, "socket closed");
    let code = reason
        .as_ref()
        .map_or(1006, |r| u16::from(r.code))
        .to_string();
    metrics::gauge!(m::WS_CONNECTIONS_OPEN, "endpoint" => path).decrement(1.0);
    metrics::counter!(m::WS_CONNECTIONS_CLOSED, "endpoint" => path, "code" => code).increment(1);
    Box::pin(async move {
        session.leave().await;
        let _ = session.ws.close(reason).await;
    })
    .await;
}

impl Session {
    /// A new socket's session, once its user's connection cap let it in (else the client got an
    /// `error rate_limited` and close 1013, and None).
    async fn open(
        state: Arc<AppState>,
        endpoint: Endpoint,
        ws: actix_ws::Session,
        identity: Identity,
    ) -> Option<Session> {
        let limits = &state.ws;
        let opened = UserLease::open(
            state.bus.clone(),
            &identity.user_id,
            &state.node_id,
            limits.max_connections_per_user,
            limits.connection_lease(),
        )
        .await;
        let streams = Streams::new(state.clone(), ws.clone());
        let mut session = Session {
            rate: rate_limiter(limits.rate_limit_per_sec, limits.rate_limit_burst),
            user_rate: state.user_rates.bucket(&identity.user_id),
            state,
            endpoint,
            identity,
            ws,
            streams,
            member: None,
            lease: None,
            refused: 0,
            last_heard: Instant::now(),
        };
        match opened {
            Ok(lease) => session.lease = lease.map(Box::new),
            Err(over) => {
                metrics::counter!(m::REFUSALS, "reason" => "user_connections").increment(1);
                let refusal = Refusal::new(
                    ErrorCode::RateLimited,
                    format!(
                        "you have {} connections open already (the per-user cap): close one, then retry",
                        over.max
                    ),
                )
                .closing(Close::TryAgainLater);
                session.end(Some(refusal)).await;
                return None;
            }
        }
        Some(session)
    }

    /// Joins the collaboration session, follows its events and sends its `session_state`.
    async fn join(&mut self, join: CollabJoin) -> Result<(), Refusal> {
        let joined = collab::join(&self.state, &self.identity, join).await?;
        let topic = Topic::Session(joined.member.session_id.clone());
        self.member = Some(Box::new(joined.member));
        // The subscription is taken before session_state goes out; events after the snapshot queue up.
        self.streams
            .follow(topic, joined.follow_after)
            .await
            .map_err(|r| r.closing(Close::TryAgainLater))?;
        self.send(ServerMessage::SessionState(joined.state))
            .await
            .map_err(|_| Refusal::new(ErrorCode::Internal, "socket closed").closing(Close::Normal))
    }

    /// The feeds of the loop. Each socket's heartbeat starts at a random point of the interval:
    /// sockets opened in one burst (a reconnect storm) would otherwise all be pinged in the same
    /// millisecond, every interval.
    fn feeds(&self, stream: MessageStream) -> Feeds {
        let limits = &self.state.ws;
        Feeds {
            frames: stream
                .max_frame_size(limits.max_frame_bytes)
                .aggregate_continuations()
                .max_continuation_size(limits.max_frame_bytes),
            heartbeat: jittered_interval(limits.heartbeat_interval()),
            draining: self.state.drain_signal(),
            notices: self.state.notices.subscribe(),
            status_tick: (self.endpoint == Endpoint::Monitoring)
                .then(|| tokio::time::interval(self.state.node_status_interval)),
        }
    }

    /// The loop: select, delegate, until a handler says close. Handlers that call the bus are boxed
    /// where they are awaited: an idle socket's future then holds a pointer for them instead of the
    /// largest of their state machines.
    async fn serve(&mut self, feeds: &mut Feeds) -> Option<CloseReason> {
        loop {
            if *feeds.draining.borrow_and_update() {
                return Some(close_reason(Close::ServiceRestart));
            }
            // Relays followed by the last message start now that its reply went out.
            self.streams.start_waiting();
            let cursor_due = self.member.as_ref().and_then(|m| m.cursor_due);
            let token_due = self.token_expiry();
            let next = tokio::select! {
                frame = feeds.frames.recv() => match frame {
                    Some(frame) => Box::pin(self.on_frame(frame)).await,
                    None => Next::Close(None),
                },
                Some(outbound) = self.streams.recv() => match outbound {
                    Outbound::Follow(execution_id) => Box::pin(self.follow_shared(execution_id)).await,
                    // The client stopped reading: it resumes elsewhere or later with afterSeq.
                    Outbound::SlowConsumer => {
                        metrics::counter!(m::SLOW_CONSUMER_CLOSES).increment(1);
                        Next::close(Close::TryAgainLater)
                    }
                },
                _ = until(cursor_due) => Box::pin(self.flush_cursor()).await,
                _ = feeds.draining.changed() => Next::Continue,
                _ = until(token_due) => Box::pin(self.token_expired()).await,
                notice = feeds.notices.recv() => self.relay_notice(notice).await,
                _ = tick_of(&mut feeds.status_tick) => Box::pin(self.send_node_status()).await,
                _ = feeds.heartbeat.tick() => self.heartbeat().await,
            };
            if let Next::Close(reason) = next {
                return reason;
            }
        }
    }

    /// A frame from the client.
    async fn on_frame(&mut self, frame: Result<AggregatedMessage, ProtocolError>) -> Next {
        self.last_heard = Instant::now();
        match frame {
            Ok(AggregatedMessage::Text(text)) => self.on_text(&text).await,
            Ok(AggregatedMessage::Binary(_)) => {
                let e = Refusal::new(
                    ErrorCode::BadRequest,
                    "binary frames are not supported: send JSON text frames",
                );
                Next::gone(self.send_refusal(e, None).await)
            }
            Ok(AggregatedMessage::Ping(bytes)) => Next::gone(self.ws.pong(&bytes).await),
            Ok(AggregatedMessage::Pong(_)) => Next::Continue,
            Ok(AggregatedMessage::Close(reason)) => Next::Close(reason),
            Err(ProtocolError::Overflow) => Next::close(Close::TooBig),
            // actix-ws reports an over-long continuation as an I/O error.
            Err(ProtocolError::Io(e)) if e.to_string().contains("maximum continuation size") => {
                Next::close(Close::TooBig)
            }
            Err(ProtocolError::Io(e)) if e.kind() == std::io::ErrorKind::InvalidData => {
                Next::close(Close::InvalidData)
            }
            Err(e) => {
                tracing::debug!(error = %e, "protocol error");
                Next::Close(Some(close_with(Close::ProtocolError, e.to_string())))
            }
        }
    }

    /// A text frame: rate-checked, decoded, dispatched; the reply or the refusal goes back.
    async fn on_text(&mut self, text: &str) -> Next {
        metrics::counter!(m::WS_BYTES_IN).increment(text.len() as u64);
        let limits = &self.state.ws;
        if let Some(message) = over_rate(&self.rate, &self.user_rate, limits) {
            metrics::counter!(m::RATE_LIMITED).increment(1);
            self.refused += 1;
            if self.refused > limits.rate_limit_max_refused {
                return Next::close(Close::Policy);
            }
            let e = Refusal::new(ErrorCode::RateLimited, message);
            return Next::gone(self.send_refusal(e, None).await);
        }
        let frame = match decode_client_frame(text) {
            Ok(frame) => frame,
            Err(e) => {
                metrics::counter!(m::WS_MESSAGES_IN, "type" => "invalid").increment(1);
                let refusal = Refusal::new(e.code, e.message);
                return Next::gone(self.send_refusal(refusal, e.reference).await);
            }
        };
        metrics::counter!(m::WS_MESSAGES_IN, "type" => frame.message.type_name()).increment(1);
        let reference = frame.id.clone();
        let sent = match self.dispatch(frame).await {
            Ok(Some(reply)) => self.send(reply).await,
            Ok(None) => Ok(()),
            Err(refusal) => self.send_refusal(refusal, reference).await,
        };
        Next::gone(sent)
    }

    /// One client message: refused unless the endpoint takes its type, else handled.
    async fn dispatch(&mut self, frame: ClientFrame) -> Result<Option<ServerMessage>, Refusal> {
        let ClientFrame {
            message,
            id,
            traceparent,
        } = frame;
        let kind = message.type_name();
        if !self.endpoint.accepts(kind) {
            let hint = self.endpoint.refusal_hint(kind);
            return Err(Refusal::new(ErrorCode::UnknownType, hint));
        }
        let traceparent = traceparent.as_deref();
        match message {
            ClientMessage::Ping(ping) => Ok(Some(ServerMessage::Pong(Pong {
                timestamp: ping.timestamp,
                server_time: now_ms(),
            }))),
            ClientMessage::ExecuteQuery(request) => {
                let span = receive_span(&self.state.node_id, traceparent);
                let owned = traceparent.map(str::to_owned);
                let mut queries = self.queries();
                let reply = queries.execute(request, id, owned).instrument(span).await;
                reply.map(Some)
            }
            ClientMessage::CancelQuery(target) => {
                self.queries().cancel(&target.execution_id).await?;
                Ok(id.map(|id| ack(Some(id), Some(target.execution_id))))
            }
            ClientMessage::Resume(from) | ClientMessage::Subscribe(from) => {
                let execution_id = from.execution_id.clone();
                self.queries().follow_existing(from).await?;
                Ok(id.map(|id| ack(Some(id), Some(execution_id))))
            }
            ClientMessage::UpdateQuery(update) => {
                let span = collab_span("collab update_query", traceparent);
                self.member()?
                    .update_query(&self.state, update)
                    .instrument(span)
                    .await?;
                Ok(id.map(|id| ack(Some(id), None)))
            }
            ClientMessage::MoveCursor(moved) => {
                let interval = Duration::from_millis(self.state.collab.cursor_interval_ms);
                self.member_mut()?.move_cursor(moved.cursor, interval);
                Ok(None)
            }
            ClientMessage::ChatMessage(chat) => {
                let span = collab_span("collab chat_message", traceparent);
                let fresh = self
                    .member()?
                    .chat(&self.state, chat.message)
                    .instrument(span)
                    .await?;
                Ok(id.map(|id| {
                    ServerMessage::Ack(Ack {
                        id: Some(id),
                        execution_id: None,
                        duplicate: !fresh,
                    })
                }))
            }
            ClientMessage::RefreshToken(refresh) => {
                self.refresh_token(&refresh.token)?;
                Ok(id.map(|id| ack(Some(id), None)))
            }
        }
    }

    fn queries(&mut self) -> Queries<'_> {
        Queries {
            state: &self.state,
            identity: &self.identity,
            streams: &mut self.streams,
            member: self.member.as_deref(),
        }
    }

    fn member(&self) -> Result<&Member, Refusal> {
        self.member.as_deref().ok_or_else(not_a_member)
    }

    fn member_mut(&mut self) -> Result<&mut Member, Refusal> {
        self.member.as_deref_mut().ok_or_else(not_a_member)
    }

    /// A shared execution was announced in this socket's session: follow it from its start.
    async fn follow_shared(&mut self, execution_id: Box<str>) -> Next {
        let topic = Topic::Execution(execution_id.into());
        match self.streams.follow(topic, 0).await {
            Ok(()) => Next::Continue,
            Err(refusal) => Next::gone(self.send_refusal(refusal, None).await),
        }
    }

    /// This participant's coalesced cursor is due.
    async fn flush_cursor(&mut self) -> Next {
        let Some(member) = self.member.as_mut() else {
            return Next::Continue;
        };
        match member.flush_cursor(&self.state).await {
            Ok(()) => Next::Continue,
            Err(refusal) => Next::gone(self.send_refusal(refusal, None).await),
        }
    }

    /// When the token runs out (None: no token, or no expiry); a `refresh_token` extends it.
    fn token_expiry(&self) -> Option<Instant> {
        self.identity.expires_at.map(|exp| {
            let left = (exp - now_ms() / 1000).max(0) as u64;
            Instant::now() + Duration::from_secs(left)
        })
    }

    /// The token expired without a refresh: 4001.
    async fn token_expired(&mut self) -> Next {
        let e = Refusal::new(
            ErrorCode::Unauthorized,
            "your token expired: reconnect with a fresh one",
        );
        let _ = self.send_refusal(e, None).await;
        Next::close(Close::Unauthorized)
    }

    /// An operator notice for every client.
    async fn relay_notice(
        &mut self,
        notice: Result<ByteString, broadcast::error::RecvError>,
    ) -> Next {
        match notice {
            Ok(frame) => {
                count_frame_out(&frame);
                Next::gone(self.ws.text(frame).await)
            }
            Err(_) => Next::Continue,
        }
    }

    /// Monitoring sockets: this node's status.
    async fn send_node_status(&mut self) -> Next {
        let status = ServerMessage::NodeStatus(NodeStatus {
            node_id: self.state.node_id.clone(),
            connections: self.state.connections(),
            draining: self.state.is_draining(),
            uptime_secs: self.state.started.elapsed().as_secs(),
            timestamp: now_ms(),
        });
        Next::gone(self.send(status).await)
    }

    /// Heartbeat: keep the user lease, close a client silent too long, ping the others.
    async fn heartbeat(&mut self) -> Next {
        if let Some(lease) = self.lease.as_mut() {
            lease.renew_if_due().await;
        }
        if self.last_heard.elapsed() > self.state.ws.client_timeout() {
            return Next::Close(Some(close_with(Close::GoingAway, "idle timeout")));
        }
        Next::gone(self.ws.ping(b"").await)
    }

    /// Replaces the connection's token with a fresh one of the same user (extends its expiry).
    fn refresh_token(&mut self, token: &str) -> Result<(), Refusal> {
        if !self.state.auth.is_on() {
            return Err(Refusal::new(
                ErrorCode::BadRequest,
                "authentication is off: nothing to refresh",
            ));
        }
        let fresh = self
            .state
            .auth
            .verify(token)
            .map_err(|e| Refusal::new(ErrorCode::Unauthorized, e.to_string()))?;
        if fresh.user_id != self.identity.user_id {
            return Err(Refusal::new(
                ErrorCode::Forbidden,
                "a refreshed token must be for the same user (`sub`)",
            ));
        }
        self.identity = fresh;
        Ok(())
    }

    async fn send(&mut self, message: ServerMessage) -> Result<(), actix_ws::Closed> {
        self.ws.text(ServerFrame::new(message).to_text()).await
    }

    async fn send_refusal(
        &mut self,
        refusal: Refusal,
        reference: Option<String>,
    ) -> Result<(), actix_ws::Closed> {
        metrics::counter!(m::WS_ERRORS, "code" => refusal.code.as_str()).increment(1);
        self.send(refusal.into_message(reference)).await
    }

    /// Ends a socket that never reached the loop: the refusal (if any) and its close frame.
    async fn end(mut self, refusal: Option<Refusal>) {
        let close = refusal.as_ref().and_then(|r| r.close);
        if let Some(refusal) = refusal {
            let _ = self.send_refusal(refusal, None).await;
        }
        self.leave().await;
        let _ = self.ws.close(close.map(close_reason)).await;
    }

    /// Releases what the socket held: its streams and its place in a session.
    async fn leave(&mut self) {
        self.streams.stop_all();
        if let Some(member) = self.member.take() {
            Box::pin(member.leave(&self.state)).await;
        }
    }
}

fn not_a_member() -> Refusal {
    Refusal::new(ErrorCode::Internal, "not in a collaboration session")
}

/// The span of an `execute_query` as the gateway receives it, continuing the client's trace.
fn receive_span(node_id: &str, traceparent: Option<&str>) -> tracing::Span {
    let span = tracing::info_span!(
        "gateway.receive",
        otel.name = "gateway receive execute_query",
        otel.kind = "server",
        node = %node_id,
        trace_id = tracing::field::Empty,
    );
    telemetry::continue_trace(&span, traceparent);
    span
}

/// A span for a collaboration action; the session events it writes carry its context.
fn collab_span(name: &'static str, traceparent: Option<&str>) -> tracing::Span {
    let span = tracing::info_span!("collab", otel.name = name, trace_id = tracing::field::Empty,);
    telemetry::continue_trace(&span, traceparent);
    span
}
