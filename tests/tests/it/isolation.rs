//! Tenant isolation. In the database: two users on two gateway nodes, one worker on the role that
//! `deploy/postgres/reader-role.sql` ships; while the victim's query runs, and after it (on pooled
//! connections it used), the other user tries every view and function that shows running queries or
//! signals backends, and gets an error or nothing of the victim's. In the protocol: every client
//! message that names an execution (listed from `/schema`, so a new one is covered too) is refused to
//! another user exactly as an id that never existed, on both nodes, with and without a session. And
//! a worker on a privileged role refuses to start unless told.

use std::time::Duration;

use crate::harness::*;
use serde_json::{json, Value};

const SECRET: &str = "isolation-secret-51d0";
const CARD: &str = "card-4111-1111-9876";

fn token(sub: &str, sessions: &[&str]) -> String {
    hs256(
        &json!({"sub": sub, "name": sub, "exp": now_ms() / 1000 + 600, "sessions": sessions}),
        SECRET.as_bytes(),
    )
}

fn url(cluster: &Cluster, node: usize, path: &str, sub: &str, sessions: &[&str]) -> String {
    let sep = if path.contains('?') { '&' } else { '?' };
    format!(
        "{}{sep}access_token={}",
        cluster.gateway(node).ws_url(path),
        token(sub, sessions)
    )
}

/// Runs `sql` for `c` and returns every frame of it.
async fn run(c: &mut Client, sql: &str) -> Vec<Value> {
    let exec = c.execute(sql, None, None).await;
    c.collect_execution(&exec).await
}

/// What the other user tries: each view or function that shows other backends' SQL, or stops them.
const PROBES: &[&str] = &[
    "SELECT query FROM pg_stat_activity WHERE pid <> pg_backend_pid()",
    "SELECT * FROM pg_stat_get_activity(NULL)",
    "SELECT pg_stat_get_backend_activity(b) FROM pg_stat_get_backend_idset() b",
    "SELECT statement FROM pg_prepared_statements",
    "SELECT query FROM pg_stat_statements",
    "SELECT pg_cancel_backend(pg_stat_get_backend_pid(b)) FROM pg_stat_get_backend_idset() b",
    "SELECT pg_terminate_backend(pg_stat_get_backend_pid(b)) FROM pg_stat_get_backend_idset() b",
    "SELECT set_config('role', 'postgres', true)",
    "SET ROLE postgres",
    "RESET ROLE",
];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn users_cannot_read_or_stop_each_others_queries_in_the_database() {
    let mut cluster = Cluster::builder("isolation_database")
        .gateways(2)
        .workers(0)
        .database(true)
        .gateway_args(["--jwt-secret", SECRET])
        .start()
        .await;
    let mut admin = cluster.pg().await;
    // pg_stat_statements where it can be installed (its view exists once created), then the script
    // again, as the script's header tells an operator who installs it later.
    let statements = sqlx::raw_sql("CREATE EXTENSION IF NOT EXISTS pg_stat_statements")
        .execute(&mut admin)
        .await
        .is_ok();
    cluster.db().load_reader_role().await;
    cluster.add_worker(&["--concurrency", "3"]).await;

    let mut victim = Client::connect(
        &url(&cluster, 0, "/ws/query", "victim", &[]),
        Some(cluster.schema()),
    )
    .await;
    let mut mallory = Client::connect(
        &url(&cluster, 1, "/ws/query", "mallory", &[]),
        Some(cluster.schema()),
    )
    .await;
    let secret_sql = format!("SELECT pg_sleep(4) AS slept, '{CARD}' AS card");
    let exec = victim.execute(&secret_sql, None, None).await;
    // Scenario check: the victim's statement is running on the database while mallory looks.
    assert!(
        wait_active_count(&mut admin, &exec, Duration::from_secs(10), |n| n == 1).await,
        "the victim's query never ran"
    );
    let mut seen = Vec::new();
    for probe in PROBES {
        let frames = run(&mut mallory, probe).await;
        assert_eq!(
            active_queries_with(&mut admin, &exec).await,
            1,
            "scenario check: the victim's query still runs after {probe}"
        );
        seen.push((probe, frames));
    }
    let victim_frames = victim.collect_execution(&exec).await;
    let s = check_full_stream(&exec, &victim_frames);
    assert_eq!(
        s.terminal_type(),
        "query_completed",
        "{}",
        short(&s.terminal)
    );
    assert_eq!(s.rows, vec![json!({"slept": "", "card": CARD})]);

    // Afterwards too: the connections the victim's query used are back in the pool.
    for probe in PROBES {
        seen.push((probe, run(&mut mallory, probe).await));
    }
    let mut outcomes = Vec::new();
    for (probe, frames) in &seen {
        let text = frames.iter().map(|f| f.to_string()).collect::<String>();
        assert!(
            !text.contains(CARD) && !text.contains("pg_sleep(4)"),
            "{probe} showed the victim's query: {}",
            describe(frames)
        );
        let end = frames.last().expect("a terminal event");
        outcomes.push(format!(
            "{probe} -> {}",
            match ty(end) {
                "query_error" => format!("error {}", end["payload"]["error"]["sqlstate"]),
                other => other.to_owned(),
            }
        ));
    }
    // The signalling and activity probes are refused outright (not merely empty).
    for probe in PROBES.iter().filter(|p| {
        p.contains("pg_cancel_backend")
            || p.contains("pg_terminate_backend")
            || p.contains("pg_stat_activity")
            || p.contains("backend_activity")
            || p.contains("set_config")
            || (p.contains("pg_stat_statements") && statements)
    }) {
        let (_, frames) = seen.iter().find(|(p, _)| p == &probe).expect("probed");
        let end = frames.last().expect("terminal");
        assert_eq!(
            end["payload"]["error"]["sqlstate"],
            "42501",
            "{probe} must be refused for lack of privilege: {}",
            short(end)
        );
    }
    eprintln!(
        "isolation probes (pg_stat_statements installed: {statements}):\n  {}",
        outcomes.join("\n  ")
    );
}

