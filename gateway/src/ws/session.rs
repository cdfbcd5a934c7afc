//! One task per socket: a `select!` over the client's frames, the events queued for it, the heartbeat
//! tick and (in a collaboration session) the cursor flush, until the client leaves, goes silent, or
//! breaks a limit.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Instant;

use actix_ws::{AggregatedMessage, CloseCode, CloseReason, MessageStream, ProtocolError};
use bytestring::ByteString;
use c2s_shared::bus::{BusEvent, CancelOutcome, ExecutionInfo, Job, Topic};
use c2s_shared::codes::{close, ErrorCode};
use c2s_shared::metrics::{self as m, count_frame_out};
use c2s_shared::now_ms;
use c2s_shared::protocol::{
    decode_client_frame, Ack, ClientFrame, ClientMessage, ExecuteQuery, NodeStatus, Pong,
    QueryCancelled, ServerFrame, ServerMessage, StreamFrom,
};
use c2s_shared::telemetry;
use futures_util::FutureExt;
use governor::{DefaultDirectRateLimiter, Quota, RateLimiter};
use tokio::sync::{mpsc, OwnedSemaphorePermit, Semaphore};
use tokio::task::JoinHandle;
use tracing::Instrument;

use super::collab::{CollabJoin, Member};
use super::follower::{Follower, Written};
use super::forward::Forward;
use super::Endpoint;
use crate::auth::Identity;
use crate::per_user::UserLease;
use crate::state::{AppState, ConnectionSlot};

/// What the streams a socket follows hand to its session task.
///
/// Both variants are one pointer wide: tokio's mpsc allocates its first block of 32 slots with the
/// channel, so every idle socket pays 32 × this size (boxing took it from 72 to 16 bytes).
pub enum Outbound {
    /// A frame to send as is (see [`QueuedFrame`]).
    Frame(Box<QueuedFrame>),
    /// A shared execution was announced in the collaboration session: follow it too.
    Follow(Box<str>),
}

/// A frame waiting for its socket.
pub struct QueuedFrame {
    pub text: ByteString,
    /// The frame's bytes' share of the connection's outbound budget, held until sent.
    pub budget: Option<OwnedSemaphorePermit>,
    /// For an execution's event, what to record once it is written (the follower's position).
    pub written: Option<Written>,
}

impl Outbound {
    pub fn frame(
        text: ByteString,
        budget: Option<OwnedSemaphorePermit>,
        written: Option<Written>,
    ) -> Self {
        Outbound::Frame(Box::new(QueuedFrame {
            text,
            budget,
            written,
        }))
    }
}

/// A refusal to send back as an `error` frame; the connection stays open.
pub(super) struct Refusal {
    pub code: ErrorCode,
    pub message: String,
    /// For `conflict`: the shared query's current version and text.
    pub current: Option<(u64, String)>,
}

pub(super) fn refuse(code: ErrorCode, message: impl Into<String>) -> Refusal {
    Refusal {
        code,
        message: message.into(),
        current: None,
    }
}

pub(super) struct Session {
    pub state: Arc<AppState>,
    pub endpoint: Endpoint,
    /// Who is connected (from the token, or the development identity).
    pub identity: Identity,
    pub ws: actix_ws::Session,
    pub out: mpsc::Sender<Outbound>,
    /// Bytes of event frames queued for this socket and not yet written (C2S_OUTBOUND_QUEUE_BYTES).
    pub out_bytes: Arc<Semaphore>,
    /// Streams this socket follows.
    pub streams: HashMap<Topic, JoinHandle<()>>,
    /// This socket's place in a collaboration session.
    pub member: Option<Member>,
}

