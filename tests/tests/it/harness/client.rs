//! [`Client`]: a tokio-tungstenite client of `/ws/query` (and the other endpoints) that validates every
//! frame it receives and stashes what a wait skipped.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use tokio::net::TcpStream;
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::protocol::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

use super::*;

type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;

enum Incoming {
    Frame(Value),
    Closed,
    Timeout,
}

pub struct Client {
    pub label: String,
    ws: Ws,
    /// The gateway node that accepted the socket (its `x-c2s-node` response header): tells which node a
    /// load balancer picked.
    pub node: Option<String>,
    validator: Option<Arc<SchemaValidator>>,
    /// Frames read while looking for something else, handed out first by `recv_json`.
    stash: VecDeque<Value>,
    /// Short text of the last frames received, for error messages.
    recent: VecDeque<String>,
    close_code: Option<u16>,
    close_error: Option<String>,
    closed: bool,
    /// Wait for one frame.
    pub timeout: Duration,
    /// Every frame received so far (validated), in order.
    pub received: usize,
    /// `query_progress` step `queued` frames (the gateway's, without `seq`), set apart from the
    /// numbered stream the other helpers check (tests/tests/it/fairness.rs reads them).
    pub queue_positions: Vec<Value>,
}

/// A queued job's place, sent by its gateway outside the execution's numbered stream.
pub fn is_queue_position(f: &Value) -> bool {
    ty(f) == "query_progress" && f.get("seq").is_none() && f["payload"]["step"] == "queued"
}

pub fn execute_query_frame(query: &str, options: Option<Value>, id: Option<&str>) -> Value {
    let mut f = json!({"type": "execute_query", "payload": {"query": query}});
    if let Some(o) = options {
        f["payload"]["options"] = o;
    }
    if let Some(id) = id {
        f["id"] = json!(id);
    }
    f
}

impl Client {
    /// Connects; with a validator every received frame is checked against the server schema.
    pub async fn connect(url: &str, validator: Option<Arc<SchemaValidator>>) -> Client {
        let connected =
            tokio::time::timeout(DEFAULT_TIMEOUT, tokio_tungstenite::connect_async(url)).await;
        let (ws, response) = match connected {
            Err(_) => panic!("timed out connecting to {url}"),
            Ok(Err(e)) => panic!("WebSocket connect to {url} failed: {e}"),
            Ok(Ok(connected)) => connected,
        };
        let node = response
            .headers()
            .get("x-c2s-node")
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        Client {
            label: url.to_owned(),
            ws,
            node,
            validator,
            stash: VecDeque::new(),
            recent: VecDeque::new(),
            close_code: None,
            close_error: None,
            closed: false,
            timeout: DEFAULT_TIMEOUT,
            received: 0,
            queue_positions: Vec::new(),
        }
    }

    fn recent_text(&self) -> String {
        if self.recent.is_empty() {
            return "(none)".into();
        }
        self.recent
            .iter()
            .cloned()
            .collect::<Vec<_>>()
            .join("\n    ")
    }

    fn closed_msg(&self, waiting_for: &str) -> String {
        format!(
            "{}: connection closed (close code {:?}, error {:?}) while waiting for {waiting_for}; last frames:\n    {}",
            self.label,
            self.close_code,
            self.close_error,
            self.recent_text()
        )
    }

    fn timeout_msg(&self, waiting_for: &str, waited: Duration) -> String {
        format!(
            "{}: timed out after {waited:?} waiting for {waiting_for}; last frames received:\n    {}",
            self.label,
            self.recent_text()
        )
    }

    async fn next_incoming(&mut self, deadline: Instant) -> Incoming {
        loop {
            if self.closed {
                return Incoming::Closed;
            }
            let msg = match tokio::time::timeout_at(deadline, self.ws.next()).await {
                Err(_) => return Incoming::Timeout,
                Ok(None) => {
                    self.closed = true;
                    continue;
                }
                Ok(Some(Err(e))) => {
                    self.closed = true;
                    self.close_error = Some(e.to_string());
                    continue;
                }
                Ok(Some(Ok(m))) => m,
            };
            if let Some(v) = self.on_message(msg) {
                return Incoming::Frame(v);
            }
        }
    }

