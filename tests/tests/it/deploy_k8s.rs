//! `deploy/k8s`, the kustomize base: it renders, the render is valid against the Kubernetes 1.30 schemas,
//! and what it tells the binaries is real:
//!
//! - every container flag and every `C2S_*` variable (explicit env, ConfigMaps used with envFrom, the Secret
//!   template's keys) is an option of the binary of that container, read from its `--help`;
//! - the probes hit the container's listener, on paths a real gateway (and worker) serve;
//! - the gateway's terminationGracePeriodSeconds covers preStop sleep + C2S_SHUTDOWN_GRACE_SECS, the
//!   worker's covers C2S_WORKER_GRACE_MS;
//! - every Deployment has an HPA and a PDB, and the Service and Ingress point at real objects.
//!
//! The checks are functions returning problems, and `the_checks_catch_broken_manifests` breaks a copy of
//! the render in each way to prove they can fail.

use std::collections::{BTreeMap, BTreeSet};
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::OnceLock;

use crate::harness::deploy::{deploy_path, venv_tool, ConfigSurface};
use crate::harness::{free_port, http_get, target_dir, Cluster};
use serde_json::{json, Value};

const NAMESPACE: &str = "chat2sql";
const KUBERNETES_VERSION: &str = "1.30.0";

// ---------------------------------------------------------------------------------------------------------
// Rendering and parsing
// ---------------------------------------------------------------------------------------------------------

fn out_dir() -> PathBuf {
    let dir = target_dir().join("test-logs").join("deploy_k8s");
    std::fs::create_dir_all(&dir)
        .unwrap_or_else(|e| panic!("cannot create {}: {e}", dir.display()));
    dir
}

/// `kubectl kustomize deploy/k8s` (or `kustomize build deploy/k8s`), written once to a file.
fn rendered_file() -> &'static Path {
    static RENDERED: OnceLock<PathBuf> = OnceLock::new();
    RENDERED.get_or_init(|| {
        let dir = deploy_path("k8s");
        let dir = dir.to_str().expect("a UTF-8 path");
        let mut tried = Vec::new();
        for (tool, args) in [
            ("kubectl", ["kustomize", dir]),
            ("kustomize", ["build", dir]),
        ] {
            match Command::new(tool).args(args).output() {
                Ok(out) => {
                    assert!(
                        out.status.success(),
                        "`{tool} {}` failed ({}):\n{}",
                        args.join(" "),
                        out.status,
                        String::from_utf8_lossy(&out.stderr)
                    );
                    let path = out_dir().join("rendered.yaml");
                    std::fs::write(&path, &out.stdout)
                        .unwrap_or_else(|e| panic!("cannot write {}: {e}", path.display()));
                    return path;
                }
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => tried.push(tool),
                Err(e) => panic!("cannot run {tool}: {e}"),
            }
        }
        panic!(
            "cannot render deploy/k8s: none of {tried:?} is on PATH (install kubectl, which has kustomize \
             built in, or the standalone kustomize)"
        );
    })
}

/// YAML (possibly several documents) to JSON values, with the venv's PyYAML; empty documents dropped.
fn yaml_to_json(yaml: &str) -> Vec<Value> {
    let mut child = Command::new(venv_tool("python"))
        .args([
            "-c",
            "import sys,yaml,json; json.dump(list(yaml.safe_load_all(sys.stdin)), sys.stdout)",
        ])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("running the venv's python");
    child
        .stdin
        .take()
        .expect("stdin is piped")
        .write_all(yaml.as_bytes())
        .expect("writing YAML to python");
    let out = child.wait_with_output().expect("waiting for python");
    assert!(
        out.status.success(),
        "YAML → JSON failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let docs: Vec<Value> = serde_json::from_slice(&out.stdout).expect("python printed JSON");
    docs.into_iter().filter(|d| !d.is_null()).collect()
}

/// The rendered objects.
fn docs() -> &'static [Value] {
    static DOCS: OnceLock<Vec<Value>> = OnceLock::new();
    DOCS.get_or_init(|| {
        let text = std::fs::read_to_string(rendered_file()).expect("reading the render");
        let docs = yaml_to_json(&text);
        assert!(docs.len() > 5, "the render has only {} objects", docs.len());
        docs
    })
}

/// `secret.example.yaml`: the one Secret of the template.
fn secret_template() -> &'static Value {
    static SECRET: OnceLock<Value> = OnceLock::new();
    SECRET.get_or_init(|| {
        let text = std::fs::read_to_string(deploy_path("k8s/secret.example.yaml"))
            .expect("reading deploy/k8s/secret.example.yaml");
        let mut docs = yaml_to_json(&text);
        assert_eq!(docs.len(), 1, "secret.example.yaml holds one object");
        let secret = docs.remove(0);
        assert_eq!(secret["kind"], "Secret");
        secret
    })
}