pub async fn run(
    state: Arc<AppState>,
    endpoint: Endpoint,
    ws: actix_ws::Session,
    stream: MessageStream,
    identity: Identity,
    collab: Option<CollabJoin>,
    _slot: ConnectionSlot,
) {
    let limits = state.ws.clone();
    let mut frames = stream
        .max_frame_size(limits.max_frame_bytes)
        .aggregate_continuations()
        .max_continuation_size(limits.max_frame_bytes);
    let (out, mut outbound) = mpsc::channel::<Outbound>(limits.outbound_queue.max(1));
    let mut session = Session {
        state,
        endpoint,
        identity,
        ws,
        out,
        out_bytes: Arc::new(Semaphore::new(limits.outbound_queue_bytes.max(1))),
        streams: HashMap::new(),
        member: None,
    };
    // The user's cap over all nodes; the lease goes back when the socket task ends.
    let Ok(mut lease) = session.open_user_lease().await else {
        return;
    };
    if let Some(join) = collab {
        if let Err((refusal, close_code)) = Box::pin(session.join(join)).await {
            let _ = session.send_error(refusal, None).await;
            let _ = session.ws.close(Some(close_reason(close_code))).await;
            return;
        }
    }
    // Each socket's heartbeat starts at a random point of the interval: sockets opened in one burst (a
    // reconnect storm) would otherwise all be pinged in the same millisecond, every interval.
    let mut heartbeat = jittered_interval(limits.heartbeat_interval());
    let mut last_heard = Instant::now();
    let mut draining = session.state.drain_signal();
    let mut notices = session.state.notices.subscribe();
    // node_status goes out on /ws/monitoring only (the first tick is immediate); other sockets have no
    // such timer.
    let monitoring = endpoint == Endpoint::Monitoring;
    let mut status_tick =
        monitoring.then(|| tokio::time::interval(session.state.node_status_interval));
    // The token's expiry closes the socket with 4001 unless a refresh_token extends it.
    let token_expiry = |identity: &Identity| {
        identity.expires_at.map(|exp| {
            let left = (exp - now_ms() / 1000).max(0) as u64;
            Instant::now() + std::time::Duration::from_secs(left)
        })
    };
    let path = endpoint.path();
    metrics::gauge!(m::WS_CONNECTIONS_OPEN, "endpoint" => path).increment(1.0);
    metrics::counter!(m::WS_CONNECTIONS_OPENED, "endpoint" => path).increment(1);
    let rate = rate_limiter(limits.rate_limit_per_sec, limits.rate_limit_burst);
    let user_rate = session.state.user_rates.bucket(&session.identity.user_id);
    let mut refused: u32 = 0;
    tracing::debug!(endpoint = endpoint.path(), "socket opened");

    // The handlers of client messages are boxed where they are awaited: an idle socket's future then
    // holds a pointer for them instead of the largest of their bus calls' state machines.
    let reason: Option<CloseReason> = loop {
        let cursor_due = session.member.as_ref().and_then(|m| m.cursor_due);
        let expiry = token_expiry(&session.identity);
        if *draining.borrow_and_update() {
            break Some(close_reason(close::SERVICE_RESTART));
        }
        tokio::select! {
            // A frame from the client.
            frame = frames.recv() => {
                let Some(frame) = frame else { break None };
                last_heard = Instant::now();
                match frame {
                    Ok(AggregatedMessage::Text(text)) => {
                        metrics::counter!(m::WS_BYTES_IN).increment(text.len() as u64);
                        if let Some(message) = over_rate(&rate, &user_rate, &limits) {
                            metrics::counter!(m::RATE_LIMITED).increment(1);
                            refused += 1;
                            if refused > limits.rate_limit_max_refused {
                                break Some(close_reason(close::POLICY));
                            }
                            let e = refuse(ErrorCode::RateLimited, message);
                            if session.send_error(e, None).await.is_err() {
                                break None;
                            }
                            continue;
                        }
                        if Box::pin(session.handle_text(&text)).await.is_err() {
                            break None;
                        }
                    }
                    Ok(AggregatedMessage::Binary(_)) => {
                        let e = refuse(ErrorCode::BadRequest, "binary frames are not supported: send JSON text frames");
                        if session.send_error(e, None).await.is_err() {
                            break None;
                        }
                    }
                    Ok(AggregatedMessage::Ping(bytes)) => {
                        if session.ws.pong(&bytes).await.is_err() {
                            break None;
                        }
                    }
                    Ok(AggregatedMessage::Pong(_)) => {}
                    Ok(AggregatedMessage::Close(reason)) => break reason,
                    Err(ProtocolError::Overflow) => break Some(close_reason(close::TOO_BIG)),
                    // actix-ws reports an over-long continuation as an I/O error.
                    Err(ProtocolError::Io(e)) if e.to_string().contains("maximum continuation size") => {
                        break Some(close_reason(close::TOO_BIG))
                    }
                    Err(ProtocolError::Io(e)) if e.kind() == std::io::ErrorKind::InvalidData => {
                        break Some(close_reason(close::INVALID_DATA))
                    }
                    Err(e) => {
                        tracing::debug!(error = %e, "protocol error");
                        break Some(CloseReason { code: CloseCode::Protocol, description: Some(e.to_string()) });
                    }
                }
            }
            // An event for this client from one of its streams.
            Some(outbound) = outbound.recv() => match outbound {
                Outbound::Frame(queued) => {
                    let QueuedFrame { text, budget: _budget, written } = *queued;
                    count_frame_out(&text);
                    match send_within(&mut session.ws, text, limits.send_timeout()).await {
                        // Written: the follower may now report it taken (the execution's window).
                        Ok(Ok(())) => written.into_iter().for_each(Written::record),
                        Ok(Err(_)) => break None,
                        // The client stopped reading: it resumes elsewhere or later with afterSeq.
                        Err(_) => {
                            metrics::counter!(m::SLOW_CONSUMER_CLOSES).increment(1);
                            break Some(close_reason(close::TRY_AGAIN_LATER));
                        }
                    }
                }
                Outbound::Follow(execution_id) => {
                    if let Err(refusal) = Box::pin(session.follow(Topic::Execution(execution_id.into()), 0)).await {
                        if session.send_error(refusal, None).await.is_err() {
                            break None;
                        }
                    }
                }
            },
            // This participant's coalesced cursor is due.
            _ = tokio::time::sleep_until(cursor_due.unwrap_or_else(far_future).into()), if cursor_due.is_some() => {
                if let Err(refusal) = Box::pin(session.flush_cursor()).await {
                    if session.send_error(refusal, None).await.is_err() {
                        break None;
                    }
                }
            }
            // The node is draining: tell the client to reconnect (elsewhere).
            _ = draining.changed() => {}
            // The token expired without a refresh.
            _ = tokio::time::sleep_until(expiry.unwrap_or_else(far_future).into()), if expiry.is_some() => {
                let e = refuse(ErrorCode::Unauthorized, "your token expired: reconnect with a fresh one");
                let _ = session.send_error(e, None).await;
                break Some(close_reason(close::UNAUTHORIZED));
            }
            // An operator notice for every client.
            notice = notices.recv() => {
                if let Ok(frame) = notice {
                    count_frame_out(&frame);
                    if session.ws.text(frame).await.is_err() {
                        break None;
                    }
                }
            }
            // Monitoring sockets: this node's status.
            _ = tick_of(&mut status_tick), if monitoring => {
                let status = session.node_status();
                if session.send(status).await.is_err() {
                    break None;
                }
            }
            // Heartbeat: ping the client, close it if it has been silent too long; keep the user lease.
            _ = heartbeat.tick() => {
                if let Some(lease) = lease.as_mut() {
                    lease.renew_if_due().await;
                }
                if last_heard.elapsed() > limits.client_timeout() {
                    break Some(CloseReason { code: CloseCode::Away, description: Some("idle timeout".into()) });
                }
                if session.ws.ping(b"").await.is_err() {
                    break None;
                }
            }
        }
    };

    for (_, task) in session.streams.drain() {
        task.abort();
    }
    if session.member.is_some() {
        Box::pin(session.leave()).await;
    }
    tracing::debug!(endpoint = endpoint.path(), ?reason, "socket closed");
    let code = reason
        .as_ref()
        .map_or(1006, |r| u16::from(r.code))
        .to_string();
    metrics::gauge!(m::WS_CONNECTIONS_OPEN, "endpoint" => path).decrement(1.0);
    metrics::counter!(m::WS_CONNECTIONS_CLOSED, "endpoint" => path, "code" => code).increment(1);
    let _ = session.ws.close(reason).await;
}

