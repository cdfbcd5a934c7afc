//! The query messages of `/ws/query` and `/ws/collaboration`: `execute_query`, `cancel_query`,
//! `resume` and `subscribe`.
//!
//! Invariants: a new execution's events are subscribed to before its job is enqueued (the first event
//! cannot slip past); a refused enqueue takes back the subscription and the idempotency claim; every
//! message that names an execution passes [`Queries::authorize`], whose refusal is the very `not_found`
//! of an id that never existed.

use bytestring::ByteString;
use c2s_shared::bus::{BusEvent, CancelOutcome, ExecutionInfo, Job, Topic};
use c2s_shared::codes::ErrorCode;
use c2s_shared::metrics as m;
use c2s_shared::now_ms;
use c2s_shared::protocol::{
    Ack, ExecuteQuery, QueryCancelled, ServerFrame, ServerMessage, StreamFrom,
};
use c2s_shared::telemetry;
use tracing::Instrument;

use super::collab::Member;
use super::refusal::Refusal;
use super::streams::Streams;
use crate::auth::Identity;
use crate::state::AppState;

/// What a query message may touch: the node, who sent it, the socket's streams and its session.
pub struct Queries<'a> {
    pub state: &'a AppState,
    pub identity: &'a Identity,
    pub streams: &'a mut Streams,
    pub member: Option<&'a Member>,
}

/// An `ack` for a client frame `id`, naming the execution it is about.
pub fn ack(id: Option<String>, execution_id: Option<String>) -> ServerMessage {
    ServerMessage::Ack(Ack {
        id,
        execution_id,
        duplicate: false,
    })
}

impl Queries<'_> {
    /// `execute_query`: claim the client id, follow the new execution, enqueue the job, acknowledge.
    pub async fn execute(
        &mut self,
        request: ExecuteQuery,
        client_id: Option<String>,
        traceparent: Option<String>,
    ) -> Result<ServerMessage, Refusal> {
        self.check_query_text(&request.query)?;
        self.streams.check_capacity()?;
        let execution_id = uuid::Uuid::new_v4().to_string();
        if let Some(client_id) = &client_id {
            let claimed = self
                .state
                .bus
                .claim_idempotency(&self.identity.user_id, client_id, &execution_id)
                .await
                .map_err(Refusal::unavailable)?;
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
            session_id: self.member.map(|m| m.session_id.clone()),
        };
        if let Err(refusal) = self.start(&job, enqueue_span).await {
            self.streams.stop(&Topic::Execution(execution_id));
            if let Some(client_id) = &client_id {
                let bus = &self.state.bus;
                let _ = bus
                    .release_idempotency(&self.identity.user_id, client_id)
                    .await;
            }
            return Err(refusal);
        }
        Ok(ack(client_id, Some(execution_id)))
    }

    fn check_query_text(&self, query: &str) -> Result<(), Refusal> {
        if query.trim().is_empty() {
            return Err(Refusal::new(ErrorCode::BadRequest, "`query` is empty"));
        }
        Refusal::check_query_size(query, self.state.ws.max_query_bytes)
    }

    /// Follows the new execution, enqueues its job and, in a session, announces it.
    async fn start(&mut self, job: &Job, enqueue_span: tracing::Span) -> Result<(), Refusal> {
        // Subscribe before enqueueing: the first event cannot slip past. In a collaboration session every
        // participant (this one too) follows it when the `shared_execution` event reaches them.
        if self.member.is_none() {
            let topic = Topic::Execution(job.execution_id.clone());
            self.streams.follow(topic, 0).await?;
        }
        let max_per_user = self.state.ws.max_queries_per_user;
        let enqueued = self
            .state
            .bus
            .enqueue(job, max_per_user)
            .instrument(enqueue_span)
            .await;
        match enqueued {
            Ok(true) => metrics::counter!(m::QUERIES_ENQUEUED).increment(1),
            Ok(false) => {
                metrics::counter!(m::REFUSALS, "reason" => "user_queries").increment(1);
                return Err(Refusal::new(
                    ErrorCode::RateLimited,
                    format!(
                        "you already have {max_per_user} queries running; wait for one to finish"
                    ),
                ));
            }
            Err(e) => return Err(Refusal::unavailable(e)),
        }
        match self.member {
            Some(member) => member.announce_execution(self.state, job).await,
            None => Ok(()),
        }
    }

    /// The one authorisation of every client message that names an execution (`cancel_query`,
    /// `resume`, `subscribe`): it is allowed to the execution's owner and to users whose token grants
    /// the collaboration session it was run in. Anyone else gets the very `not_found` of an id that
    /// never existed, so nobody can probe which ids exist.
    async fn authorize(&self, execution_id: &str) -> Result<ExecutionInfo, Refusal> {
        let info = self
            .state
            .bus
            .execution_info(execution_id)
            .await
            .map_err(Refusal::unavailable)?;
        match info {
            Some(info) if self.may_act_on(&info) => Ok(info),
            _ => Err(Refusal::no_execution(execution_id)),
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

    /// `cancel_query`: a queued job is cancelled here (its one event written by the gateway), a
    /// running one by its worker.
    pub async fn cancel(&mut self, execution_id: &str) -> Result<(), Refusal> {
        self.authorize(execution_id).await?;
        let bus = &self.state.bus;
        match bus
            .cancel(execution_id)
            .await
            .map_err(Refusal::unavailable)?
        {
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
                    .map_err(Refusal::unavailable)
            }
            CancelOutcome::Running => Ok(()),
            CancelOutcome::Finished => Err(Refusal::new(
                ErrorCode::Conflict,
                format!("execution {execution_id} has already finished"),
            )),
            CancelOutcome::NotFound => Err(Refusal::no_execution(execution_id)),
        }
    }

    /// `resume` / `subscribe`: follow an existing execution from `afterSeq`.
    pub async fn follow_existing(&mut self, from: StreamFrom) -> Result<(), Refusal> {
        self.authorize(&from.execution_id).await?;
        metrics::counter!(m::RESUMES, "kind" => "execution").increment(1);
        let topic = Topic::Execution(from.execution_id);
        // A resume replaces what this socket was following of that execution.
        self.streams.stop(&topic);
        self.streams.check_capacity()?;
        self.streams
            .follow(topic, from.after_seq.unwrap_or(0))
            .await
    }
}