struct Surfaces {
    gateway: ConfigSurface,
    worker: ConfigSurface,
}

fn surfaces() -> &'static Surfaces {
    static SURFACES: OnceLock<Surfaces> = OnceLock::new();
    SURFACES.get_or_init(|| Surfaces {
        gateway: ConfigSurface::gateway(),
        worker: ConfigSurface::worker(),
    })
}

// ---------------------------------------------------------------------------------------------------------
// Access to the objects
// ---------------------------------------------------------------------------------------------------------

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Bin {
    Gateway,
    Worker,
}

impl Bin {
    fn name(self) -> &'static str {
        match self {
            Bin::Gateway => "gateway",
            Bin::Worker => "worker",
        }
    }

    fn surface(self, s: &Surfaces) -> &ConfigSurface {
        match self {
            Bin::Gateway => &s.gateway,
            Bin::Worker => &s.worker,
        }
    }
}

fn s<'a>(v: &'a Value, pointer: &str) -> &'a str {
    v.pointer(pointer).and_then(Value::as_str).unwrap_or("")
}

fn arr<'a>(v: &'a Value, pointer: &str) -> &'a [Value] {
    v.pointer(pointer)
        .and_then(Value::as_array)
        .map_or(&[], Vec::as_slice)
}

fn name_of(v: &Value) -> &str {
    s(v, "/metadata/name")
}

fn of_kind<'a>(docs: &'a [Value], kind: &'a str) -> impl Iterator<Item = &'a Value> + 'a {
    docs.iter().filter(move |d| d["kind"] == kind)
}

fn find<'a>(docs: &'a [Value], kind: &str, name: &str) -> Option<&'a Value> {
    docs.iter()
        .find(|d| d["kind"] == kind && name_of(d) == name)
}

/// The binary a container runs, from its image (`…/gateway:tag`, `…/worker:tag`).
fn binary_of(container: &Value) -> Option<Bin> {
    // `registry:5000/chat2sql/gateway:1.0@sha256:…` → `gateway`.
    let image = s(container, "/image").split('@').next().unwrap_or("");
    let last = image.rsplit('/').next().unwrap_or("");
    match last.split(':').next() {
        Some("gateway") => Some(Bin::Gateway),
        Some("worker") => Some(Bin::Worker),
        _ => None,
    }
}

/// (Deployment, container) for every container of every Deployment.
fn containers(docs: &[Value]) -> Vec<(&Value, &Value)> {
    of_kind(docs, "Deployment")
        .flat_map(|d| {
            arr(d, "/spec/template/spec/containers")
                .iter()
                .chain(arr(d, "/spec/template/spec/initContainers"))
                .map(move |c| (d, c))
        })
        .collect()
}

/// The one Deployment running `bin`.
fn deployment_of(docs: &[Value], bin: Bin) -> (&Value, &Value) {
    let found: Vec<_> = containers(docs)
        .into_iter()
        .filter(|(_, c)| binary_of(c) == Some(bin))
        .collect();
    assert_eq!(
        found.len(),
        1,
        "expected one {} container in the render",
        bin.name()
    );
    found[0]
}

/// What the container's binary gets for one option: the flag in `args` (`--f v` or `--f=v`), else an
/// explicit `env` value, else the last ConfigMap of `envFrom` that sets it. `None`: the binary's default.
fn setting(docs: &[Value], c: &Value, flag: &str, env: &str) -> Option<String> {
    let args: Vec<&str> = arr(c, "/args").iter().filter_map(Value::as_str).collect();
    for (i, arg) in args.iter().enumerate() {
        if *arg == flag {
            return args.get(i + 1).map(|v| v.to_string());
        }
        if let Some(v) = arg.strip_prefix(flag).and_then(|r| r.strip_prefix('=')) {
            return Some(v.to_owned());
        }
    }
    if let Some(e) = arr(c, "/env").iter().find(|e| e["name"] == env) {
        return e["value"].as_str().map(str::to_owned);
    }
    arr(c, "/envFrom")
        .iter()
        .rev()
        .filter_map(|src| src.pointer("/configMapRef/name").and_then(Value::as_str))
        .filter_map(|cm| find(docs, "ConfigMap", cm))
        .filter_map(|cm| cm.pointer(&format!("/data/{env}")).and_then(Value::as_str))
        .next()
        .map(str::to_owned)
}

fn pod_labels(deployment: &Value) -> BTreeMap<String, String> {
    label_map(&deployment["spec"]["template"]["metadata"]["labels"])
}