/// A span for a collaboration action; the session events it writes carry its context.
fn collab_span(name: &'static str, traceparent: Option<&str>) -> tracing::Span {
    let span = tracing::info_span!("collab", otel.name = name, trace_id = tracing::field::Empty,);
    telemetry::continue_trace(&span, traceparent);
    span
}

/// Why a client frame is refused by the socket's bucket or its user's (None: it passes). The socket's
/// is checked first, so a socket over its own rate does not use its user's tokens up.
fn over_rate(
    socket: &DefaultDirectRateLimiter,
    user: &DefaultDirectRateLimiter,
    limits: &crate::config::WsArgs,
) -> Option<String> {
    if socket.check().is_err() {
        metrics::counter!(m::REFUSALS, "reason" => "connection_rate").increment(1);
        return Some(format!(
            "more than {} frames/s (burst {}) on this connection: frame dropped; slow down",
            limits.rate_limit_per_sec, limits.rate_limit_burst
        ));
    }
    if user.check().is_err() {
        metrics::counter!(m::REFUSALS, "reason" => "user_rate").increment(1);
        return Some(format!(
            "more than {} frames/s (burst {}) over all your connections: frame dropped; slow down",
            limits.user_rate_limit_per_sec, limits.user_rate_limit_burst
        ));
    }
    None
}