    /// Handles one WebSocket message: a text frame is parsed, validated and returned; a close frame is
    /// recorded; control frames are ignored.
    fn on_message(&mut self, msg: Message) -> Option<Value> {
        match msg {
            Message::Text(t) => {
                let text: &str = t.as_str();
                let v: Value = serde_json::from_str(text).unwrap_or_else(|e| {
                    panic!(
                        "{}: server sent a text frame that is not JSON ({e}): {}",
                        self.label,
                        tail_chars(text, 400)
                    )
                });
                if let Some(val) = &self.validator {
                    val.assert_valid(&v);
                }
                if is_queue_position(&v) {
                    self.queue_positions.push(v);
                    return None;
                }
                self.received += 1;
                self.recent.push_back(short(&v));
                if self.recent.len() > 6 {
                    self.recent.pop_front();
                }
                Some(v)
            }
            Message::Binary(b) => panic!(
                "{}: server sent a binary frame ({} bytes); the protocol is JSON text only",
                self.label,
                b.len()
            ),
            Message::Close(cf) => {
                self.close_code = Some(cf.as_ref().map(|c| u16::from(c.code)).unwrap_or(1005));
                self.closed = true;
                None
            }
            Message::Ping(_) | Message::Pong(_) | Message::Frame(_) => None,
        }
    }

    /// Sends `frames` one after another (frame i at start + i * `gap`; back to back when zero) while
    /// reading whatever the server sends meanwhile, so a burst cannot stall on a full socket. The frames
    /// read are validated and stashed, in order, for the usual `recv_*` calls. Returns the time from the
    /// first send to the end of the last. Panics if a send fails or the whole burst takes longer than `DEFAULT_TIMEOUT` plus the gaps.
    pub async fn send_all_draining(&mut self, frames: &[Value], gap: Duration) -> Duration {
        let mut got: Vec<Message> = Vec::new();
        let mut read_error: Option<String> = None;
        let mut ended = false;
        let bound = DEFAULT_TIMEOUT + gap * frames.len() as u32;
        let sent: Result<Duration, String> = {
            let (mut sink, mut stream) = (&mut self.ws).split();
            let send = async {
                let start = Instant::now();
                // A fixed schedule (frame i at start + i * gap), so timer granularity does not stretch it.
                let mut pace = (!gap.is_zero()).then(|| {
                    let mut t = tokio::time::interval(gap);
                    t.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
                    t
                });
                for (i, f) in frames.iter().enumerate() {
                    if let Some(t) = pace.as_mut() {
                        t.tick().await;
                    }
                    sink.send(Message::text(f.to_string())).await.map_err(|e| {
                        format!("sending frame {i} of {} failed: {e}", frames.len())
                    })?;
                }
                Ok(start.elapsed())
            };
            let send = tokio::time::timeout(bound, send);
            tokio::pin!(send);
            loop {
                tokio::select! {
                    r = &mut send => {
                        break r.unwrap_or_else(|_| Err(format!("sending {} frames took longer than {bound:?}", frames.len())));
                    }
                    m = stream.next(), if !ended => match m {
                        Some(Ok(m)) => got.push(m),
                        Some(Err(e)) => {
                            read_error = Some(e.to_string());
                            ended = true;
                        }
                        None => ended = true,
                    },
                }
            }
        };
        for m in got {
            if let Some(v) = self.on_message(m) {
                self.stash.push_back(v);
            }
        }
        if ended {
            self.closed = true;
            if read_error.is_some() {
                self.close_error = read_error;
            }
        }
        sent.unwrap_or_else(|e| {
            panic!(
                "{}: {e}; last frames:\n    {}",
                self.label,
                self.recent_text()
            )
        })
    }

    /// Sends a JSON frame.
    pub async fn send_json(&mut self, v: Value) {
        self.send_text(&v.to_string()).await;
    }

    /// Sends raw text (for malformed frames).
    pub async fn send_text(&mut self, text: &str) {
        let sent = tokio::time::timeout(
            DEFAULT_TIMEOUT,
            self.ws.send(Message::text(text.to_owned())),
        )
        .await;
        match sent {
            Err(_) => panic!("{}: send timed out", self.label),
            Ok(Err(e)) => panic!("{}: send failed: {e}", self.label),
            Ok(Ok(())) => {}
        }
    }

    /// Sends raw text; returns false instead of panicking if the connection is already gone (for frames
    /// the server may refuse before reading them whole).
    pub async fn send_text_lenient(&mut self, text: &str) -> bool {
        matches!(
            tokio::time::timeout(
                DEFAULT_TIMEOUT,
                self.ws.send(Message::text(text.to_owned()))
            )
            .await,
            Ok(Ok(()))
        )
    }