fn label_map(v: &Value) -> BTreeMap<String, String> {
    v.as_object()
        .map(|m| {
            m.iter()
                .map(|(k, v)| (k.clone(), v.as_str().unwrap_or("").to_owned()))
                .collect()
        })
        .unwrap_or_default()
}

/// A non-empty selector all of whose labels the pods have.
fn selects(selector: &BTreeMap<String, String>, labels: &BTreeMap<String, String>) -> bool {
    !selector.is_empty() && selector.iter().all(|(k, v)| labels.get(k) == Some(v))
}

/// A probe's or a Service's port (number or name) as the container's port number.
fn container_port(c: &Value, port: &Value) -> Option<u64> {
    match port {
        Value::Number(n) => n.as_u64(),
        Value::String(name) => arr(c, "/ports")
            .iter()
            .find(|p| p["name"] == name.as_str())
            .and_then(|p| p["containerPort"].as_u64()),
        _ => None,
    }
}

fn secret_keys(secret: &Value) -> BTreeSet<String> {
    ["stringData", "data"]
        .iter()
        .filter_map(|k| secret[*k].as_object())
        .flat_map(|m| m.keys().cloned())
        .collect()
}

// ---------------------------------------------------------------------------------------------------------
// The checks: each returns the problems it found
// ---------------------------------------------------------------------------------------------------------

/// Flags and variables: every one is an option of the container's binary.
fn check_config(docs: &[Value], secret: &Value, surfaces: &Surfaces) -> Vec<String> {
    let mut problems = Vec::new();
    let secret_name = name_of(secret);
    let template_keys = secret_keys(secret);
    let mut used_secret_keys = BTreeSet::new();
    for (d, c) in containers(docs) {
        let who = format!("{}/{}", name_of(d), s(c, "/name"));
        let Some(bin) = binary_of(c) else {
            problems.push(format!(
                "{who}: cannot tell the binary of image {:?}",
                s(c, "/image")
            ));
            continue;
        };
        let surface = bin.surface(surfaces);
        let b = bin.name();
        if c.get("command").is_some() {
            problems.push(format!(
                "{who}: `command` replaces the image's ENTRYPOINT (/usr/local/bin/{b}); use `args`"
            ));
        }
        for arg in arr(c, "/args") {
            let arg = arg.as_str().unwrap_or("");
            if !surface.accepts_arg(arg) {
                problems.push(format!("{who}: {arg} is not a flag of {b}"));
            }
        }
        for e in arr(c, "/env") {
            let name = s(e, "/name");
            if !surface.env_keys.contains(name) {
                problems.push(format!("{who}: env {name} is not an option of {b}"));
            }
            if let Some(r) = e.pointer("/valueFrom/secretKeyRef") {
                let (secret, key) = (s(r, "/name"), s(r, "/key"));
                if secret != secret_name {
                    problems.push(format!(
                        "{who}: env {name} comes from Secret {secret}, not the template's {secret_name}"
                    ));
                } else if !template_keys.contains(key) {
                    problems.push(format!(
                        "{who}: env {name} comes from key {key}, which secret.example.yaml does not have"
                    ));
                } else {
                    used_secret_keys.insert(key.to_owned());
                }
            }
            if let Some(r) = e.pointer("/valueFrom/configMapKeyRef") {
                let (cm, key) = (s(r, "/name"), s(r, "/key"));
                let has = find(docs, "ConfigMap", cm)
                    .and_then(|m| m.pointer(&format!("/data/{key}")))
                    .is_some();
                if !has {
                    problems.push(format!(
                        "{who}: env {name} comes from ConfigMap {cm} key {key}, not in the render"
                    ));
                }
            }
        }
        for src in arr(c, "/envFrom") {
            if src.get("prefix").is_some() {
                problems.push(format!(
                    "{who}: envFrom with a prefix renames the variables"
                ));
            }
            if let Some(cm) = src.pointer("/configMapRef/name").and_then(Value::as_str) {
                match find(docs, "ConfigMap", cm) {
                    None => problems.push(format!(
                        "{who}: envFrom ConfigMap {cm} is not in the render"
                    )),
                    Some(m) => {
                        for key in m["data"].as_object().into_iter().flat_map(|m| m.keys()) {
                            if !surface.env_keys.contains(key) {
                                problems.push(format!(
                                    "{who}: ConfigMap {cm} (envFrom) sets {key}, not an option of {b}"
                                ));
                            }
                        }
                    }
                }
            }
            if let Some(sec) = src.pointer("/secretRef/name").and_then(Value::as_str) {
                if sec != secret_name {
                    problems.push(format!(
                        "{who}: envFrom Secret {sec} is not the template's {secret_name}"
                    ));
                    continue;
                }
                for key in &template_keys {
                    if !surface.env_keys.contains(key) {
                        problems.push(format!(
                            "{who}: Secret {sec} (envFrom) sets {key}, not an option of {b}"
                        ));
                    }
                    used_secret_keys.insert(key.clone());
                }
            }
        }
    }
    for key in template_keys.difference(&used_secret_keys) {
        problems.push(format!(
            "secret.example.yaml: key {key} is used by no container"
        ));
    }
    problems
}