/// The per-connection token bucket (rate and burst of at least 1).
fn rate_limiter(per_sec: u32, burst: u32) -> DefaultDirectRateLimiter {
    let per_sec = std::num::NonZeroU32::new(per_sec.max(1)).unwrap_or(std::num::NonZeroU32::MIN);
    let burst = std::num::NonZeroU32::new(burst.max(1)).unwrap_or(std::num::NonZeroU32::MIN);
    RateLimiter::direct(Quota::per_second(per_sec).allow_burst(burst))
}

/// Writes one frame, giving up after `limit`: Err(None) for a closed socket, Err(Some(())) for a
/// client that took nothing for that long. A write that is accepted at once (the common case) arms
/// no timer.
async fn send_within(
    ws: &mut actix_ws::Session,
    text: ByteString,
    limit: std::time::Duration,
) -> Result<Result<(), actix_ws::Closed>, tokio::time::error::Elapsed> {
    let mut send = std::pin::pin!(ws.text(text));
    if let Some(done) = send.as_mut().now_or_never() {
        return Ok(done);
    }
    tokio::time::timeout(limit, send).await
}

/// An interval whose first tick comes after a random part of `period` (then every `period`).
fn jittered_interval(period: std::time::Duration) -> tokio::time::Interval {
    let offset = period.mul_f64(rand_fraction());
    let mut interval =
        tokio::time::interval_at(tokio::time::Instant::now() + offset, period.max(MIN_PERIOD));
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    interval
}

/// The shortest heartbeat period honoured.
const MIN_PERIOD: std::time::Duration = std::time::Duration::from_millis(1);

/// A fraction in [0, 1) from the random bits of a fresh UUID (no extra dependency).
fn rand_fraction() -> f64 {
    (uuid::Uuid::new_v4().as_u128() as u64 >> 11) as f64 / (1u64 << 53) as f64
}

/// The next tick of an optional interval (never, without one).
async fn tick_of(interval: &mut Option<tokio::time::Interval>) {
    match interval {
        Some(i) => {
            i.tick().await;
        }
        None => std::future::pending().await,
    }
}

fn far_future() -> Instant {
    Instant::now() + std::time::Duration::from_secs(86_400)
}

pub(super) fn close_reason(code: u16) -> CloseReason {
    CloseReason {
        code: CloseCode::from(code),
        description: Some(close::reason(code).into()),
    }
}

