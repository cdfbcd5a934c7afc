//! The docker-compose cluster (docker-compose.yml, deploy/docker/Dockerfile.*, and the files they
//! mount), checked without a Docker engine: the compose file against the compose-spec JSON schema,
//! every C2S_* variable against the binaries' real `--help`, every mounted file for existence and
//! consistency with the services, and the load balancer's nginx configuration with `nginx -t`.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use crate::harness::deploy::{deploy_path, venv_tool, ConfigSurface};
use crate::harness::workspace_root;
use serde_yaml_ng::Value as Yaml;

const GATEWAY_DOCKERFILE: &str = "deploy/docker/Dockerfile.gateway";
const WORKER_DOCKERFILE: &str = "deploy/docker/Dockerfile.worker";

// ---------------------------------------------------------------------------------------------------------
// Reading the compose file
// ---------------------------------------------------------------------------------------------------------

fn compose_path() -> PathBuf {
    workspace_root().join("docker-compose.yml")
}

fn compose_text() -> String {
    std::fs::read_to_string(compose_path()).expect("docker-compose.yml at the repository root")
}

/// The compose file as YAML, with the `<<:` merge keys applied (what docker compose sees).
fn compose() -> Yaml {
    let mut doc: Yaml =
        serde_yaml_ng::from_str(&compose_text()).expect("docker-compose.yml is YAML");
    doc.apply_merge().expect("merge keys of docker-compose.yml");
    doc
}

fn services(doc: &Yaml) -> BTreeMap<String, &Yaml> {
    doc["services"]
        .as_mapping()
        .expect("`services` mapping")
        .iter()
        .map(|(k, v)| (k.as_str().expect("service name").to_owned(), v))
        .collect()
}

fn scalar(v: &Yaml) -> String {
    match v {
        Yaml::String(s) => s.clone(),
        Yaml::Number(n) => n.to_string(),
        Yaml::Bool(b) => b.to_string(),
        Yaml::Null => String::new(),
        other => panic!("expected a scalar, got {other:?}"),
    }
}

/// `environment:` of a service, in either compose form (mapping or `KEY=value` list).
fn service_env(svc: &Yaml) -> BTreeMap<String, String> {
    match &svc["environment"] {
        Yaml::Null => BTreeMap::new(),
        Yaml::Mapping(m) => m.iter().map(|(k, v)| (scalar(k), scalar(v))).collect(),
        Yaml::Sequence(items) => items
            .iter()
            .map(|item| {
                let item = scalar(item);
                match item.split_once('=') {
                    Some((k, v)) => (k.to_owned(), v.to_owned()),
                    None => (item, String::new()),
                }
            })
            .collect(),
        other => panic!("unexpected environment {other:?}"),
    }
}

/// The Dockerfile a service is built from (relative to the repository), if it is built.
fn built_from(svc: &Yaml) -> Option<String> {
    match &svc["build"] {
        Yaml::Null => None,
        Yaml::String(context) => Some(join_rel(context, "Dockerfile")),
        build => {
            let context = build["context"].as_str().unwrap_or(".");
            let dockerfile = build["dockerfile"].as_str().unwrap_or("Dockerfile");
            Some(join_rel(context, dockerfile))
        }
    }
}

fn join_rel(dir: &str, file: &str) -> String {
    let dir = dir.trim_start_matches("./").trim_end_matches('/');
    if dir.is_empty() || dir == "." {
        file.to_owned()
    } else {
        format!("{dir}/{file}")
    }
}

/// The compose profiles a service belongs to (none: it is part of the default stack).
fn profiles_of(svc: &Yaml) -> Vec<String> {
    svc["profiles"]
        .as_sequence()
        .map(|p| p.iter().map(scalar).collect())
        .unwrap_or_default()
}

/// Services of the default stack (no profile) built from `dockerfile`.
fn services_built_from<'a>(doc: &'a Yaml, dockerfile: &str) -> BTreeMap<String, &'a Yaml> {
    profile_services_built_from(doc, dockerfile, None)
}

/// Services built from `dockerfile` in `profile` (None: the default stack).
fn profile_services_built_from<'a>(
    doc: &'a Yaml,
    dockerfile: &str,
    profile: Option<&str>,
) -> BTreeMap<String, &'a Yaml> {
    services(doc)
        .into_iter()
        .filter(|(_, svc)| built_from(svc).as_deref() == Some(dockerfile))
        .filter(|(_, svc)| {
            let profiles = profiles_of(svc);
            match profile {
                None => profiles.is_empty(),
                Some(p) => profiles.iter().any(|x| x == p),
            }
        })
        .collect()
}

/// Bind mounts of a service as (source relative to the repository, target in the container).
fn bind_mounts(svc: &Yaml) -> Vec<(String, String)> {
    let mut mounts = Vec::new();
    for volume in svc["volumes"].as_sequence().into_iter().flatten() {
        match volume {
            Yaml::String(short) => {
                let mut parts = short.split(':');
                let source = parts.next().unwrap_or_default();
                let target = parts.next().unwrap_or_default();
                if source.starts_with('.') || source.starts_with('/') {
                    mounts.push((
                        source.trim_start_matches("./").to_owned(),
                        target.to_owned(),
                    ));
                }
            }
            long if long["type"].as_str() == Some("bind") => mounts.push((
                scalar(&long["source"]).trim_start_matches("./").to_owned(),
                scalar(&long["target"]),
            )),
            _ => {}
        }
    }
    mounts
}

/// Named volumes a service uses.
fn named_volumes(svc: &Yaml) -> Vec<String> {
    let mut names = Vec::new();
    for volume in svc["volumes"].as_sequence().into_iter().flatten() {
        match volume {
            Yaml::String(short) => {
                let source = short.split(':').next().unwrap_or_default();
                if short.contains(':') && !source.starts_with('.') && !source.starts_with('/') {
                    names.push(source.to_owned());
                }
            }
            long if long["type"].as_str() == Some("volume") => names.push(scalar(&long["source"])),
            _ => {}
        }
    }
    names
}