/// The port of a `host:port` listen address, unless it only listens on loopback.
fn listen_port(addr: &str) -> Result<u64, String> {
    let (host, port) = addr
        .rsplit_once(':')
        .ok_or_else(|| format!("listen address {addr:?} has no port"))?;
    if host == "127.0.0.1" || host == "localhost" || host == "[::1]" {
        return Err(format!(
            "listens on {addr}: loopback is unreachable from the kubelet and the Service"
        ));
    }
    port.parse()
        .map_err(|_| format!("listen address {addr:?} has no numeric port"))
}

/// (probe field, expected path)
type Probe = (&'static str, &'static str);

/// Probes: the expected paths, on the container port the binary actually listens on.
fn check_probes(docs: &[Value]) -> Vec<String> {
    let mut problems = Vec::new();
    for (d, c) in containers(docs) {
        let who = format!("{}/{}", name_of(d), s(c, "/name"));
        let Some(bin) = binary_of(c) else { continue };
        let (listen, required, optional): (Option<String>, &[Probe], &[Probe]) = match bin {
            Bin::Gateway => (
                // The gateway's default is 127.0.0.1:8080.
                Some(setting(docs, c, "--bind", "C2S_BIND").unwrap_or("127.0.0.1:8080".into())),
                &[("readinessProbe", "/readyz"), ("livenessProbe", "/healthz")],
                &[("startupProbe", "/healthz")],
            ),
            Bin::Worker => (
                setting(docs, c, "--metrics-bind", "C2S_METRICS_BIND"),
                &[("livenessProbe", "/metrics")],
                &[("readinessProbe", "/metrics"), ("startupProbe", "/metrics")],
            ),
        };
        let port = match listen.as_deref().map(listen_port) {
            None => {
                problems.push(format!(
                    "{who}: no listener is configured for the probes (--metrics-bind)"
                ));
                continue;
            }
            Some(Err(e)) => {
                problems.push(format!("{who}: {e}"));
                continue;
            }
            Some(Ok(port)) => port,
        };
        if !arr(c, "/ports")
            .iter()
            .any(|p| p["containerPort"].as_u64() == Some(port))
        {
            problems.push(format!(
                "{who}: listens on port {port}, which is not a containerPort"
            ));
        }
        let probes = required
            .iter()
            .map(|p| (p, true))
            .chain(optional.iter().map(|p| (p, false)));
        for ((probe, path), needed) in probes {
            let Some(get) = c.get(*probe).map(|p| &p["httpGet"]) else {
                if needed {
                    problems.push(format!("{who}: no {probe}"));
                }
                continue;
            };
            if get["path"] != *path {
                problems.push(format!(
                    "{who}: {probe} path is {}, expected exactly {path}",
                    get["path"]
                ));
            }
            match container_port(c, &get["port"]) {
                Some(p) if p == port => {}
                other => problems.push(format!(
                    "{who}: {probe} port {} is {other:?}, not the listener's {port}",
                    get["port"]
                )),
            }
        }
    }
    problems
}

/// The seconds a preStop hook sleeps (`sleep N` exec, or the native `sleep` action).
fn prestop_sleep_secs(c: &Value) -> Option<u64> {
    let hook = c.pointer("/lifecycle/preStop")?;
    if let Some(n) = hook.pointer("/sleep/seconds").and_then(Value::as_u64) {
        return Some(n);
    }
    let words: Vec<&str> = arr(hook, "/exec/command")
        .iter()
        .filter_map(Value::as_str)
        .flat_map(|w| w.split(|ch: char| ch.is_whitespace() || ch == ';'))
        .filter(|w| !w.is_empty())
        .collect();
    let at = words
        .iter()
        .position(|w| *w == "sleep" || w.ends_with("/sleep"))?;
    words.get(at + 1)?.parse().ok()
}