impl Session {
    pub(super) async fn send(&mut self, message: ServerMessage) -> Result<(), actix_ws::Closed> {
        self.ws.text(ServerFrame::new(message).to_text()).await
    }

    pub(super) async fn send_error(
        &mut self,
        refusal: Refusal,
        reference: Option<String>,
    ) -> Result<(), actix_ws::Closed> {
        metrics::counter!(m::WS_ERRORS, "code" => refusal.code.as_str()).increment(1);
        let mut message = ServerMessage::error(refusal.code, refusal.message, reference);
        if let (ServerMessage::Error(body), Some((version, text))) = (&mut message, refusal.current)
        {
            body.current_version = Some(version);
            body.current_query = Some(text);
        }
        self.send(message).await
    }

    /// Replaces the connection's token with a fresh one of the same user (extends its expiry).
    fn refresh_token(&mut self, token: &str) -> Result<(), Refusal> {
        if !self.state.auth.is_on() {
            return Err(refuse(
                ErrorCode::BadRequest,
                "authentication is off: nothing to refresh",
            ));
        }
        let fresh = self
            .state
            .auth
            .verify(token)
            .map_err(|e| refuse(ErrorCode::Unauthorized, e.to_string()))?;
        if fresh.user_id != self.identity.user_id {
            return Err(refuse(
                ErrorCode::Forbidden,
                "a refreshed token must be for the same user (`sub`)",
            ));
        }
        self.identity = fresh;
        Ok(())
    }

    /// Counts this socket against its user's connection cap (None: no cap); over it, the client gets
    /// an `error rate_limited` and close 1013 with the reason, and Err.
    async fn open_user_lease(&mut self) -> Result<Option<UserLease>, ()> {
        let limits = &self.state.ws;
        let opened = UserLease::open(
            self.state.bus.clone(),
            &self.identity.user_id,
            &self.state.node_id,
            limits.max_connections_per_user,
            limits.connection_lease(),
        )
        .await;
        let over = match opened {
            Ok(lease) => return Ok(lease),
            Err(over) => over,
        };
        metrics::counter!(m::REFUSALS, "reason" => "user_connections").increment(1);
        let e = refuse(
            ErrorCode::RateLimited,
            format!(
                "you have {} connections open already (the per-user cap): close one, then retry",
                over.max
            ),
        );
        let _ = self.send_error(e, None).await;
        let reason = CloseReason {
            code: CloseCode::from(close::TRY_AGAIN_LATER),
            description: Some("too many connections for this user".into()),
        };
        let _ = self.ws.clone().close(Some(reason)).await;
        Err(())
    }

    fn node_status(&self) -> ServerMessage {
        ServerMessage::NodeStatus(NodeStatus {
            node_id: self.state.node_id.clone(),
            connections: self.state.connections(),
            draining: self.state.is_draining(),
            uptime_secs: self.state.started.elapsed().as_secs(),
            timestamp: now_ms(),
        })
    }

    /// Handles one text frame; `Err` only when the socket is gone.
    async fn handle_text(&mut self, text: &str) -> Result<(), actix_ws::Closed> {
        let frame = match decode_client_frame(text) {
            Ok(frame) => {
                metrics::counter!(m::WS_MESSAGES_IN, "type" => frame.message.type_name())
                    .increment(1);
                frame
            }
            Err(e) => {
                metrics::counter!(m::WS_MESSAGES_IN, "type" => "invalid").increment(1);
                return self
                    .send_error(refuse(e.code, e.message), e.reference)
                    .await;
            }
        };
        let reference = frame.id.clone();
        match self.dispatch(frame).await {
            Ok(Some(reply)) => self.send(reply).await,
            Ok(None) => Ok(()),
            Err(refusal) => self.send_error(refusal, reference).await,
        }
    }