/// Client message types whose payload names an execution, from the gateway's own `/schema`.
fn messages_naming_an_execution(schema: &Value) -> Vec<String> {
    let client = &schema["client"];
    client["oneOf"]
        .as_array()
        .expect("client frames are a oneOf")
        .iter()
        .filter_map(|variant| {
            let kind = variant["properties"]["type"]["const"].as_str()?;
            let reference = variant["properties"]["payload"]["$ref"].as_str()?;
            let name = reference.rsplit('/').next()?;
            client["$defs"][name]["properties"]
                .get("executionId")
                .map(|_| kind.to_owned())
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_message_naming_an_execution_is_refused_to_another_user() {
    let cluster = Cluster::builder("isolation_protocol")
        .gateways(2)
        .workers(1)
        .gateway_args(["--jwt-secret", SECRET])
        .start()
        .await;
    let (_, schema) = http_get(cluster.gateway(0).addr(), "/schema").await;
    let schema: Value = serde_json::from_str(&schema).unwrap();
    let kinds = messages_naming_an_execution(&schema);
    for expected in ["cancel_query", "resume", "subscribe"] {
        assert!(
            kinds.iter().any(|k| k == expected),
            "{expected} not in {kinds:?}"
        );
    }

    // The victim's executions: one running, one finished, one run in a collaboration session.
    let mut victim = Client::connect(
        &url(&cluster, 0, "/ws/query", "victim", &[]),
        Some(cluster.schema()),
    )
    .await;
    let finished = victim.execute("SELECT 1 AS one", None, None).await;
    victim.collect_execution(&finished).await;
    let running = victim.execute("SELECT pg_sleep(3)", None, None).await;
    let session = new_session_id("iso");
    let path = format!("/ws/collaboration/{session}");
    let member = Client::connect(
        &url(&cluster, 0, &path, "victim", &[&session]),
        Some(cluster.schema()),
    )
    .await;
    let mut member = Collab::from_client(
        member,
        &session,
        "victim",
        "victim",
        &cluster.gateway_name(0),
        None,
    )
    .await;
    let shared = member.execute("SELECT 2 AS two", None, "v-shared").await;
    member.collect_execution(&shared, DEFAULT_TIMEOUT).await;

    let never = uuid::Uuid::new_v4().to_string();
    let own_session = new_session_id("mallory");
    for node in 0..2 {
        let paths = [
            "/ws/query".to_owned(),
            "/ws/data".to_owned(),
            format!("/ws/collaboration/{own_session}"),
        ];
        for path in &paths {
            let mut mallory = Client::connect(
                &url(&cluster, node, path, "mallory", &[&own_session]),
                Some(cluster.schema()),
            )
            .await;
            for kind in &kinds {
                for target in [&running, &finished, &shared] {
                    let answer = ask(&mut mallory, kind, target).await;
                    let baseline = ask(&mut mallory, kind, &never).await;
                    let what = format!("{kind} on node {node} {path}");
                    assert_eq!(
                        answer["type"], "error",
                        "{what}: another user's execution was not refused: {answer}"
                    );
                    // Not a hint of existence: the same answer as for an id that never existed.
                    assert_eq!(
                        normalized(&answer, target),
                        normalized(&baseline, &never),
                        "{what}: differs from the answer for an unknown id"
                    );
                    if !path.starts_with("/ws/data") || kind != "cancel_query" {
                        assert_eq!(answer["payload"]["code"], "not_found", "{what}: {answer}");
                    }
                }
            }
        }
    }
    // The victim's query was not cancelled, and its owner and session members still may act.
    let frames = victim.collect_execution(&running).await;
    assert_eq!(
        ty(frames.last().unwrap()),
        "query_completed",
        "{}",
        describe(&frames)
    );
    let mut owner = Client::connect(
        &url(&cluster, 1, "/ws/data", "victim", &[]),
        Some(cluster.schema()),
    )
    .await;
    owner.subscribe(&finished, Some(0)).await;
    assert_eq!(
        ty(owner.collect_execution(&finished).await.last().unwrap()),
        "query_completed"
    );
    let mut friend = Client::connect(
        &url(&cluster, 1, "/ws/data", "friend", &[&session]),
        Some(cluster.schema()),
    )
    .await;
    friend.subscribe(&shared, Some(0)).await;
    assert_eq!(
        ty(friend.collect_execution(&shared).await.last().unwrap()),
        "query_completed"
    );
}

/// Sends one message of `kind` naming `execution_id` and returns the answer to it.
async fn ask(c: &mut Client, kind: &str, execution_id: &str) -> Value {
    let id = format!("q-{}", &uuid::Uuid::new_v4().simple().to_string()[..8]);
    c.send_json(
        json!({"type": kind, "id": id, "payload": {"executionId": execution_id, "afterSeq": 0}}),
    )
    .await;
    loop {
        let f = c.recv_json().await;
        if f["payload"]["ref"] == id.as_str() || f["payload"]["id"] == id.as_str() {
            return f;
        }
        assert!(
            exec_of(&f) != Some(execution_id),
            "an event of {execution_id} reached another user: {f}"
        );
    }
}

/// The answer with the execution id and the frame id taken out.
fn normalized(answer: &Value, execution_id: &str) -> Value {
    let mut a = answer.clone();
    if let Some(p) = a.get_mut("payload") {
        p["ref"] = Value::Null;
        if let Some(m) = p["message"].as_str() {
            p["message"] = json!(m.replace(execution_id, "<id>"));
        }
    }
    a
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_on_a_privileged_role_refuses_to_start_unless_told() {
    let cluster = Cluster::builder("isolation_role")
        .gateways(0)
        .workers(0)
        .database(true)
        .start()
        .await;
    let db = cluster.db();
    let worker = |database_url: &str, extra: &[&str]| {
        let mut cmd = std::process::Command::new(&binaries().worker);
        cmd.args(["--redis-url", &redis_url(), "--key-prefix", &cluster.prefix])
            .args(["--database-url", database_url])
            .args(extra)
            .stdin(std::process::Stdio::null());
        for (k, _) in std::env::vars_os() {
            if k.to_string_lossy().starts_with("C2S_") {
                cmd.env_remove(&k);
            }
        }
        cmd
    };
    let started = std::time::Instant::now();
    let out = worker(&db.url, &[]).output().expect("running the worker");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success(),
        "a superuser worker started: {stderr}"
    );
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "{:?}",
        started.elapsed()
    );
    for needle in [
        "`postgres`",
        "superuser",
        "reader-role.sql",
        "--insecure-privileged-role",
    ] {
        assert!(
            stderr.contains(needle),
            "the refusal does not say {needle}: {stderr}"
        );
    }

    // With the flag it runs (and says so loudly); it is killed once it is ready.
    let mut child = tokio::process::Command::from(worker(&db.url, &["--insecure-privileged-role"]))
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    use tokio::io::AsyncBufReadExt;
    let mut lines = tokio::io::BufReader::new(child.stdout.take().unwrap()).lines();
    let ready = tokio::time::timeout(Duration::from_secs(20), lines.next_line())
        .await
        .expect("the flagged worker became ready")
        .unwrap()
        .unwrap_or_default();
    assert!(ready.starts_with("READY "), "{ready}");
    child.kill().await.unwrap();
    let out = child.wait_with_output().await.unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("PRIVILEGED DATABASE ROLE"), "{stderr}");

    // A member of pg_signal_backend is refused too, with the reason.
    let role = format!(
        "c2s_signaller_{}",
        &uuid::Uuid::new_v4().simple().to_string()[..8]
    );
    let mut admin = cluster.pg().await;
    for sql in [
        format!("CREATE ROLE {role} LOGIN PASSWORD 'pw'"),
        format!("GRANT pg_signal_backend TO {role}"),
        format!(r#"GRANT CONNECT ON DATABASE "{}" TO {role}"#, db.name),
    ] {
        sqlx::query(&sql).execute(&mut admin).await.unwrap();
    }
    let mut signaller = url::Url::parse(&db.url).unwrap();
    signaller.set_username(&role).unwrap();
    signaller.set_password(Some("pw")).unwrap();
    let out = worker(signaller.as_str(), &[]).output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{stderr}");
    assert!(
        stderr.contains("pg_signal_backend") && stderr.contains(&role),
        "{stderr}"
    );
    let _ = sqlx::query(&format!("DROP OWNED BY {role}"))
        .execute(&mut admin)
        .await;
    let _ = sqlx::query(&format!("DROP ROLE {role}"))
        .execute(&mut admin)
        .await;
}