/// Termination: SIGKILL never cuts a drain short.
fn check_drain(docs: &[Value]) -> Vec<String> {
    let mut problems = Vec::new();
    for (d, c) in containers(docs) {
        let who = format!("{}/{}", name_of(d), s(c, "/name"));
        let Some(bin) = binary_of(c) else { continue };
        let tgps = d
            .pointer("/spec/template/spec/terminationGracePeriodSeconds")
            .and_then(Value::as_u64)
            .unwrap_or(30);
        let sleep = prestop_sleep_secs(c);
        let num = |flag: &str, env: &str, default: u64| -> Result<u64, String> {
            match setting(docs, c, flag, env) {
                None => Ok(default),
                Some(v) => v
                    .parse()
                    .map_err(|_| format!("{who}: {env}={v:?} is not a number")),
            }
        };
        match bin {
            Bin::Gateway => {
                let sleep = sleep.unwrap_or_else(|| {
                    problems.push(format!(
                        "{who}: no preStop sleep: new sockets may still be routed to a draining pod"
                    ));
                    0
                });
                match num("--shutdown-grace-secs", "C2S_SHUTDOWN_GRACE_SECS", 10) {
                    Err(e) => problems.push(e),
                    Ok(grace) if tgps <= sleep + grace => problems.push(format!(
                        "{who}: terminationGracePeriodSeconds {tgps} leaves no margin over preStop sleep \
                         {sleep} + C2S_SHUTDOWN_GRACE_SECS {grace}"
                    )),
                    Ok(_) => {}
                }
            }
            Bin::Worker => match num("--grace-ms", "C2S_WORKER_GRACE_MS", 10_000) {
                Err(e) => problems.push(e),
                Ok(grace_ms) if tgps * 1000 <= sleep.unwrap_or(0) * 1000 + grace_ms => problems
                    .push(format!(
                        "{who}: terminationGracePeriodSeconds {tgps} leaves no margin over \
                         C2S_WORKER_GRACE_MS {grace_ms}"
                    )),
                Ok(_) => {}
            },
        }
    }
    problems
}

/// HPA and PDB per Deployment, Service → pods, Ingress → Service, everything in the namespace.
fn check_wiring(docs: &[Value]) -> Vec<String> {
    let mut problems = Vec::new();
    let deployments: Vec<&Value> = of_kind(docs, "Deployment").collect();
    if find(docs, "Namespace", NAMESPACE).is_none() {
        problems.push(format!("no Namespace {NAMESPACE}"));
    }
    for d in docs.iter().filter(|d| d["kind"] != "Namespace") {
        if s(d, "/metadata/namespace") != NAMESPACE {
            problems.push(format!(
                "{} {} is not in namespace {NAMESPACE}",
                d["kind"],
                name_of(d)
            ));
        }
    }
    for d in &deployments {
        let name = name_of(d);
        let labels = pod_labels(d);
        if !selects(&label_map(&d["spec"]["selector"]["matchLabels"]), &labels) {
            problems.push(format!(
                "Deployment {name}: its selector does not select its pods"
            ));
        }
        let hpas: Vec<&Value> = of_kind(docs, "HorizontalPodAutoscaler")
            .filter(|h| {
                s(h, "/spec/scaleTargetRef/kind") == "Deployment"
                    && s(h, "/spec/scaleTargetRef/name") == name
            })
            .collect();
        if hpas.len() != 1 {
            problems.push(format!(
                "Deployment {name}: {} HorizontalPodAutoscalers target it, expected 1",
                hpas.len()
            ));
        }
        let min_replicas = hpas
            .first()
            .and_then(|h| h.pointer("/spec/minReplicas"))
            .and_then(Value::as_u64)
            .unwrap_or(1);
        if let Some(h) = hpas.first() {
            if h["apiVersion"] != "autoscaling/v2" {
                problems.push(format!(
                    "HPA {}: apiVersion {}",
                    name_of(h),
                    h["apiVersion"]
                ));
            }
        }
        let pdbs: Vec<&Value> = of_kind(docs, "PodDisruptionBudget")
            .filter(|p| selects(&label_map(&p["spec"]["selector"]["matchLabels"]), &labels))
            .collect();
        if pdbs.len() != 1 {
            problems.push(format!(
                "Deployment {name}: {} PodDisruptionBudgets select its pods, expected 1",
                pdbs.len()
            ));
        }
        for p in &pdbs {
            match p.pointer("/spec/minAvailable").and_then(Value::as_u64) {
                // A budget as large as the smallest scale would block every node drain.
                Some(min) if min >= min_replicas => problems.push(format!(
                    "PDB {}: minAvailable {min} >= the HPA's minReplicas {min_replicas}",
                    name_of(p)
                )),
                _ => {}
            }
        }
    }
    for h in of_kind(docs, "HorizontalPodAutoscaler") {
        let target = s(h, "/spec/scaleTargetRef/name");
        if find(docs, "Deployment", target).is_none() {
            problems.push(format!("HPA {}: no Deployment {target}", name_of(h)));
        }
    }
    for p in of_kind(docs, "PodDisruptionBudget") {
        let selector = label_map(&p["spec"]["selector"]["matchLabels"]);
        let n = deployments
            .iter()
            .filter(|d| selects(&selector, &pod_labels(d)))
            .count();
        if n != 1 {
            problems.push(format!(
                "PDB {}: selects the pods of {n} Deployments",
                name_of(p)
            ));
        }
    }
    for svc in of_kind(docs, "Service") {
        let selector = label_map(&svc["spec"]["selector"]);
        let backing: Vec<&&Value> = deployments
            .iter()
            .filter(|d| selects(&selector, &pod_labels(d)))
            .collect();
        if backing.len() != 1 {
            problems.push(format!(
                "Service {}: selects the pods of {} Deployments",
                name_of(svc),
                backing.len()
            ));
            continue;
        }
        for port in arr(svc, "/spec/ports") {
            let target = port.get("targetPort").unwrap_or(&port["port"]);
            let resolved = arr(backing[0], "/spec/template/spec/containers")
                .iter()
                .any(|c| container_port(c, target).is_some());
            if !resolved {
                problems.push(format!(
                    "Service {}: targetPort {target} is no container port of {}",
                    name_of(svc),
                    name_of(backing[0])
                ));
            }
        }
    }
    let mut backends = 0;
    for ing in of_kind(docs, "Ingress") {
        for rule in arr(ing, "/spec/rules") {
            for path in arr(rule, "/http/paths") {
                backends += 1;
                let svc_name = s(path, "/backend/service/name");
                let port = &path["backend"]["service"]["port"];
                let Some(svc) = find(docs, "Service", svc_name) else {
                    problems.push(format!("Ingress {}: no Service {svc_name}", name_of(ing)));
                    continue;
                };
                let known = arr(svc, "/spec/ports").iter().any(|p| {
                    (port.get("name").is_some() && p["name"] == port["name"])
                        || (port.get("number").is_some() && p["port"] == port["number"])
                });
                if !known {
                    problems.push(format!(
                        "Ingress {}: Service {svc_name} has no port {port}",
                        name_of(ing)
                    ));
                }
            }
        }
    }
    if backends == 0 {
        problems.push("no Ingress backend".into());
    }
    problems
}