    async fn dispatch(&mut self, frame: ClientFrame) -> Result<Option<ServerMessage>, Refusal> {
        let ClientFrame {
            message,
            id,
            traceparent,
        } = frame;
        match (self.endpoint, message) {
            (_, ClientMessage::Ping(ping)) => Ok(Some(ServerMessage::Pong(Pong {
                timestamp: ping.timestamp,
                server_time: now_ms(),
            }))),
            (Endpoint::Query | Endpoint::Collaboration, ClientMessage::ExecuteQuery(request)) => {
                let span = tracing::info_span!(
                    "gateway.receive",
                    otel.name = "gateway receive execute_query",
                    otel.kind = "server",
                    node = %self.state.node_id,
                    trace_id = tracing::field::Empty,
                );
                telemetry::continue_trace(&span, traceparent.as_deref());
                self.execute(request, id, traceparent)
                    .instrument(span)
                    .await
                    .map(Some)
            }
            (Endpoint::Collaboration, ClientMessage::UpdateQuery(update)) => {
                self.update_query(update)
                    .instrument(collab_span("collab update_query", traceparent.as_deref()))
                    .await?;
                Ok(id.map(|id| ack(Some(id), None)))
            }
            (Endpoint::Collaboration, ClientMessage::MoveCursor(moved)) => {
                self.move_cursor(moved.cursor).await?;
                Ok(None)
            }
            (Endpoint::Collaboration, ClientMessage::ChatMessage(chat)) => {
                let fresh = self
                    .chat(chat.message)
                    .instrument(collab_span("collab chat_message", traceparent.as_deref()))
                    .await?;
                Ok(id.map(|id| ServerMessage::Ack(Ack {
                    id: Some(id),
                    execution_id: None,
                    duplicate: !fresh,
                })))
            }
            (_, ClientMessage::RefreshToken(refresh)) => {
                self.refresh_token(&refresh.token)?;
                Ok(id.map(|id| ack(Some(id), None)))
            }
            (Endpoint::Monitoring, _) => Err(refuse(
                ErrorCode::UnknownType,
                "/ws/monitoring takes ping only",
            )),
            (Endpoint::Query | Endpoint::Data, ClientMessage::UpdateQuery(_) | ClientMessage::MoveCursor(_) | ClientMessage::ChatMessage(_)) => {
                Err(refuse(
                    ErrorCode::UnknownType,
                    "update_query, move_cursor and chat_message belong on /ws/collaboration/{sessionId}",
                ))
            }
            (Endpoint::Collaboration, ClientMessage::CancelQuery(target)) => {
                self.cancel(&target.execution_id).await?;
                Ok(id.map(|id| ack(Some(id), Some(target.execution_id))))
            }
            (Endpoint::Query, ClientMessage::CancelQuery(target)) => {
                self.cancel(&target.execution_id).await?;
                Ok(id.map(|id| ack(Some(id), Some(target.execution_id))))
            }
            (_, ClientMessage::Resume(from) | ClientMessage::Subscribe(from)) => {
                let execution_id = from.execution_id.clone();
                self.follow_existing(from).await?;
                Ok(id.map(|id| ack(Some(id), Some(execution_id))))
            }
            (Endpoint::Data, ClientMessage::ExecuteQuery(_) | ClientMessage::CancelQuery(_)) => {
                Err(refuse(
                    ErrorCode::UnknownType,
                    "execute_query and cancel_query belong on /ws/query; /ws/data takes subscribe, resume and ping",
                ))
            }
        }
    }