/// Published ports of a service as (host port, container port).
fn published_ports(svc: &Yaml) -> Vec<(u16, u16)> {
    let mut ports = Vec::new();
    for port in svc["ports"].as_sequence().into_iter().flatten() {
        match port {
            Yaml::Mapping(_) => ports.push((
                scalar(&port["published"]).parse().expect("published port"),
                scalar(&port["target"]).parse().expect("target port"),
            )),
            short => {
                let short = scalar(short);
                let parts: Vec<&str> = short
                    .split('/')
                    .next()
                    .unwrap_or_default()
                    .split(':')
                    .collect();
                assert!(
                    parts.len() >= 2,
                    "port `{short}` publishes no fixed host port"
                );
                let host = parts[parts.len() - 2].parse().expect("host port");
                let container = parts[parts.len() - 1].parse().expect("container port");
                ports.push((host, container));
            }
        }
    }
    ports
}

/// The ports the compose file's header comment promises (`localhost:NNNN`).
fn header_ports(text: &str) -> BTreeSet<u16> {
    let mut ports = BTreeSet::new();
    for line in text
        .lines()
        .take_while(|l| l.trim_start().starts_with('#') || l.trim().is_empty())
    {
        let mut rest = line;
        while let Some(at) = rest.find("localhost:") {
            rest = &rest[at + "localhost:".len()..];
            let digits: String = rest.chars().take_while(char::is_ascii_digit).collect();
            ports.insert(digits.parse().expect("a port after localhost:"));
        }
    }
    ports
}

/// `15s`, `1m30s`, `2m` → seconds.
fn duration_secs(text: &str) -> u64 {
    let mut total = 0;
    let mut number = String::new();
    for c in text.chars() {
        match c {
            '0'..='9' => number.push(c),
            'h' | 'm' | 's' => {
                let n: u64 = number
                    .parse()
                    .unwrap_or_else(|_| panic!("duration `{text}`"));
                total += n * match c {
                    'h' => 3600,
                    'm' => 60,
                    _ => 1,
                };
                number.clear();
            }
            _ => panic!("unsupported duration `{text}`"),
        }
    }
    assert!(number.is_empty(), "duration `{text}` has no unit");
    total
}

/// The port of a `host:port` / `scheme://host:port/…` address.
fn port_of(addr: &str) -> u16 {
    let host_port = host_port(addr);
    host_port
        .rsplit(':')
        .next()
        .unwrap()
        .parse()
        .unwrap_or_else(|_| panic!("no port in `{addr}`"))
}

/// The host of a `host:port` / `scheme://user:pw@host:port/…` address.
fn host_of(addr: &str) -> &str {
    let host_port = host_port(addr);
    host_port.rsplit_once(':').map_or(host_port, |(h, _)| h)
}

fn host_port(addr: &str) -> &str {
    let rest = addr.split_once("://").map_or(addr, |(_, r)| r);
    let rest = rest.split('/').next().unwrap_or(rest);
    rest.rsplit_once('@').map_or(rest, |(_, r)| r)
}

// ---------------------------------------------------------------------------------------------------------
// Reading the Dockerfiles
// ---------------------------------------------------------------------------------------------------------

/// The instructions of a Dockerfile with their continuation lines joined (comments dropped).
fn dockerfile_instructions(text: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut current = String::new();
    for line in text.lines() {
        let trimmed = line.trim();
        if trimmed.starts_with('#') || (trimmed.is_empty() && current.is_empty()) {
            continue;
        }
        match trimmed.strip_suffix('\\') {
            Some(head) => {
                current.push_str(head);
                current.push(' ');
            }
            None => {
                current.push_str(trimmed);
                out.push(std::mem::take(&mut current));
            }
        }
    }
    if !current.is_empty() {
        out.push(current);
    }
    out
}

/// The variables `ENV` sets in a Dockerfile (`ENV K=V K2=V2` and the legacy `ENV K V`).
fn dockerfile_env(text: &str) -> BTreeMap<String, String> {
    let mut env = BTreeMap::new();
    for instruction in dockerfile_instructions(text) {
        let Some(rest) = instruction.strip_prefix("ENV ") else {
            continue;
        };
        let rest = rest.trim();
        if rest
            .split_whitespace()
            .next()
            .is_some_and(|w| w.contains('='))
        {
            for pair in rest.split_whitespace() {
                let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
                env.insert(k.to_owned(), v.trim_matches('"').to_owned());
            }
        } else if let Some((k, v)) = rest.split_once(char::is_whitespace) {
            env.insert(k.to_owned(), v.trim().to_owned());
        }
    }
    env
}

fn dockerfile_instruction<'a>(instructions: &'a [String], name: &str) -> Vec<&'a str> {
    instructions
        .iter()
        .filter_map(|i| i.strip_prefix(name).and_then(|r| r.strip_prefix(' ')))
        .collect()
}

fn read_repo_file(rel: &str) -> String {
    std::fs::read_to_string(workspace_root().join(rel))
        .unwrap_or_else(|e| panic!("reading {rel}: {e}"))
}

// ---------------------------------------------------------------------------------------------------------
// The checks themselves (kept as functions so that their own tests below can feed them wrong input)
// ---------------------------------------------------------------------------------------------------------

/// Keys of `env` the binary does not read: every variable given to a gateway or worker must be real.
fn unknown_env_keys<'a>(
    keys: impl IntoIterator<Item = &'a String>,
    surface: &ConfigSurface,
) -> Vec<String> {
    keys.into_iter()
        .filter(|k| !surface.env_keys.contains(*k))
        .cloned()
        .collect()
}

fn run(cmd: &mut Command) -> Output {
    cmd.output()
        .unwrap_or_else(|e| panic!("running {cmd:?}: {e}"))
}