fn assert_none(what: &str, problems: Vec<String>) {
    assert!(
        problems.is_empty(),
        "{what}:\n  {}\n(render: {})",
        problems.join("\n  "),
        rendered_file().display()
    );
}

// ---------------------------------------------------------------------------------------------------------
// Tests
// ---------------------------------------------------------------------------------------------------------

fn kubernetes_validate(file: &Path) -> String {
    let out = Command::new(venv_tool("kubernetes-validate"))
        .args(["--strict", "-k", KUBERNETES_VERSION])
        .arg(file)
        .output()
        .expect("running kubernetes-validate");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.status.success(),
        "kubernetes-validate --strict -k {KUBERNETES_VERSION} {} failed:\n{text}",
        file.display()
    );
    text
}

#[test]
fn renders_and_validates_against_the_kubernetes_schemas() {
    let report = kubernetes_validate(rendered_file());
    let passed = report.matches("passed for resource").count();
    assert_eq!(
        passed,
        docs().len(),
        "every rendered object is validated:\n{report}"
    );
    let kinds: BTreeSet<&str> = docs().iter().filter_map(|d| d["kind"].as_str()).collect();
    for kind in [
        "Namespace",
        "ConfigMap",
        "Deployment",
        "Service",
        "Ingress",
        "HorizontalPodAutoscaler",
        "PodDisruptionBudget",
    ] {
        assert!(kinds.contains(kind), "no {kind} in the render: {kinds:?}");
    }
    // The Secret is a template, never applied with the base.
    assert!(
        !kinds.contains("Secret"),
        "the base must not carry a Secret"
    );

    let template = deploy_path("k8s/secret.example.yaml");
    let report = kubernetes_validate(&template);
    assert!(report.contains("passed for resource"), "{report}");
    assert_eq!(s(secret_template(), "/metadata/namespace"), NAMESPACE);
}

#[test]
fn flags_and_variables_are_options_of_the_binaries() {
    assert_none(
        "flags and variables the binaries do not have",
        check_config(docs(), secret_template(), surfaces()),
    );
    // The settings the deployment relies on are really there.
    let (_, gw) = deployment_of(docs(), Bin::Gateway);
    assert_eq!(
        setting(docs(), gw, "--log-format", "C2S_LOG_FORMAT").as_deref(),
        Some("json")
    );
    let node_id = arr(gw, "/env")
        .iter()
        .find(|e| e["name"] == "C2S_NODE_ID")
        .expect("the gateway gets C2S_NODE_ID");
    assert_eq!(
        s(node_id, "/valueFrom/fieldRef/fieldPath"),
        "metadata.name",
        "C2S_NODE_ID is the pod name"
    );
    let (_, wk) = deployment_of(docs(), Bin::Worker);
    assert!(
        setting(docs(), wk, "--metrics-bind", "C2S_METRICS_BIND").is_some(),
        "the worker serves metrics"
    );
}

