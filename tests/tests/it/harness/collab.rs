//! Collaboration sessions (`/ws/collaboration/{sessionId}`): [`Collab`], a participant's socket, and
//! the frames it sends.

use std::collections::{BTreeSet, VecDeque};
use std::time::Duration;

use serde_json::{json, Value};
use tokio::time::Instant;

use super::*;

pub fn is_session_event(f: &Value) -> bool {
    SESSION_EVENT_TYPES.contains(&ty(f))
}

/// Percent-encodes a query-string value (unreserved characters stay as they are).
pub fn url_encode(s: &str) -> String {
    let mut out = String::new();
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// `/ws/collaboration/<session>?user=…&name=…[&afterSeq=…]`.
pub fn collab_path(session: &str, user: &str, name: &str, after_seq: Option<u64>) -> String {
    let mut p = format!(
        "/ws/collaboration/{session}?user={}&name={}",
        url_encode(user),
        url_encode(name)
    );
    if let Some(s) = after_seq {
        p.push_str(&format!("&afterSeq={s}"));
    }
    p
}

/// A unique session id for a test.
pub fn new_session_id(tag: &str) -> String {
    format!("{tag}-{}", uuid::Uuid::new_v4().simple())
}

/// Tries a WebSocket upgrade; Ok on success (the connection is dropped), Err(status) when the server
/// answered the upgrade request with an HTTP status instead.
pub async fn ws_upgrade_status(url: &str) -> Result<(), u16> {
    use tokio_tungstenite::tungstenite::Error as WsError;
    match tokio::time::timeout(DEFAULT_TIMEOUT, tokio_tungstenite::connect_async(url)).await {
        Err(_) => panic!("timed out connecting to {url}"),
        Ok(Ok(_)) => Ok(()),
        Ok(Err(WsError::Http(resp))) => Err(resp.status().as_u16()),
        Ok(Err(e)) => panic!("WebSocket connect to {url} failed without an HTTP status: {e}"),
    }
}

/// One participant of a collaboration session: a [`Client`] plus the session bookkeeping. Every frame read
/// is classified: session events (their `seq` must continue the session's sequence without a gap, their
/// `sessionId` must be this session's), execution events (kept in `exec_frames`), and replies (`ack`,
/// `error`, `pong`, kept in `replies` until taken).
pub struct Collab {
    pub client: Client,
    pub session_id: String,
    /// The `session_state` frame received on joining.
    pub state: Value,
    pub participant_id: String,
    pub snapshot_seq: u64,
    /// The session seq the events started after (`afterSeq` if given, else `snapshotSeq`).
    pub start_seq: u64,
    /// The last session seq received.
    pub last_seq: u64,
    /// Every session event received, in order.
    pub events: Vec<Value>,
    /// Index of the next session event not consumed by `wait_event`.
    next: usize,
    /// `ack`, `error`, `pong` frames not taken yet.
    pub replies: VecDeque<Value>,
    /// Every execution event received (shared executions), in order.
    pub exec_frames: Vec<Value>,
    /// Every frame received after `session_state`, in order (for ordering checks).
    pub log: Vec<Value>,
}

impl Cluster {
    pub fn gateway_name(&self, i: usize) -> String {
        self.gateways[i].name.clone()
    }

    /// Joins `session` on gateway `i` as `user` / `name`; checks the `session_state` it gets first.
    pub async fn collab(&self, i: usize, session: &str, user: &str, name: &str) -> Collab {
        self.collab_after(i, session, user, name, None).await
    }

    /// Like `collab`, with `afterSeq` (replay of the session events after it).
    pub async fn collab_after(
        &self,
        i: usize,
        session: &str,
        user: &str,
        name: &str,
        after_seq: Option<u64>,
    ) -> Collab {
        let path = collab_path(session, user, name, after_seq);
        let mut client = self.client(i, &path).await;
        client.label = format!(
            "{}/{}/{}[{user}]",
            self.name, self.gateways[i].name, session
        );
        Collab::from_client(
            client,
            session,
            user,
            name,
            &self.gateways[i].name,
            after_seq,
        )
        .await
    }
}

impl Collab {
    /// Reads and checks the first frame (`session_state`) of a freshly connected collaboration socket.
    pub async fn from_client(
        mut client: Client,
        session: &str,
        user: &str,
        name: &str,
        node: &str,
        after_seq: Option<u64>,
    ) -> Collab {
        let state = client.recv_json().await;
        let label = client.label.clone();
        assert_eq!(
            ty(&state),
            "session_state",
            "{label}: the first frame must be session_state, got {}",
            short(&state)
        );
        assert!(
            state.get("seq").is_none(),
            "{label}: session_state carries no top-level seq: {}",
            short(&state)
        );
        let p = &state["payload"];
        assert_eq!(p["sessionId"], json!(session), "{label}: {}", short(&state));
        let participant_id = p["participantId"]
            .as_str()
            .unwrap_or_else(|| panic!("{label}: session_state.participantId: {}", short(&state)))
            .to_owned();
        assert!(
            participant_id.starts_with(&format!("{user}#"))
                && participant_id.len() > user.len() + 1,
            "{label}: the participant id must be `<userId>#<random>`, got {participant_id:?}"
        );
        let snapshot_seq = p["snapshotSeq"]
            .as_u64()
            .unwrap_or_else(|| panic!("{label}: session_state.snapshotSeq: {}", short(&state)));
        assert!(
            snapshot_seq >= 1,
            "{label}: the joiner's own participant_joined is an event, so snapshotSeq >= 1: {}",
            short(&state)
        );
        let participants = p["participants"]
            .as_array()
            .unwrap_or_else(|| panic!("{label}: session_state.participants: {}", short(&state)));
        let me: Vec<&Value> = participants
            .iter()
            .filter(|x| x["id"] == json!(participant_id))
            .collect();
        assert_eq!(
            me.len(),
            1,
            "{label}: the joiner is listed exactly once among the participants: {}",
            short(&state)
        );
        assert_eq!(me[0]["userId"], json!(user), "{label}: {}", short(me[0]));
        assert_eq!(me[0]["name"], json!(name), "{label}: {}", short(me[0]));
        assert_eq!(me[0]["nodeId"], json!(node), "{label}: {}", short(me[0]));
        let ids: BTreeSet<&str> = participants
            .iter()
            .filter_map(|x| x["id"].as_str())
            .collect();
        assert_eq!(
            ids.len(),
            participants.len(),
            "{label}: participant ids are unique: {}",
            short(&state)
        );
        let version = p["queryVersion"]
            .as_u64()
            .unwrap_or_else(|| panic!("{label}: session_state.queryVersion: {}", short(&state)));
        assert!(p["currentQuery"].is_string(), "{label}: {}", short(&state));
        if version == 0 {
            assert_eq!(p["currentQuery"], json!(""), "{label}: {}", short(&state));
            assert!(p["queryAuthor"].is_null(), "{label}: {}", short(&state));
        } else {
            assert!(p["queryAuthor"].is_string(), "{label}: {}", short(&state));
        }
        assert!(p["cursors"].is_object(), "{label}: {}", short(&state));
        assert!(p["chatMessages"].is_array(), "{label}: {}", short(&state));
        let start_seq = after_seq.unwrap_or(snapshot_seq).min(snapshot_seq);
        Collab {
            client,
            session_id: session.to_owned(),
            state,
            participant_id,
            snapshot_seq,
            start_seq,
            last_seq: start_seq,
            events: Vec::new(),
            next: 0,
            replies: VecDeque::new(),
            exec_frames: Vec::new(),
            log: Vec::new(),
        }
    }

    pub fn label(&self) -> &str {
        &self.client.label
    }

    /// Reads one frame (waiting until `deadline`) and files it; false on timeout.
    pub async fn pump(&mut self, deadline: Instant) -> bool {
        let wait = deadline.saturating_duration_since(Instant::now());
        let Some(f) = self.client.try_recv_json(wait).await else {
            return false;
        };
        self.file(f);
        true
    }

    fn file(&mut self, f: Value) {
        let label = self.client.label.clone();
        if is_session_event(&f) {
            let seq = f.get("seq").and_then(Value::as_u64).unwrap_or_else(|| {
                panic!(
                    "{label}: a session event without integer seq: {}",
                    short(&f)
                )
            });
            assert_eq!(
                seq,
                self.last_seq + 1,
                "{label}: session seq must continue {} without gap or repeat, got {}; events so far: {}",
                self.last_seq,
                short(&f),
                describe(&self.events[self.events.len().saturating_sub(12)..])
            );
            assert_eq!(
                f["payload"]["sessionId"],
                json!(self.session_id),
                "{label}: session event of another session: {}",
                short(&f)
            );
            self.last_seq = seq;
            self.events.push(f.clone());
        } else if is_event(&f) && exec_of(&f).is_some() {
            self.exec_frames.push(f.clone());
        } else if matches!(ty(&f), "ack" | "error" | "pong") {
            assert!(
                f.get("seq").is_none(),
                "{label}: a reply carries no seq: {}",
                short(&f)
            );
            self.replies.push_back(f.clone());
        } else {
            panic!(
                "{label}: unexpected frame on a collaboration socket: {}",
                short(&f)
            );
        }
        self.log.push(f);
    }

    /// Reads everything that arrives within `d`.
    pub async fn settle(&mut self, d: Duration) {
        let deadline = Instant::now() + d;
        while self.pump(deadline).await {}
    }

    /// Pumps until `cond(self)` holds; panics after `within`.
    pub async fn wait_for(
        &mut self,
        what: &str,
        within: Duration,
        mut cond: impl FnMut(&Collab) -> bool,
    ) {
        let start = Instant::now();
        let deadline = start + within;
        while !cond(self) {
            if !self.pump(deadline).await && !cond(self) {
                panic!(
                    "{}: timed out after {:?} waiting for {what}; session events: {}; replies: {:?}",
                    self.client.label,
                    start.elapsed(),
                    describe(&self.events[self.events.len().saturating_sub(20)..]),
                    self.replies.iter().map(short).collect::<Vec<_>>()
                );
            }
        }
    }

    /// Consumes session events until one matches `pred` (the skipped ones stay in `events`); returns it.
    pub async fn wait_event(
        &mut self,
        what: &str,
        within: Duration,
        mut pred: impl FnMut(&Value) -> bool,
    ) -> Value {
        let start = Instant::now();
        let deadline = start + within;
        loop {
            while self.next < self.events.len() {
                let i = self.next;
                self.next += 1;
                if pred(&self.events[i]) {
                    return self.events[i].clone();
                }
            }
            if !self.pump(deadline).await {
                panic!(
                    "{}: timed out after {:?} waiting for {what}; session events so far: {}",
                    self.client.label,
                    start.elapsed(),
                    describe(&self.events[self.events.len().saturating_sub(20)..])
                );
            }
        }
    }

    /// Session events of type `t` received so far.
    pub fn events_of(&self, t: &str) -> Vec<&Value> {
        self.events.iter().filter(|f| ty(f) == t).collect()
    }

    /// Takes the first reply matching `pred`, pumping until it arrives.
    pub async fn reply(
        &mut self,
        what: &str,
        within: Duration,
        mut pred: impl FnMut(&Value) -> bool,
    ) -> Value {
        let start = Instant::now();
        let deadline = start + within;
        loop {
            if let Some(pos) = self.replies.iter().position(&mut pred) {
                return self.replies.remove(pos).expect("in range");
            }
            if !self.pump(deadline).await {
                panic!(
                    "{}: timed out after {:?} waiting for {what}; replies: {:?}; session events: {}",
                    self.client.label,
                    start.elapsed(),
                    self.replies.iter().map(short).collect::<Vec<_>>(),
                    describe(&self.events[self.events.len().saturating_sub(20)..])
                );
            }
        }
    }

    /// The `ack` or the `error` answering client frame id `id`.
    pub async fn answer(&mut self, id: &str, within: Duration) -> Value {
        self.reply(&format!("the answer to frame {id}"), within, |f| {
            (ty(f) == "ack" && f["payload"]["id"] == json!(id))
                || (ty(f) == "error" && f["payload"]["ref"] == json!(id))
        })
        .await
    }

    /// The `ack` of frame `id`; panics if an `error` answers it instead.
    pub async fn ack(&mut self, id: &str) -> Value {
        let f = self.answer(id, DEFAULT_TIMEOUT).await;
        assert_eq!(
            ty(&f),
            "ack",
            "{}: expected the ack of {id}, got {}",
            self.client.label,
            short(&f)
        );
        f
    }

    /// The `error` answering frame `id`, with code `code`.
    pub async fn expect_error(&mut self, id: &str, code: &str) -> Value {
        let f = self.answer(id, DEFAULT_TIMEOUT).await;
        assert_eq!(
            (ty(&f), f["payload"]["code"].as_str()),
            ("error", Some(code)),
            "{}: expected error {code} answering {id}, got {}",
            self.client.label,
            short(&f)
        );
        assert!(
            f["payload"]["message"]
                .as_str()
                .is_some_and(|m| !m.is_empty()),
            "{}: an error says what to fix: {}",
            self.client.label,
            short(&f)
        );
        f
    }

    /// Panics if any `error` frame was received and not taken.
    pub fn assert_no_errors(&self) {
        let errors: Vec<String> = self
            .replies
            .iter()
            .filter(|f| ty(f) == "error")
            .map(short)
            .collect();
        assert!(
            errors.is_empty(),
            "{}: unexpected error frames: {errors:?}",
            self.client.label
        );
    }

    pub async fn send(&mut self, v: Value) {
        self.client.send_json(v).await;
    }

    pub async fn chat(&mut self, frame_id: Option<&str>, msg_id: &str, content: &str) {
        self.send(chat_frame(frame_id, msg_id, content)).await;
    }

    pub async fn update_query(&mut self, frame_id: Option<&str>, query: &str, base: Option<u64>) {
        self.send(update_query_frame(frame_id, query, base)).await;
    }

    pub async fn move_cursor(&mut self, cursor: Value) {
        self.send(json!({"type": "move_cursor", "payload": {"cursor": cursor}}))
            .await;
    }

    /// `execute_query` on the collaboration socket; returns the execution id from its ack.
    pub async fn execute(&mut self, query: &str, options: Option<Value>, id: &str) -> String {
        self.send(execute_query_frame(query, options, Some(id)))
            .await;
        let ack = self.ack(id).await;
        exec_of(&ack)
            .unwrap_or_else(|| {
                panic!(
                    "{}: the ack of execute_query names the execution: {}",
                    self.client.label,
                    short(&ack)
                )
            })
            .to_owned()
    }

    /// The events of execution `exec` received so far.
    pub fn exec_events(&self, exec: &str) -> Vec<Value> {
        self.exec_frames
            .iter()
            .filter(|f| exec_of(f) == Some(exec))
            .cloned()
            .collect()
    }

    /// Pumps until the terminal event of `exec` arrived; returns all its events.
    pub async fn collect_execution(&mut self, exec: &str, within: Duration) -> Vec<Value> {
        let e = exec.to_owned();
        self.wait_for(&format!("the end of execution {exec}"), within, |c| {
            c.exec_frames
                .iter()
                .any(|f| exec_of(f) == Some(e.as_str()) && is_terminal(f))
        })
        .await;
        self.exec_events(exec)
    }

    /// App-level ping; waits for its pong.
    pub async fn ping(&mut self, ts: i64) -> Value {
        self.send(json!({"type": "ping", "payload": {"timestamp": ts}}))
            .await;
        let f = self
            .reply("a pong", DEFAULT_TIMEOUT, |f| {
                ty(f) == "pong" && f["payload"]["timestamp"] == json!(ts)
            })
            .await;
        assert!(
            f["payload"]["serverTime"]
                .as_i64()
                .is_some_and(|t| t > 1_600_000_000_000),
            "{}: pong.serverTime: {}",
            self.client.label,
            short(&f)
        );
        f
    }

    pub async fn close(self) {
        self.client.close().await;
    }
}

pub fn chat_frame(frame_id: Option<&str>, msg_id: &str, content: &str) -> Value {
    let mut f =
        json!({"type": "chat_message", "payload": {"message": {"id": msg_id, "content": content}}});
    if let Some(id) = frame_id {
        f["id"] = json!(id);
    }
    f
}

pub fn update_query_frame(frame_id: Option<&str>, query: &str, base: Option<u64>) -> Value {
    let mut f = json!({"type": "update_query", "payload": {"query": query}});
    if let Some(b) = base {
        f["payload"]["baseVersion"] = json!(b);
    }
    if let Some(id) = frame_id {
        f["id"] = json!(id);
    }
    f
}