fn output_text(out: &Output) -> String {
    format!(
        "status {}\nstdout:\n{}\nstderr:\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

fn check_compose_schema(file: &Path) -> Output {
    run(Command::new(venv_tool("check-jsonschema"))
        .args(["--builtin-schema", "vendor.compose-spec"])
        .arg(file))
}

/// Runs `nginx -t` on a copy of the LB configuration in `dir`; `hosts` rewrites the gateway names.
fn nginx_test(dir: &Path, nginx_conf: &str, topology: &str, listen: &str) -> Output {
    std::fs::create_dir_all(dir).unwrap();
    std::fs::write(dir.join("nginx.conf"), nginx_conf).unwrap();
    std::fs::write(dir.join("topology.conf"), topology).unwrap();
    std::fs::write(dir.join("topology.listen.conf"), listen).unwrap();
    let nginx = ["/usr/sbin/nginx", "/usr/bin/nginx"]
        .into_iter()
        .map(PathBuf::from)
        .find(|p| p.exists())
        .expect("nginx is missing: run `bash scripts/tools.sh` (scripts/test.sh does)");
    run(Command::new(nginx)
        .arg("-t")
        .arg("-p")
        .arg(dir)
        .arg("-c")
        .arg(dir.join("nginx.conf"))
        .arg("-g")
        .arg(format!("pid {};", dir.join("nginx.pid").display())))
}

/// A fresh scratch directory for this test process.
fn scratch_dir(name: &str) -> PathBuf {
    let dir =
        std::env::temp_dir().join(format!("c2s-deploy-compose-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

// ---------------------------------------------------------------------------------------------------------
// Tests
// ---------------------------------------------------------------------------------------------------------

#[test]
fn compose_file_validates_against_the_compose_spec() {
    let out = check_compose_schema(&compose_path());
    assert!(
        out.status.success(),
        "docker-compose.yml is not a valid compose file:\n{}",
        output_text(&out)
    );

    // The validator does reject a wrong file: the same (merged) document validates, and with a
    // misspelt service key it does not.
    let dir = scratch_dir("schema");
    let mut doc = compose();
    let same = dir.join("same.yml");
    std::fs::write(&same, serde_yaml_ng::to_string(&doc).unwrap()).unwrap();
    let out = check_compose_schema(&same);
    assert!(
        out.status.success(),
        "the merged compose document does not validate:\n{}",
        output_text(&out)
    );
    doc["services"]["gateway-1"]
        .as_mapping_mut()
        .expect("gateway-1 service")
        .insert("restrat".into(), "always".into());
    let wrong = dir.join("wrong.yml");
    std::fs::write(&wrong, serde_yaml_ng::to_string(&doc).unwrap()).unwrap();
    let out = check_compose_schema(&wrong);
    assert!(
        !out.status.success(),
        "a misspelt service key passed the schema check:\n{}",
        output_text(&out)
    );
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn two_gateways_and_two_workers_with_real_config_keys_only() {
    let doc = compose();
    let gateway_surface = ConfigSurface::gateway();
    let worker_surface = ConfigSurface::worker();
    let gateways = services_built_from(&doc, GATEWAY_DOCKERFILE);
    let workers = services_built_from(&doc, WORKER_DOCKERFILE);
    assert_eq!(
        gateways.keys().collect::<Vec<_>>(),
        ["gateway-1", "gateway-2"],
        "gateway services"
    );
    assert_eq!(
        workers.keys().collect::<Vec<_>>(),
        ["worker-1", "worker-2"],
        "worker services"
    );
    let all = services(&doc);

    let mut node_ids = BTreeSet::new();
    for (name, svc) in &gateways {
        let env = service_env(svc);
        let unknown = unknown_env_keys(env.keys(), &gateway_surface);
        assert!(
            unknown.is_empty(),
            "{name} sets variables the gateway does not read: {unknown:?}"
        );
        assert!(
            node_ids.insert(env.get("C2S_NODE_ID").cloned()),
            "{name}: C2S_NODE_ID missing or not distinct"
        );
        let redis = env
            .get("C2S_REDIS_URL")
            .unwrap_or_else(|| panic!("{name}: no C2S_REDIS_URL"));
        assert!(
            all.contains_key(host_of(redis)),
            "{name}: Redis host of {redis} is no service"
        );
        // A networked gateway refuses to start without a JWT key or the explicit insecure flag.
        let auth = [
            "C2S_JWT_SECRET",
            "C2S_JWT_SECRET_FILE",
            "C2S_JWT_PUBLIC_KEY_FILE",
            "C2S_JWT_JWKS_FILE",
        ];
        assert!(
            env.get("C2S_INSECURE_NO_AUTH").is_some_and(|v| v == "true")
                || auth.iter().any(|k| env.contains_key(*k)),
            "{name} would refuse to start: no JWT key and no C2S_INSECURE_NO_AUTH=true"
        );
        let otel = env
            .get("C2S_OTEL_ENDPOINT")
            .unwrap_or_else(|| panic!("{name}: no C2S_OTEL_ENDPOINT"));
        assert!(
            all.contains_key(host_of(otel)),
            "{name}: OTLP host of {otel} is no service"
        );
    }

    let mut worker_ids = BTreeSet::new();
    for (name, svc) in &workers {
        let env = service_env(svc);
        let unknown = unknown_env_keys(env.keys(), &worker_surface);
        assert!(
            unknown.is_empty(),
            "{name} sets variables the worker does not read: {unknown:?}"
        );
        assert!(
            worker_ids.insert(env.get("C2S_WORKER_ID").cloned()),
            "{name}: C2S_WORKER_ID missing or not distinct"
        );
        for key in ["C2S_REDIS_URL", "C2S_DATABASE_URL", "C2S_OTEL_ENDPOINT"] {
            let url = env.get(key).unwrap_or_else(|| panic!("{name}: no {key}"));
            assert!(
                all.contains_key(host_of(url)),
                "{name}: host of {key}={url} is no service"
            );
        }
        assert!(
            env.contains_key("C2S_METRICS_BIND"),
            "{name}: no metrics listener for Prometheus"
        );
    }

    for (dockerfile, surface) in [
        (GATEWAY_DOCKERFILE, &gateway_surface),
        (WORKER_DOCKERFILE, &worker_surface),
    ] {
        let env = dockerfile_env(&read_repo_file(dockerfile));
        let c2s: Vec<&String> = env.keys().filter(|k| k.starts_with("C2S_")).collect();
        assert!(!c2s.is_empty(), "{dockerfile} sets no C2S_ default");
        let unknown = unknown_env_keys(c2s, surface);
        assert!(
            unknown.is_empty(),
            "{dockerfile} sets unknown variables: {unknown:?}"
        );
    }
}

/// `docker compose --profile redis-cluster up`: a 3-master + 3-replica Redis Cluster (node timeout 2 s)
/// formed once by an init service, and two gateways and two workers on it (`C2S_REDIS_CLUSTER=true`,
/// seeds that are nodes of the profile) behind their own load balancer; nothing of it in the default stack.
#[test]
fn the_redis_cluster_profile_runs_the_app_on_a_3_plus_3_cluster() {
    let doc = compose();
    let all = services(&doc);
    let in_profile = |name: &str| profiles_of(all[name]).iter().any(|p| p == "redis-cluster");
    let nodes: Vec<&String> = all
        .keys()
        .filter(|n| n.starts_with("redis-node-"))
        .collect();
    assert_eq!(nodes.len(), 6, "six Redis Cluster nodes: {nodes:?}");
    for name in &nodes {
        assert!(
            in_profile(name),
            "{name} belongs to the redis-cluster profile only"
        );
        let command: Vec<String> = all[name.as_str()]["command"]
            .as_sequence()
            .unwrap_or_else(|| panic!("{name}: command as a list"))
            .iter()
            .map(scalar)
            .collect();
        let arg = |flag: &str| {
            command
                .iter()
                .position(|a| a == flag)
                .and_then(|i| command.get(i + 1))
                .cloned()
        };
        assert_eq!(
            arg("--cluster-enabled").as_deref(),
            Some("yes"),
            "{name}: {command:?}"
        );
        assert_eq!(
            arg("--cluster-node-timeout").as_deref(),
            Some("2000"),
            "{name}: {command:?}"
        );
    }
    let init = all
        .get("redis-cluster-init")
        .expect("a redis-cluster-init service");
    assert!(in_profile("redis-cluster-init"));
    let script = init["command"]
        .as_sequence()
        .and_then(|c| c.first())
        .map(scalar)
        .expect("init script");
    assert!(
        script.contains("--cluster create") && script.contains("--cluster-replicas 1"),
        "the init service creates a cluster with one replica per master: {script}"
    );
    for n in 1..=6 {
        assert!(
            script.contains("redis-node-$$i") || script.contains(&format!("redis-node-{n}")),
            "{script}"
        );
    }
    let gateway_surface = ConfigSurface::gateway();
    let worker_surface = ConfigSurface::worker();
    for (dockerfile, surface, expected) in [
        (
            GATEWAY_DOCKERFILE,
            &gateway_surface,
            ["gateway-c1", "gateway-c2"],
        ),
        (
            WORKER_DOCKERFILE,
            &worker_surface,
            ["worker-c1", "worker-c2"],
        ),
    ] {
        let apps = profile_services_built_from(&doc, dockerfile, Some("redis-cluster"));
        assert_eq!(
            apps.keys().collect::<Vec<_>>(),
            expected,
            "app services of the profile"
        );
        for (name, svc) in &apps {
            let env = service_env(svc);
            let unknown = unknown_env_keys(env.keys(), surface);
            assert!(
                unknown.is_empty(),
                "{name} sets unknown variables: {unknown:?}"
            );
            assert_eq!(
                env.get("C2S_REDIS_CLUSTER").map(String::as_str),
                Some("true"),
                "{name}"
            );
            let seeds = &env["C2S_REDIS_URL"];
            for seed in seeds.split(',') {
                let host = host_of(seed);
                assert!(
                    nodes.iter().any(|n| n.as_str() == host),
                    "{name}: seed {seed} is no cluster node"
                );
            }
            assert!(
                svc["depends_on"]["redis-cluster-init"]["condition"].as_str()
                    == Some("service_completed_successfully"),
                "{name} starts once the cluster is formed"
            );
        }
    }
    let lb = all.get("lb-cluster").expect("an lb-cluster service");
    let mounts: BTreeMap<String, String> =
        bind_mounts(lb).into_iter().map(|(s, t)| (t, s)).collect();
    let topology = read_repo_file(&mounts["/etc/nginx/topology.conf"]);
    for gw in ["gateway-c1:8080", "gateway-c2:8080"] {
        assert!(
            topology.contains(gw),
            "lb-cluster's upstream names {gw}: {topology}"
        );
    }
    assert!(
        !topology.contains("gateway-1:"),
        "lb-cluster balances the cluster-mode gateways only"
    );
}

/// The checker itself: wrong names, and names of the other binary, are caught.
#[test]
fn the_env_key_check_catches_wrong_variables() {
    let gateway = ConfigSurface::gateway();
    let worker = ConfigSurface::worker();
    let env: Vec<String> = [
        "C2S_BIND",
        "C2S_BIND_ADDR",
        "C2S_DATABASE_URL",
        "C2S_REDIS_URL",
    ]
    .into_iter()
    .map(String::from)
    .collect();
    assert_eq!(
        unknown_env_keys(&env, &gateway),
        ["C2S_BIND_ADDR", "C2S_DATABASE_URL"]
    );
    assert_eq!(
        unknown_env_keys(&env, &worker),
        ["C2S_BIND", "C2S_BIND_ADDR"]
    );
    let node_id = vec!["C2S_NODE_ID".to_owned()];
    assert!(unknown_env_keys(&node_id, &gateway).is_empty());
    assert_eq!(unknown_env_keys(&node_id, &worker), ["C2S_NODE_ID"]);

    let dockerfile = "FROM x\n# ENV C2S_COMMENTED=1\nENV C2S_A=1 \\\n    C2S_B=\"two\"\nENV C2S_LEGACY value with spaces\nRUN true\n";
    let parsed = dockerfile_env(dockerfile);
    assert_eq!(
        parsed.keys().collect::<Vec<_>>(),
        ["C2S_A", "C2S_B", "C2S_LEGACY"]
    );
    assert_eq!(parsed["C2S_B"], "two");
    assert_eq!(parsed["C2S_LEGACY"], "value with spaces");
}

#[test]
fn dockerfiles_build_their_binary_and_check_its_listener() {
    for (dockerfile, package, binary, bind_key) in [
        (GATEWAY_DOCKERFILE, "c2s-gateway", "gateway", "C2S_BIND"),
        (
            WORKER_DOCKERFILE,
            "c2s-worker",
            "worker",
            "C2S_METRICS_BIND",
        ),
    ] {
        let text = read_repo_file(dockerfile);
        let instructions = dockerfile_instructions(&text);
        let from = dockerfile_instruction(&instructions, "FROM");
        assert_eq!(
            from,
            ["rust:1-bookworm AS builder", "debian:bookworm-slim"],
            "{dockerfile}: stages"
        );
        let runs = dockerfile_instruction(&instructions, "RUN");
        let build = runs
            .iter()
            .find(|r| r.contains("cargo build"))
            .unwrap_or_else(|| panic!("{dockerfile}: no cargo build"));
        assert!(
            build.contains(&format!("cargo build --release --locked -p {package}")),
            "{dockerfile}: builds `{build}`"
        );
        for cache in ["/usr/local/cargo/registry", "/src/target"] {
            assert!(
                build.contains("type=cache,") && build.contains(&format!("target={cache}")),
                "{dockerfile}: no cache mount on {cache}"
            );
        }
        let entry = dockerfile_instruction(&instructions, "ENTRYPOINT");
        assert_eq!(
            entry,
            [format!("[\"/usr/local/bin/{binary}\"]")],
            "{dockerfile}: entrypoint"
        );
        assert!(
            dockerfile_instruction(&instructions, "COPY")
                .iter()
                .any(|c| c.ends_with(&format!("/usr/local/bin/{binary}"))),
            "{dockerfile}: the binary is not copied to /usr/local/bin/{binary}"
        );
        let user = dockerfile_instruction(&instructions, "USER");
        assert!(
            user.last()
                .is_some_and(|u| !u.starts_with('0') && !u.starts_with("root")),
            "{dockerfile}: must run as a non-root user, has USER {user:?}"
        );
        // The listener the ENV default binds, the EXPOSEd port and the HEALTHCHECK agree.
        let env = dockerfile_env(&text);
        let bind = env
            .get(bind_key)
            .unwrap_or_else(|| panic!("{dockerfile}: no ENV {bind_key}"));
        assert!(
            bind.starts_with("0.0.0.0:"),
            "{dockerfile}: {bind_key}={bind} is not reachable from outside"
        );
        let port = port_of(bind);
        assert_eq!(
            dockerfile_instruction(&instructions, "EXPOSE"),
            [port.to_string()],
            "{dockerfile}: EXPOSE"
        );
        let health = dockerfile_instruction(&instructions, "HEALTHCHECK");
        assert_eq!(health.len(), 1, "{dockerfile}: one HEALTHCHECK");
        assert!(
            health[0].contains("curl -fsS")
                && health[0].contains(&format!("http://127.0.0.1:{port}/")),
            "{dockerfile}: the HEALTHCHECK `{}` does not probe port {port}",
            health[0]
        );
    }

    // The build context (the repository root) keeps the whole Cargo workspace.
    let ignore = read_repo_file(".dockerignore");
    let patterns: Vec<&str> = ignore
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(|l| l.trim_end_matches('/'))
        .collect();
    for needed in ["target", ".git"] {
        assert!(
            patterns.contains(&needed),
            ".dockerignore does not exclude {needed}/"
        );
    }
    for kept in [
        "Cargo.toml",
        "Cargo.lock",
        "shared",
        "gateway",
        "worker",
        "tests",
        "loadgen",
        "*",
        "**",
    ] {
        assert!(
            !patterns.contains(&kept),
            ".dockerignore excludes {kept}, which the build needs"
        );
    }
}

#[test]
fn mounted_files_exist_and_match_the_services() {
    let doc = compose();
    let root = workspace_root();
    let all = services(&doc);
    let declared: BTreeSet<String> = doc["volumes"]
        .as_mapping()
        .map(|m| m.keys().map(scalar).collect())
        .unwrap_or_default();
    let mut mount_count = 0;
    for (name, svc) in &all {
        for (source, target) in bind_mounts(svc) {
            mount_count += 1;
            assert!(
                root.join(&source).is_file(),
                "{name} mounts {source}, which does not exist"
            );
            assert!(
                target.starts_with('/'),
                "{name}: mount target {target} is not absolute"
            );
        }
        for volume in named_volumes(svc) {
            assert!(
                declared.contains(&volume),
                "{name} uses the undeclared volume {volume}"
            );
        }
        if let Some(dockerfile) = built_from(svc) {
            assert!(
                root.join(&dockerfile).is_file(),
                "{name} is built from {dockerfile}, which does not exist"
            );
        }
    }
    assert!(
        mount_count >= 10,
        "only {mount_count} bind mounts: the compose file was not read"
    );

    // The LB: nginx.conf and the topology files it includes, where it includes them.
    let lb = all.get("lb").expect("an `lb` service");
    assert!(
        lb["image"]
            .as_str()
            .is_some_and(|i| i.starts_with("nginx:")),
        "lb runs nginx"
    );
    let lb_mounts: BTreeMap<String, String> =
        bind_mounts(lb).into_iter().map(|(s, t)| (t, s)).collect();
    assert_eq!(
        lb_mounts.get("/etc/nginx/nginx.conf").map(String::as_str),
        Some("deploy/nginx/nginx.conf")
    );
    let nginx_conf = read_repo_file("deploy/nginx/nginx.conf");
    let includes: Vec<&str> = nginx_conf
        .lines()
        .filter_map(|l| l.trim().strip_prefix("include "))
        .map(|l| l.trim_end_matches(';').trim())
        .collect();
    assert_eq!(
        includes,
        ["topology.conf", "topology.listen.conf"],
        "includes of nginx.conf"
    );
    for include in &includes {
        assert!(
            lb_mounts.contains_key(&format!("/etc/nginx/{include}")),
            "lb does not mount /etc/nginx/{include}"
        );
    }
    assert_eq!(
        lb_mounts["/etc/nginx/topology.conf"],
        "deploy/nginx/topology.compose.conf"
    );
    assert_eq!(
        lb_mounts["/etc/nginx/topology.listen.conf"],
        "deploy/nginx/topology.listen.compose.conf"
    );

    // The upstream servers are exactly the gateway services on their listening port.
    let gateways = services_built_from(&doc, GATEWAY_DOCKERFILE);
    let gateway_default_bind =
        dockerfile_env(&read_repo_file(GATEWAY_DOCKERFILE))["C2S_BIND"].clone();
    let gateway_targets: BTreeSet<String> = gateways
        .iter()
        .map(|(name, svc)| {
            let bind = service_env(svc)
                .get("C2S_BIND")
                .cloned()
                .unwrap_or_else(|| gateway_default_bind.clone());
            format!("{name}:{}", port_of(&bind))
        })
        .collect();
    let topology = read_repo_file("deploy/nginx/topology.compose.conf");
    let upstream: BTreeSet<String> = topology
        .lines()
        .filter_map(|l| l.trim().strip_prefix("server "))
        .map(|l| {
            l.split_whitespace()
                .next()
                .unwrap()
                .trim_end_matches(';')
                .to_owned()
        })
        .collect();
    assert_eq!(
        upstream, gateway_targets,
        "nginx upstream vs the gateway services"
    );
    let listen = read_repo_file("deploy/nginx/topology.listen.compose.conf");
    let listen_port: u16 = listen
        .lines()
        .find_map(|l| l.trim().strip_prefix("listen "))
        .expect("a listen directive")
        .trim_end_matches(';')
        .trim()
        .parse()
        .expect("listen <port>");
    assert!(
        published_ports(lb)
            .iter()
            .any(|&(_, container)| container == listen_port),
        "lb does not publish the port nginx listens on ({listen_port})"
    );

    // Prometheus scrapes exactly the gateways and the workers' metrics listeners.
    let workers = services_built_from(&doc, WORKER_DOCKERFILE);
    let worker_targets: BTreeSet<String> = workers
        .iter()
        .map(|(name, svc)| format!("{name}:{}", port_of(&service_env(svc)["C2S_METRICS_BIND"])))
        .collect();
    let prometheus = all.get("prometheus").expect("a prometheus service");
    let (prom_source, _) = bind_mounts(prometheus)
        .into_iter()
        .find(|(_, t)| t == "/etc/prometheus/prometheus.yml")
        .expect("prometheus mounts /etc/prometheus/prometheus.yml");
    let prom: Yaml =
        serde_yaml_ng::from_str(&read_repo_file(&prom_source)).expect("prometheus.yml is YAML");
    let scraped: BTreeSet<String> = prom["scrape_configs"]
        .as_sequence()
        .expect("scrape_configs")
        .iter()
        .flat_map(|job| {
            job["static_configs"]
                .as_sequence()
                .cloned()
                .unwrap_or_default()
        })
        .flat_map(|sc| sc["targets"].as_sequence().cloned().unwrap_or_default())
        .map(|t| scalar(&t))
        .collect();
    let expected: BTreeSet<String> = gateway_targets.union(&worker_targets).cloned().collect();
    assert_eq!(
        scraped, expected,
        "Prometheus targets vs the gateway and worker services"
    );

    // The collector: its config is mounted where its command reads it, it receives OTLP/HTTP on the
    // port the nodes export to, and it exports to Jaeger's OTLP port.
    let collector = all
        .get("otel-collector")
        .expect("an otel-collector service");
    let command: Vec<String> = collector["command"]
        .as_sequence()
        .expect("collector command")
        .iter()
        .map(scalar)
        .collect();
    let config_path = command
        .iter()
        .find_map(|a| a.strip_prefix("--config="))
        .expect("collector --config=");
    let (config_source, _) = bind_mounts(collector)
        .into_iter()
        .find(|(_, t)| t == config_path)
        .unwrap_or_else(|| panic!("the collector does not mount its config at {config_path}"));
    let config: Yaml =
        serde_yaml_ng::from_str(&read_repo_file(&config_source)).expect("collector config is YAML");
    let otlp_http = scalar(&config["receivers"]["otlp"]["protocols"]["http"]["endpoint"]);
    let node_otel = service_env(gateways["gateway-1"])["C2S_OTEL_ENDPOINT"].clone();
    assert_eq!(host_of(&node_otel), "otel-collector");
    assert_eq!(
        port_of(&otlp_http),
        port_of(&node_otel),
        "OTLP/HTTP port of the collector vs C2S_OTEL_ENDPOINT"
    );
    let exporters = config["service"]["pipelines"]["traces"]["exporters"]
        .as_sequence()
        .expect("trace exporters");
    let jaeger_endpoint = exporters
        .iter()
        .map(|e| scalar(&config["exporters"][scalar(e).as_str()]["endpoint"]))
        .find(|endpoint| host_of(endpoint) == "jaeger")
        .expect("the traces pipeline exports to jaeger");
    assert_eq!(port_of(&jaeger_endpoint), 4317, "Jaeger's OTLP/gRPC port");
    assert!(all.contains_key("jaeger"), "a jaeger service");

    // PostgreSQL: the demo tables before the role that is granted on them, and the workers log in as
    // that role, with its password, into the database the image creates.
    let postgres = all.get("postgres").expect("a postgres service");
    let mut init: Vec<(String, String)> = bind_mounts(postgres)
        .into_iter()
        .filter(|(_, t)| t.starts_with("/docker-entrypoint-initdb.d/"))
        .map(|(s, t)| (t, s))
        .collect();
    init.sort();
    let init_sources: Vec<&str> = init.iter().map(|(_, s)| s.as_str()).collect();
    assert_eq!(
        init_sources,
        [
            "deploy/postgres/demo.sql",
            "deploy/postgres/reader-role.sql"
        ],
        "init scripts in run order"
    );
    let pg_env = service_env(postgres);
    let reader_sql = read_repo_file("deploy/postgres/reader-role.sql");
    for (name, svc) in &workers {
        let url = service_env(svc)["C2S_DATABASE_URL"].clone();
        let creds = url
            .split_once("://")
            .unwrap()
            .1
            .split_once('@')
            .expect("user:password@ in C2S_DATABASE_URL")
            .0;
        let (user, password) = creds.split_once(':').expect("user:password");
        assert_ne!(
            Some(user),
            pg_env.get("POSTGRES_USER").map(String::as_str),
            "{name} must not use the superuser"
        );
        assert!(
            reader_sql.contains(&format!("CREATE ROLE {user} LOGIN PASSWORD '{password}'")),
            "{name}: role {user} / its password are not those of reader-role.sql"
        );
        let db = url.rsplit('/').next().unwrap();
        assert_eq!(
            Some(db),
            pg_env.get("POSTGRES_DB").map(String::as_str),
            "{name}: database"
        );
    }
}

/// The init scripts, run in the compose file's order on a real database, leave a role that reads the
/// demo tables and passes the worker's privilege check (a worker on it starts).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_init_scripts_give_the_workers_a_role_that_reads_the_demo_tables() {
    let db = crate::harness::TestDb::create().await;
    let mut admin = db.connect().await;
    for script in [
        "deploy/postgres/demo.sql",
        "deploy/postgres/reader-role.sql",
    ] {
        sqlx::raw_sql(&read_repo_file(script))
            .execute(&mut admin)
            .await
            .unwrap_or_else(|e| panic!("{script}: {e}"));
    }
    let mut reader = crate::harness::pg_connect(&db.reader_url).await;
    for table in ["customers", "products", "orders"] {
        let n: i64 = sqlx::query_scalar(&format!("SELECT count(*) FROM {table}"))
            .fetch_one(&mut reader)
            .await
            .unwrap_or_else(|e| panic!("the reader cannot read {table}: {e}"));
        assert!(n > 0, "{table} is empty");
    }
    let mut cluster = crate::harness::Cluster::builder("compose_reader_role")
        .gateways(0)
        .workers(0)
        .start()
        .await;
    cluster.db = Some(db);
    cluster.add_worker(&[]).await;
}

#[test]
fn grafana_provisions_the_dashboard_and_its_datasource() {
    let doc = compose();
    let all = services(&doc);
    let grafana = all.get("grafana").expect("a grafana service");
    let env = service_env(grafana);
    assert_eq!(
        env.get("GF_AUTH_ANONYMOUS_ENABLED").map(String::as_str),
        Some("true")
    );
    assert_eq!(
        env.get("GF_AUTH_ANONYMOUS_ORG_ROLE").map(String::as_str),
        Some("Viewer")
    );
    let mounts = bind_mounts(grafana);
    let provisioned = |kind: &str| -> Yaml {
        let (source, _) = mounts
            .iter()
            .find(|(_, t)| t.starts_with(&format!("/etc/grafana/provisioning/{kind}/")))
            .unwrap_or_else(|| panic!("grafana mounts nothing into provisioning/{kind}"));
        serde_yaml_ng::from_str(&read_repo_file(source)).unwrap_or_else(|e| panic!("{source}: {e}"))
    };

    let datasources = provisioned("datasources");
    let datasource = &datasources["datasources"][0];
    assert_eq!(datasource["type"].as_str(), Some("prometheus"));
    let uid = datasource["uid"]
        .as_str()
        .expect("a fixed datasource uid")
        .to_owned();
    let url = scalar(&datasource["url"]);
    assert!(
        all.contains_key(host_of(&url)),
        "datasource URL {url} is no service"
    );
    assert_eq!(
        port_of(&url),
        published_ports(all["prometheus"])[0].1,
        "datasource port"
    );

    let dashboards = provisioned("dashboards");
    let folder = scalar(&dashboards["providers"][0]["options"]["path"]);
    let (json_source, _) = mounts
        .iter()
        .find(|(s, t)| s.ends_with(".json") && Path::new(t).parent() == Some(Path::new(&folder)))
        .unwrap_or_else(|| panic!("grafana mounts no dashboard into {folder}"));
    assert_eq!(json_source, "deploy/grafana/chat2sql-realtime.json");
    let dashboard: serde_json::Value =
        serde_json::from_str(&read_repo_file(json_source)).expect("the dashboard is valid JSON");
    assert!(
        dashboard["panels"]
            .as_array()
            .is_some_and(|p| !p.is_empty()),
        "the dashboard has panels"
    );

    // Every panel's datasource is the provisioned one: either by uid, or through the dashboard's
    // datasource variable, whose type the provisioned datasource must have.
    let variables: BTreeMap<String, String> = dashboard["templating"]["list"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|v| v["type"] == "datasource")
        .map(|v| {
            (
                v["name"].as_str().unwrap().to_owned(),
                v["query"].as_str().unwrap_or_default().to_owned(),
            )
        })
        .collect();
    let mut refs = 0;
    let mut stack = vec![&dashboard["panels"]];
    while let Some(node) = stack.pop() {
        match node {
            serde_json::Value::Object(map) => {
                if let Some(ds_uid) = map.get("datasource").and_then(|d| d["uid"].as_str()) {
                    refs += 1;
                    match ds_uid.strip_prefix("${").and_then(|v| v.strip_suffix('}')) {
                        Some(var) => assert_eq!(
                            variables.get(var).map(String::as_str),
                            Some("prometheus"),
                            "datasource variable ${{{var}}} is not a prometheus datasource variable"
                        ),
                        None => assert_eq!(
                            ds_uid, uid,
                            "a panel names a datasource that is not provisioned"
                        ),
                    }
                }
                stack.extend(map.values());
            }
            serde_json::Value::Array(items) => stack.extend(items),
            _ => {}
        }
    }
    assert!(refs > 0, "no panel names a datasource");
}

#[test]
fn published_ports_are_the_ones_the_header_lists() {
    let text = compose_text();
    let doc = compose();
    let promised = header_ports(&text);
    let mut published = BTreeMap::new();
    for (name, svc) in services(&doc) {
        for (host, container) in published_ports(svc) {
            assert!(
                published.insert(host, (name.clone(), container)).is_none(),
                "host port {host} published twice"
            );
        }
    }
    assert_eq!(
        published.keys().copied().collect::<BTreeSet<_>>(),
        promised,
        "published ports vs the header comment"
    );
    assert_eq!(
        published.get(&8080),
        Some(&("lb".to_owned(), 80)),
        "8080 is the load balancer"
    );
    assert_eq!(
        published.get(&16686).map(|(s, _)| s.as_str()),
        Some("jaeger")
    );
    assert_eq!(
        published.get(&9090).map(|(s, _)| s.as_str()),
        Some("prometheus")
    );
    assert_eq!(
        published.get(&3000).map(|(s, _)| s.as_str()),
        Some("grafana")
    );

    // The header parser reads ports from the leading comment only.
    let sample =
        "# http://localhost:1234/ one\n#   and localhost:99 two\nservices: {} # localhost:5555\n";
    assert_eq!(header_ports(sample), BTreeSet::from([1234, 99]));
}

#[test]
fn startup_order_health_and_shutdown() {
    let doc = compose();
    let all = services(&doc);
    let has_healthcheck = |svc: &Yaml| -> bool {
        if !svc["healthcheck"].is_null() {
            return svc["healthcheck"]["disable"].as_bool() != Some(true);
        }
        built_from(svc).is_some_and(|d| {
            dockerfile_instructions(&read_repo_file(&d))
                .iter()
                .any(|i| i.starts_with("HEALTHCHECK "))
        })
    };
    let mut healthy_deps = 0;
    for (name, svc) in &all {
        assert!(
            svc["restart"].as_str().is_some(),
            "{name} has no restart policy"
        );
        if let Some(deps) = svc["depends_on"].as_mapping() {
            for (dep, how) in deps {
                let dep = scalar(dep);
                let target = all
                    .get(&dep)
                    .unwrap_or_else(|| panic!("{name} depends on unknown {dep}"));
                if how["condition"].as_str() == Some("service_healthy") {
                    healthy_deps += 1;
                    assert!(
                        has_healthcheck(target),
                        "{name} waits for {dep} to be healthy, but it has no healthcheck"
                    );
                }
            }
        }
    }
    for (service, deps) in [
        ("gateway-1", &["redis"][..]),
        ("worker-1", &["redis", "postgres"][..]),
        ("lb", &["gateway-1", "gateway-2"][..]),
    ] {
        for dep in deps {
            assert_eq!(
                all[service]["depends_on"][*dep]["condition"].as_str(),
                Some("service_healthy"),
                "{service} must wait for {dep} to be healthy"
            );
        }
    }
    assert!(
        healthy_deps >= 7,
        "only {healthy_deps} service_healthy dependencies"
    );

    // Redis keeps the job stream across restarts.
    let redis_command: Vec<String> = all["redis"]["command"]
        .as_sequence()
        .expect("redis command")
        .iter()
        .map(scalar)
        .collect();
    assert!(
        redis_command
            .windows(2)
            .any(|w| w == ["--appendonly", "yes"]),
        "redis runs without appendonly: {redis_command:?}"
    );

    // Docker waits longer than the node's own drain before it kills it.
    for (dockerfile, key, default_secs, per_sec) in [
        (GATEWAY_DOCKERFILE, "C2S_SHUTDOWN_GRACE_SECS", 10, 1),
        (WORKER_DOCKERFILE, "C2S_WORKER_GRACE_MS", 10, 1000),
    ] {
        for (name, svc) in services_built_from(&doc, dockerfile) {
            let grace = service_env(svc)
                .get(key)
                .map_or(default_secs, |v| v.parse::<u64>().unwrap() / per_sec);
            let stop = duration_secs(svc["stop_grace_period"].as_str().unwrap_or("10s"));
            assert!(
                stop > grace,
                "{name}: stop_grace_period {stop}s is not longer than its drain ({key}: {grace}s)"
            );
        }
    }
    assert_eq!(duration_secs("1m30s"), 90);
    assert_eq!(duration_secs("15s"), 15);
}

#[test]
fn the_load_balancer_config_passes_nginx_t() {
    let doc = compose();
    let gateways: Vec<String> = services_built_from(&doc, GATEWAY_DOCKERFILE)
        .into_keys()
        .collect();
    assert_eq!(gateways.len(), 2);
    let read = |rel: &str| {
        std::fs::read_to_string(deploy_path(rel)).unwrap_or_else(|e| panic!("{rel}: {e}"))
    };
    let nginx_conf = read("nginx/nginx.conf");
    let topology = read("nginx/topology.compose.conf");
    let listen = read("nginx/topology.listen.compose.conf");
    // The compose service names do not resolve here: point them at the loopback address.
    let mut local_topology = topology.clone();
    for name in &gateways {
        assert!(
            local_topology.contains(&format!("{name}:")),
            "topology.compose.conf has no upstream {name}"
        );
        local_topology = local_topology.replace(&format!("{name}:"), "127.0.0.1:");
    }
    let dir = scratch_dir("nginx");
    let out = nginx_test(&dir.join("ok"), &nginx_conf, &local_topology, &listen);
    assert!(
        out.status.success(),
        "nginx -t rejects the LB configuration:\n{}",
        output_text(&out)
    );
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("test is successful"),
        "{}",
        output_text(&out)
    );

    // nginx -t is a real check: a broken directive and a missing upstream block fail it.
    let broken = nginx_conf.replace("proxy_buffering off;", "proxy_buffering maybe;");
    assert_ne!(broken, nginx_conf);
    let out = nginx_test(&dir.join("broken"), &broken, &local_topology, &listen);
    assert!(
        !out.status.success(),
        "nginx -t accepted `proxy_buffering maybe`:\n{}",
        output_text(&out)
    );
    let out = nginx_test(&dir.join("no-upstream"), &nginx_conf, "", &listen);
    assert!(
        !out.status.success(),
        "nginx -t accepted a config without the gateways upstream:\n{}",
        output_text(&out)
    );
    let _ = std::fs::remove_dir_all(dir);
}