/// Documentation and comments included: every `C2S_…` name under deploy/k8s is an option of a binary.
#[test]
fn every_c2s_name_under_deploy_k8s_is_real() {
    let known: BTreeSet<&String> = surfaces()
        .gateway
        .env_keys
        .iter()
        .chain(&surfaces().worker.env_keys)
        .collect();
    let mut files = vec![deploy_path("k8s")];
    let mut seen = 0;
    let mut problems = Vec::new();
    while let Some(path) = files.pop() {
        if path.is_dir() {
            for entry in std::fs::read_dir(&path).expect("listing deploy/k8s") {
                files.push(entry.expect("a directory entry").path());
            }
            continue;
        }
        let text = std::fs::read_to_string(&path).expect("a text file");
        for (at, _) in text.match_indices("C2S_") {
            let name: String = text[at..]
                .chars()
                .take_while(|c| c.is_ascii_uppercase() || c.is_ascii_digit() || *c == '_')
                .collect();
            // `C2S_*` in prose.
            if name == "C2S_" {
                continue;
            }
            seen += 1;
            if !known.contains(&name) {
                problems.push(format!("{}: {name}", path.display()));
            }
        }
    }
    assert!(seen > 20, "only {seen} C2S_ names found under deploy/k8s");
    assert!(
        problems.is_empty(),
        "names that are options of neither binary:\n  {}",
        problems.join("\n  ")
    );
}

#[test]
fn probes_hit_the_listeners() {
    assert_none("probes", check_probes(docs()));
}

#[test]
fn drain_fits_in_the_termination_grace_period() {
    assert_none("termination", check_drain(docs()));
    let (d, gw) = deployment_of(docs(), Bin::Gateway);
    assert!(
        prestop_sleep_secs(gw).is_some_and(|n| n > 0),
        "the gateway's preStop sleeps"
    );
    assert!(
        d.pointer("/spec/template/spec/terminationGracePeriodSeconds")
            .is_some(),
        "the gateway sets terminationGracePeriodSeconds explicitly"
    );
}

#[test]
fn autoscalers_budgets_services_and_ingress_point_at_real_objects() {
    assert_none("wiring", check_wiring(docs()));
}

/// The gateway's container in a (copy of the) render, to break it.
fn gateway_container_mut(docs: &mut [Value]) -> &mut Value {
    let d = docs
        .iter_mut()
        .find(|d| {
            d["kind"] == "Deployment"
                && arr(d, "/spec/template/spec/containers")
                    .first()
                    .and_then(binary_of)
                    == Some(Bin::Gateway)
        })
        .expect("the gateway Deployment");
    &mut d["spec"]["template"]["spec"]["containers"][0]
}