    /// The next frame (stashed first), waiting at most `self.timeout`.
    pub async fn recv_json(&mut self) -> Value {
        let d = self.timeout;
        self.recv_json_timeout(d).await
    }

    pub async fn recv_json_timeout(&mut self, d: Duration) -> Value {
        match self.try_recv_json(d).await {
            Some(v) => v,
            None => panic!("{}", self.timeout_msg("a frame", d)),
        }
    }

    /// The next frame, or None if none arrives within `d`; panics if the connection closes.
    pub async fn try_recv_json(&mut self, d: Duration) -> Option<Value> {
        if let Some(v) = self.stash.pop_front() {
            return Some(v);
        }
        match self.next_incoming(Instant::now() + d).await {
            Incoming::Frame(v) => Some(v),
            Incoming::Timeout => None,
            Incoming::Closed => panic!("{}", self.closed_msg("a frame")),
        }
    }

    /// Every frame up to and including the first one matching `pred` (each frame waited for at most
    /// `self.timeout`).
    pub async fn recv_until(
        &mut self,
        what: &str,
        mut pred: impl FnMut(&Value) -> bool,
    ) -> Vec<Value> {
        let mut out = Vec::new();
        loop {
            let f = match self.try_recv_json(self.timeout).await {
                Some(f) => f,
                None => panic!(
                    "{}\n  (frames so far while waiting: {})",
                    self.timeout_msg(what, self.timeout),
                    describe(&out)
                ),
            };
            let stop = pred(&f);
            out.push(f);
            if stop {
                return out;
            }
        }
    }

    /// Everything that arrives within `d` (stashed frames first). Panics if the connection closes.
    pub async fn collect_for(&mut self, d: Duration) -> Vec<Value> {
        let mut out: Vec<Value> = self.stash.drain(..).collect();
        let deadline = Instant::now() + d;
        loop {
            match self.next_incoming(deadline).await {
                Incoming::Frame(f) => out.push(f),
                Incoming::Timeout => return out,
                Incoming::Closed => panic!("{}", self.closed_msg("frames during a quiet period")),
            }
        }
    }

    /// Events of `exec` up to and including the first one matching `pred`. Frames of other executions and
    /// non-event frames are stashed for later. `total` bounds the whole wait (else each frame waits at most
    /// `self.timeout`).
    pub async fn recv_events_until(
        &mut self,
        exec: &str,
        total: Option<Duration>,
        mut pred: impl FnMut(&Value) -> bool,
    ) -> Vec<Value> {
        let mut out = Vec::new();
        let mut keep = VecDeque::new();
        let mut done = false;
        while let Some(f) = self.stash.pop_front() {
            if !done && is_event_of(&f, exec) {
                done = pred(&f);
                out.push(f);
            } else {
                keep.push_back(f);
            }
        }
        self.stash = keep;
        if done {
            return out;
        }
        let start = Instant::now();
        let overall = total.map(|d| start + d);
        loop {
            let per_frame = Instant::now() + self.timeout;
            let deadline = overall.map_or(per_frame, |o| o.min(per_frame));
            match self.next_incoming(deadline).await {
                Incoming::Frame(f) if is_event_of(&f, exec) => {
                    let stop = pred(&f);
                    out.push(f);
                    if stop {
                        return out;
                    }
                }
                Incoming::Frame(f) => self.stash.push_back(f),
                Incoming::Timeout => panic!(
                    "{}\n  events of {exec} so far: {}",
                    self.timeout_msg(&format!("events of execution {exec}"), start.elapsed()),
                    describe(&out)
                ),
                Incoming::Closed => panic!(
                    "{}\n  events of {exec} so far: {}",
                    self.closed_msg(&format!("events of execution {exec}")),
                    describe(&out)
                ),
            }
        }
    }

    /// Events of `exec` until (and including) its terminal event.
    pub async fn collect_execution(&mut self, exec: &str) -> Vec<Value> {
        self.recv_events_until(exec, None, is_terminal).await
    }

    /// Like `collect_execution`, but the terminal event must arrive within `total`.
    pub async fn collect_execution_within(&mut self, exec: &str, total: Duration) -> Vec<Value> {
        self.recv_events_until(exec, Some(total), is_terminal).await
    }

