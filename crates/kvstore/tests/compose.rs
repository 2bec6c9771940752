//! `compose/` starts every backend the way `ci/servers.sh` does: this parses each compose file
//! and checks services, pinned images, loopback-only ports and the server settings kvstore
//! needs, against the flags `ci/servers.sh` uses — so the two cannot drift apart.

use std::path::{Path, PathBuf};

use yaml_rust2::{Yaml, YamlLoader};

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn read(path: &str) -> String {
    std::fs::read_to_string(repo().join(path)).unwrap_or_else(|e| panic!("reading {path}: {e}"))
}

fn load(file: &str) -> Yaml {
    let text = read(&format!("compose/{file}"));
    let mut docs = YamlLoader::load_from_str(&text).unwrap_or_else(|e| panic!("{file}: {e}"));
    assert_eq!(docs.len(), 1, "{file}: one YAML document");
    docs.remove(0)
}

/// The one service of a per-backend file: (name, definition).
fn service(file: &str) -> (String, Yaml) {
    let doc = load(file);
    let services = doc["services"]
        .as_hash()
        .unwrap_or_else(|| panic!("{file}: no services"));
    assert_eq!(services.len(), 1, "{file}: one service per backend file");
    let (name, def) = services.iter().next().unwrap();
    (name.as_str().unwrap().to_owned(), def.clone())
}

fn strings(yaml: &Yaml) -> Vec<String> {
    match yaml {
        Yaml::Array(items) => items
            .iter()
            .map(|i| i.as_str().expect("a string").to_owned())
            .collect(),
        Yaml::String(s) => vec![s.clone()],
        Yaml::BadValue => vec![],
        other => panic!("expected strings, got {other:?}"),
    }
}

/// Checks the image tag and that every published port is on 127.0.0.1; returns the command
/// line and environment joined into one string to search for flags.
fn check_service(file: &str, want_name: &str, want_image: &str) -> String {
    let (name, def) = service(file);
    assert_eq!(name, want_name, "{file}");
    assert_eq!(
        def["image"].as_str(),
        Some(want_image),
        "{file}: pinned image"
    );
    let ports = strings(&def["ports"]);
    assert!(!ports.is_empty(), "{file}: publishes a port");
    for port in &ports {
        assert!(
            port.starts_with("127.0.0.1:"),
            "{file}: port {port} must be published on loopback only"
        );
    }
    let mut text = strings(&def["command"]).join(" ");
    if let Some(env) = def["environment"].as_hash() {
        for (k, v) in env {
            text.push_str(&format!(" {}={}", k.as_str().unwrap(), v.as_str().unwrap()));
        }
    }
    text
}

#[test]
fn all_yaml_includes_every_backend_file() {
    let doc = load("all.yaml");
    let mut included = strings(&doc["include"]);
    included.sort();
    assert_eq!(
        included,
        [
            "consul.yaml",
            "etcd.yaml",
            "postgres.yaml",
            "redis.yaml",
            "zookeeper.yaml"
        ]
    );
    for file in &included {
        assert!(repo().join("compose").join(file).exists(), "{file} exists");
    }
}

#[test]
fn redis_has_keyspace_notifications_like_ci() {
    let command = check_service("redis.yaml", "redis", "redis:7.0.15");
    assert!(
        command.contains("--notify-keyspace-events KEA"),
        "{command}"
    );
    assert!(read("ci/servers/redis.sh").contains("--notify-keyspace-events KEA"));
}

/// The image's major version is the one CI installs (Debian's `postgresql` package), and it
/// runs the server's defaults as CI does (only a password, which the image requires).
#[test]
fn postgres_is_the_tested_major_version_with_default_settings() {
    let settings = check_service("postgres.yaml", "postgres", "postgres:15.18");
    assert_eq!(settings.trim(), "POSTGRES_PASSWORD=kvstore", "{settings}");
    let servers = read("ci/servers/postgres.sh");
    assert!(
        servers.contains("/usr/lib/postgresql/15/bin"),
        "ci installs PostgreSQL 15"
    );
}

#[test]
fn etcd_is_v3_on_the_tested_version() {
    let command = check_service("etcd.yaml", "etcd", "quay.io/coreos/etcd:v3.4.23");
    assert!(
        command.contains("--advertise-client-urls=http://127.0.0.1:2379"),
        "{command}"
    );
}

#[test]
fn zookeeper_has_ttl_nodes_and_fast_container_reaping_like_ci() {
    let settings = check_service("zookeeper.yaml", "zookeeper", "zookeeper:3.8.0");
    let servers = read("ci/servers/zk.sh");
    for flag in [
        "-Dzookeeper.extendedTypesEnabled=true",
        "-Dznode.container.checkIntervalMs=100",
    ] {
        assert!(settings.contains(flag), "compose lacks {flag}: {settings}");
        assert!(servers.contains(flag), "ci/servers/zk.sh lacks {flag}");
    }
}

#[test]
fn consul_lowers_session_ttl_min_like_ci_on_the_built_version() {
    let version = read("ci/consul/go.mod")
        .lines()
        .find_map(|l| {
            l.strip_prefix("require github.com/hashicorp/consul v")
                .map(str::to_owned)
        })
        .expect("ci/consul/go.mod pins Consul");
    let command = check_service(
        "consul.yaml",
        "consul",
        &format!("hashicorp/consul:{version}"),
    );
    assert!(command.contains(r#"session_ttl_min = "1s""#), "{command}");
    assert!(read("ci/servers/consul.sh").contains(r#"session_ttl_min = "1s""#));
}