/// Each check fails on a copy of the render broken the way it guards against.
#[test]
fn the_checks_catch_broken_manifests() {
    let surfaces = surfaces();
    let secret = secret_template();
    let expect = |what: &str, problems: Vec<String>, needle: &str| {
        assert!(
            problems.iter().any(|p| p.contains(needle)),
            "{what}: expected a problem naming {needle:?}, got {problems:?}"
        );
    };

    // A flag the gateway does not have.
    let mut broken = docs().to_vec();
    gateway_container_mut(&mut broken)["args"]
        .as_array_mut()
        .unwrap()
        .push(json!("--no-such-flag=1"));
    expect(
        "a bad flag",
        check_config(&broken, secret, surfaces),
        "--no-such-flag",
    );

    // A variable no binary reads, and a gateway-only one in the ConfigMap the worker uses too.
    let mut broken = docs().to_vec();
    let shared = broken
        .iter_mut()
        .find(|d| d["kind"] == "ConfigMap" && name_of(d).starts_with("chat2sql-config"))
        .expect("the shared ConfigMap");
    shared["data"]["C2S_SHUTDOWN_GRACE_SECS"] = json!("10");
    gateway_container_mut(&mut broken)["env"]
        .as_array_mut()
        .unwrap()
        .push(json!({"name": "C2S_NOT_A_SETTING", "value": "1"}));
    let problems = check_config(&broken, secret, surfaces);
    expect("an unknown variable", problems.clone(), "C2S_NOT_A_SETTING");
    expect(
        "a gateway-only key where the worker reads it",
        problems,
        "sets C2S_SHUTDOWN_GRACE_SECS, not an option of worker",
    );

    // A Secret key no container uses, and one only the worker knows sent to the gateway by envFrom.
    let mut bad_secret = secret.clone();
    bad_secret["stringData"]["C2S_UNUSED_KEY"] = json!("x");
    expect(
        "an unused Secret key",
        check_config(docs(), &bad_secret, surfaces),
        "C2S_UNUSED_KEY",
    );
    let mut broken = docs().to_vec();
    gateway_container_mut(&mut broken)["envFrom"]
        .as_array_mut()
        .unwrap()
        .push(json!({"secretRef": {"name": name_of(secret)}}));
    expect(
        "the worker's secrets in the gateway",
        check_config(&broken, secret, surfaces),
        "sets C2S_DATABASE_URL, not an option of gateway",
    );

    // Probes on the wrong path, and a gateway listening on loopback only.
    let mut broken = docs().to_vec();
    gateway_container_mut(&mut broken)["readinessProbe"]["httpGet"]["path"] = json!("/ready");
    expect("a wrong probe path", check_probes(&broken), "/ready");
    let mut broken = docs().to_vec();
    gateway_container_mut(&mut broken)["args"] = json!(["--bind=127.0.0.1:8080"]);
    expect("a loopback listener", check_probes(&broken), "loopback");

    // A grace period shorter than preStop + drain, and a drain made longer than the grace period.
    let mut broken = docs().to_vec();
    let d = broken
        .iter_mut()
        .find(|d| d["kind"] == "Deployment" && name_of(d) == "chat2sql-gateway")
        .expect("the gateway Deployment");
    d["spec"]["template"]["spec"]["terminationGracePeriodSeconds"] = json!(10);
    expect(
        "a short grace period",
        check_drain(&broken),
        "leaves no margin",
    );
    let mut broken = docs().to_vec();
    gateway_container_mut(&mut broken)["args"]
        .as_array_mut()
        .unwrap()
        .push(json!("--shutdown-grace-secs=60"));
    expect(
        "a long drain",
        check_drain(&broken),
        "C2S_SHUTDOWN_GRACE_SECS 60",
    );

    // An HPA aimed at a Deployment that does not exist; an Ingress aimed at a missing port.
    let mut broken = docs().to_vec();
    for h in broken
        .iter_mut()
        .filter(|d| d["kind"] == "HorizontalPodAutoscaler")
    {
        h["spec"]["scaleTargetRef"]["name"] = json!("chat2sql-nope");
    }
    let problems = check_wiring(&broken);
    expect(
        "a mistargeted HPA",
        problems.clone(),
        "no Deployment chat2sql-nope",
    );
    expect(
        "a Deployment without HPA",
        problems,
        "0 HorizontalPodAutoscalers",
    );
    let mut broken = docs().to_vec();
    for i in broken.iter_mut().filter(|d| d["kind"] == "Ingress") {
        i["spec"]["rules"][0]["http"]["paths"][0]["backend"]["service"]["port"] =
            json!({"name": "grpc"});
    }
    expect(
        "an Ingress to a missing port",
        check_wiring(&broken),
        "has no port",
    );
}

/// The probe paths of the render, asked of a real gateway and a real worker: 200, and 404 for a path
/// that does not exist (so a 200 means something).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn probe_paths_answer_on_real_processes() {
    let paths = |bin: Bin| -> BTreeSet<String> {
        let (_, c) = deployment_of(docs(), bin);
        ["readinessProbe", "livenessProbe", "startupProbe"]
            .iter()
            .filter_map(|p| c.pointer(&format!("/{p}/httpGet/path")))
            .filter_map(Value::as_str)
            .map(str::to_owned)
            .collect()
    };
    let gateway_paths = paths(Bin::Gateway);
    let worker_paths = paths(Bin::Worker);
    assert!(gateway_paths.contains("/readyz") && gateway_paths.contains("/healthz"));
    assert!(!worker_paths.is_empty());

    let metrics_port = free_port();
    let cluster = Cluster::builder("k8s_probes")
        .gateways(1)
        .workers(1)
        .worker_args([
            "--metrics-bind".to_owned(),
            format!("127.0.0.1:{metrics_port}"),
        ])
        .start()
        .await;
    let gw = cluster.gateway(0).addr();
    for path in &gateway_paths {
        let (status, body) = http_get(gw, path).await;
        assert_eq!(status, 200, "gateway GET {path}: {body}");
    }
    let (status, _) = http_get(gw, "/no-such-probe-path").await;
    assert_eq!(status, 404, "the gateway answers 404 for a made-up path");

    let worker: std::net::SocketAddr = format!("127.0.0.1:{metrics_port}").parse().unwrap();
    for path in &worker_paths {
        let (status, body) = http_get(worker, path).await;
        assert_eq!(
            status,
            200,
            "worker GET {path}: {}",
            &body[..body.len().min(200)]
        );
        // The exporter's listener answers any path: check that it is the metrics that answered.
        assert!(
            body.contains("c2s_jobs_total"),
            "worker GET {path} is not its metrics"
        );
    }
}