    /// Waits for the `ack` of client id `id` (or the next ack without an id). Non-ack frames are stashed;
    /// an `error` frame panics.
    pub async fn recv_ack(&mut self, id: Option<&str>) -> Value {
        let matches =
            |f: &Value| ty(f) == "ack" && f["payload"].get("id").and_then(Value::as_str) == id;
        if let Some(pos) = self.stash.iter().position(matches) {
            return self.stash.remove(pos).expect("position is in range");
        }
        let start = Instant::now();
        let deadline = start + self.timeout;
        loop {
            match self.next_incoming(deadline).await {
                Incoming::Frame(f) if matches(&f) => {
                    let exec = exec_of(&f).unwrap_or("");
                    assert!(
                        !exec.is_empty(),
                        "{}: ack of execute_query without a payload.executionId: {}",
                        self.label,
                        short(&f)
                    );
                    assert!(
                        f.get("seq").is_none(),
                        "an ack carries no seq: {}",
                        short(&f)
                    );
                    return f;
                }
                Incoming::Frame(f) if ty(&f) == "error" || ty(&f) == "ack" => panic!(
                    "{}: expected the ack of id {id:?}, got {}",
                    self.label,
                    short(&f)
                ),
                Incoming::Frame(f) => self.stash.push_back(f),
                Incoming::Timeout => {
                    panic!(
                        "{}",
                        self.timeout_msg(&format!("the ack of id {id:?}"), start.elapsed())
                    )
                }
                Incoming::Closed => panic!("{}", self.closed_msg(&format!("the ack of id {id:?}"))),
            }
        }
    }

    /// Sends `execute_query`, waits for its ack, checks the ack came before any event of the execution and
    /// is not a duplicate; returns the execution id.
    pub async fn execute(
        &mut self,
        query: &str,
        options: Option<Value>,
        id: Option<&str>,
    ) -> String {
        self.send_json(execute_query_frame(query, options, id))
            .await;
        let ack = self.recv_ack(id).await;
        assert!(
            ack["payload"]
                .get("duplicate")
                .is_none_or(|d| d == &json!(false)),
            "{}: the first ack of id {id:?} says duplicate: {}",
            self.label,
            short(&ack)
        );
        let exec = exec_of(&ack).expect("checked in recv_ack").to_owned();
        if let Some(early) = self
            .stash
            .iter()
            .find(|f| exec_of(f) == Some(exec.as_str()))
        {
            panic!(
                "{}: an event of execution {exec} arrived before its ack: {}",
                self.label,
                short(early)
            );
        }
        exec
    }

    /// Runs [`PACED_QUERY`] (chunks of 1000 rows, arrays) and reads its events until `chunks` data chunks
    /// arrived; asserts it is still streaming. Returns the execution id and the events so far.
    pub async fn start_paced_stream(&mut self, id: &str, chunks: u32) -> (String, Vec<Value>) {
        let exec = self
            .execute(
                PACED_QUERY,
                Some(json!({"chunkSize": 1000, "rowFormat": "arrays", "timeoutMs": 120_000})),
                Some(id),
            )
            .await;
        let mut seen = 0;
        let frames = self
            .recv_events_until(&exec, Some(Duration::from_secs(60)), |f| {
                seen += u32::from(ty(f) == "data_chunk");
                seen >= chunks || is_terminal(f)
            })
            .await;
        assert!(
            !is_terminal(frames.last().expect("non-empty")),
            "scenario check: the query must still be streaming after {chunks} chunks: {}",
            describe(&frames)
        );
        (exec, frames)
    }

    pub async fn cancel(&mut self, exec: &str) {
        self.send_json(json!({"type": "cancel_query", "payload": {"executionId": exec}}))
            .await;
    }

    pub async fn resume(&mut self, exec: &str, after_seq: u64) {
        self.send_json(
            json!({"type": "resume", "payload": {"executionId": exec, "afterSeq": after_seq}}),
        )
        .await;
    }

    /// `subscribe` (for `/ws/data`); `after_seq` None leaves the field out.
    pub async fn subscribe(&mut self, exec: &str, after_seq: Option<u64>) {
        let mut payload = json!({"executionId": exec});
        if let Some(s) = after_seq {
            payload["afterSeq"] = json!(s);
        }
        self.send_json(json!({"type": "subscribe", "payload": payload}))
            .await;
    }