    /// `execute_query`: claim the client id, follow the new execution, enqueue the job, acknowledge.
    async fn execute(
        &mut self,
        request: ExecuteQuery,
        client_id: Option<String>,
        traceparent: Option<String>,
    ) -> Result<ServerMessage, Refusal> {
        let limit = self.state.ws.max_query_bytes;
        if request.query.trim().is_empty() {
            return Err(refuse(ErrorCode::BadRequest, "`query` is empty"));
        }
        if request.query.len() > limit {
            return Err(refuse(
                ErrorCode::TooLarge,
                format!(
                    "`query` is {} bytes; the limit is {limit}",
                    request.query.len()
                ),
            ));
        }
        self.check_stream_capacity()?;
        let bus = self.state.bus.clone();
        let execution_id = uuid::Uuid::new_v4().to_string();
        if let Some(client_id) = &client_id {
            let claimed = bus
                .claim_idempotency(&self.identity.user_id, client_id, &execution_id)
                .await
                .map_err(unavailable)?;
            if let Some(existing) = claimed {
                // Seen before: acknowledged again, not run again. The client resumes `existing` if it needs to.
                return Ok(ServerMessage::Ack(Ack {
                    id: Some(client_id.clone()),
                    execution_id: Some(existing),
                    duplicate: true,
                }));
            }
        }
        tracing::Span::current().record("execution_id", execution_id.as_str());
        let enqueue_span = tracing::info_span!(
            "bus.enqueue",
            otel.name = "enqueue job",
            otel.kind = "producer"
        );
        let job = Job {
            execution_id: execution_id.clone(),
            owner: self.identity.user_id.clone(),
            query: request.query,
            options: request.options.unwrap_or_default(),
            // The worker continues the trace from the enqueue span.
            traceparent: telemetry::traceparent_of(&enqueue_span, traceparent.as_deref()),
            enqueued_at_ms: now_ms(),
            session_id: self.member.as_ref().map(|m| m.session_id.clone()),
        };
        let topic = Topic::Execution(execution_id.clone());
        // Subscribe before enqueueing: the first event cannot slip past. In a collaboration session every
        // participant (this one too) follows it when the `shared_execution` event reaches them.
        let followed = match self.member {
            Some(_) => Ok(()),
            None => self.follow(topic.clone(), 0).await,
        };
        let max_per_user = self.state.ws.max_queries_per_user;
        let enqueued = match followed {
            Ok(()) => match bus
                .enqueue(&job, max_per_user)
                .instrument(enqueue_span)
                .await
            {
                Ok(true) => {
                    metrics::counter!(m::QUERIES_ENQUEUED).increment(1);
                    Ok(())
                }
                Ok(false) => {
                    metrics::counter!(m::REFUSALS, "reason" => "user_queries").increment(1);
                    Err(refuse(
                        ErrorCode::RateLimited,
                        format!(
                        "you already have {max_per_user} queries running; wait for one to finish"
                    ),
                    ))
                }
                Err(e) => Err(unavailable(e)),
            },
            Err(e) => Err(e),
        };
        let enqueued = match (enqueued, &self.member) {
            (Ok(()), Some(_)) => self.announce_execution(&job).await,
            (other, _) => other,
        };
        if let Err(refusal) = enqueued {
            if let Some(task) = self.streams.remove(&topic) {
                task.abort();
            }
            if let Some(client_id) = &client_id {
                let _ = bus
                    .release_idempotency(&self.identity.user_id, client_id)
                    .await;
            }
            return Err(refusal);
        }
        Ok(ack(client_id, Some(execution_id)))
    }

    /// The one authorisation of every client message that names an execution (`cancel_query`,
    /// `resume`, `subscribe`): it is allowed to the execution's owner and to users whose token grants
    /// the collaboration session it was run in. Anyone else gets the very `not_found` of an id that
    /// never existed, so nobody can probe which ids exist.
    async fn authorize_execution(&self, execution_id: &str) -> Result<ExecutionInfo, Refusal> {
        let info = self
            .state
            .bus
            .execution_info(execution_id)
            .await
            .map_err(unavailable)?;
        match info {
            Some(info) if self.may_act_on(&info) => Ok(info),
            _ => Err(not_found(execution_id)),
        }
    }

    /// Its owner, or anyone who may join the session it was run in.
    fn may_act_on(&self, info: &ExecutionInfo) -> bool {
        info.owner == self.identity.user_id
            || info
                .session_id
                .as_deref()
                .is_some_and(|s| self.identity.may_join(s))
    }