    /// Waits for a `pong` echoing `ts` (execution events meanwhile are stashed; anything else panics).
    pub async fn expect_pong(&mut self, ts: &Value) -> Value {
        let start = Instant::now();
        let deadline = start + self.timeout;
        loop {
            let f = match self.stash.iter().position(|f| ty(f) == "pong") {
                Some(pos) => self.stash.remove(pos).expect("in range"),
                None => match self.next_incoming(deadline).await {
                    Incoming::Frame(f) => f,
                    Incoming::Timeout => {
                        panic!("{}", self.timeout_msg("a pong", start.elapsed()))
                    }
                    Incoming::Closed => panic!("{}", self.closed_msg("a pong")),
                },
            };
            match ty(&f) {
                "pong" => {
                    assert_eq!(
                        f["payload"]["timestamp"],
                        *ts,
                        "{}: pong must echo the ping's timestamp: {}",
                        self.label,
                        short(&f)
                    );
                    assert!(
                        f["payload"]["serverTime"]
                            .as_i64()
                            .is_some_and(|t| t > 1_600_000_000_000),
                        "{}: pong.serverTime must be ms since the epoch: {}",
                        self.label,
                        short(&f)
                    );
                    return f;
                }
                _ if is_event(&f) => self.stash.push_back(f),
                _ => panic!("{}: expected a pong, got {}", self.label, short(&f)),
            }
        }
    }

    /// `ping` with `payload.timestamp`, and its pong.
    pub async fn ping(&mut self, ts: i64) -> Value {
        self.send_json(json!({"type": "ping", "payload": {"timestamp": ts}}))
            .await;
        self.expect_pong(&json!(ts)).await
    }

    /// Reads until the server closes the connection; returns the close code (1005 when the close frame had
    /// none). Text frames meanwhile are validated and ignored. Panics on timeout or on a connection that
    /// ends without a close frame.
    pub async fn expect_close(&mut self) -> u16 {
        let start = Instant::now();
        let deadline = start + self.timeout;
        loop {
            match self.next_incoming(deadline).await {
                Incoming::Frame(_) => {}
                Incoming::Timeout => panic!(
                    "{}",
                    self.timeout_msg("the server's close frame", start.elapsed())
                ),
                Incoming::Closed => {
                    return self.close_code.unwrap_or_else(|| {
                        panic!(
                            "{}: the connection ended without a close frame (error {:?})",
                            self.label, self.close_error
                        )
                    })
                }
            }
        }
    }

    pub async fn close(mut self) {
        let _ = tokio::time::timeout(Duration::from_secs(5), self.ws.close(None)).await;
    }
}

/// What [`Client::next_frame`] got.
#[derive(Debug)]
pub enum Received {
    /// A text frame (validated like every other).
    Frame(Value),
    /// The connection ended: the code of the server's close frame (None: it ended without one, e.g. the
    /// node was killed) and the transport error, if any.
    Closed {
        code: Option<u16>,
        error: Option<String>,
    },
    /// Nothing within the wait.
    Timeout,
}

impl Client {
    /// The next frame (stashed first), how the connection ended, or `Timeout` after `d`. Unlike
    /// `try_recv_json` it does not panic when the connection ends: failover tests expect that.
    pub async fn next_frame(&mut self, d: Duration) -> Received {
        if let Some(v) = self.stash.pop_front() {
            return Received::Frame(v);
        }
        match self.next_incoming(Instant::now() + d).await {
            Incoming::Frame(v) => Received::Frame(v),
            Incoming::Timeout => Received::Timeout,
            Incoming::Closed => Received::Closed {
                code: self.close_code,
                error: self.close_error.clone(),
            },
        }
    }

    /// Every frame (stashed first) until the connection ends, and the close code (None: no close frame).
    /// Panics if it is still open after `within`.
    pub async fn recv_until_close(&mut self, within: Duration) -> (Vec<Value>, Option<u16>) {
        let start = Instant::now();
        let deadline = start + within;
        let mut out: Vec<Value> = self.stash.drain(..).collect();
        loop {
            match self.next_incoming(deadline).await {
                Incoming::Frame(v) => out.push(v),
                Incoming::Closed => return (out, self.close_code),
                Incoming::Timeout => panic!(
                    "{}\n  (frames meanwhile: {})",
                    self.timeout_msg("the end of the connection", start.elapsed()),
                    describe(&out)
                ),
            }
        }
    }
}