    async fn cancel(&mut self, execution_id: &str) -> Result<(), Refusal> {
        self.authorize_execution(execution_id).await?;
        let bus = self.state.bus.clone();
        match bus.cancel(execution_id).await.map_err(unavailable)? {
            CancelOutcome::WasQueued => {
                // No worker will ever write this stream: the gateway writes its one and last event.
                let frame = ServerFrame {
                    message: ServerMessage::QueryCancelled(QueryCancelled {
                        execution_id: execution_id.to_owned(),
                        timestamp: now_ms(),
                        reason: None,
                    }),
                    seq: Some(1),
                    traceparent: None,
                };
                let event = BusEvent {
                    seq: 1,
                    terminal: true,
                    frame: ByteString::from(frame.to_text()),
                };
                bus.publish_event(execution_id, &event)
                    .await
                    .map_err(unavailable)
            }
            CancelOutcome::Running => Ok(()),
            CancelOutcome::Finished => Err(refuse(
                ErrorCode::Conflict,
                format!("execution {execution_id} has already finished"),
            )),
            CancelOutcome::NotFound => Err(not_found(execution_id)),
        }
    }

    /// `resume` / `subscribe`: follow an existing execution from `afterSeq`.
    async fn follow_existing(&mut self, from: StreamFrom) -> Result<(), Refusal> {
        self.authorize_execution(&from.execution_id).await?;
        metrics::counter!(m::RESUMES, "kind" => "execution").increment(1);
        let topic = Topic::Execution(from.execution_id);
        if let Some(previous) = self.streams.remove(&topic) {
            // A resume replaces what this socket was following of that execution.
            previous.abort();
        }
        self.check_stream_capacity()?;
        self.follow(topic, from.after_seq.unwrap_or(0)).await
    }

    pub(super) fn check_stream_capacity(&mut self) -> Result<(), Refusal> {
        self.streams.retain(|_, task| !task.is_finished());
        let limit = self.state.ws.max_streams_per_connection;
        if self.streams.len() >= limit {
            return Err(refuse(
                ErrorCode::RateLimited,
                format!(
                    "this connection already follows {limit} executions; wait for one to finish"
                ),
            ));
        }
        Ok(())
    }

    /// Subscribes to the topic's live events (before returning) and starts relaying them.
    pub(super) async fn follow(&mut self, topic: Topic, after_seq: u64) -> Result<(), Refusal> {
        if self.streams.contains_key(&topic) {
            return Ok(());
        }
        let bus = self.state.bus.clone();
        let subscription = bus.subscribe(&topic).await.map_err(unavailable)?;
        // An execution's follower reports what this socket wrote (end-to-end backpressure).
        let follower = match &topic {
            Topic::Execution(id) => Some(Follower::start(
                bus.clone(),
                id.clone(),
                &self.state.node_id,
                after_seq,
            )),
            Topic::Session(_) => None,
        };
        let forward = Forward {
            bus,
            follower,
            topic: topic.clone(),
            subscription,
            after_seq,
            out: self.out.clone(),
            out_bytes: self.out_bytes.clone(),
            budget_total: self.state.ws.outbound_queue_bytes.max(1),
            resync_interval: self.state.ws.resync_interval(),
            replay_batch: self.state.ws.replay_batch.max(1),
            queue_position_interval: self.state.ws.queue_position_interval(),
        };
        let task = actix_web::rt::spawn(forward.run());
        self.streams.insert(topic, task);
        Ok(())
    }
}

fn ack(id: Option<String>, execution_id: Option<String>) -> ServerMessage {
    ServerMessage::Ack(Ack {
        id,
        execution_id,
        duplicate: false,
    })
}

fn not_found(execution_id: &str) -> Refusal {
    refuse(
        ErrorCode::NotFound,
        format!("no execution {execution_id} (never existed, or its events expired)"),
    )
}

pub(super) fn unavailable(e: c2s_shared::bus::BusError) -> Refusal {
    tracing::warn!(error = %e, "bus unavailable");
    refuse(
        ErrorCode::Unavailable,
        "the message bus is unavailable; retry shortly",
    )
}
