//! The `ledgerline.toml` the production manifests ship (`deploy/compose/ledgerline.toml`, and
//! the one in the Kubernetes ConfigMap `deploy/kubernetes/ledgerline-config.yaml`) load and
//! validate with the services' own loaders, as each service would at start: a key renamed in
//! the code, or a manifest with a typo, fails here rather than in a deployment.
//! (`deploy/validate-manifests` checks the YAML against the Kubernetes and compose schemas.)

// Test helpers may panic: a panic is the failure report.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::{Path, PathBuf};

use ledgerline_consumers::archive::ArchiveSettings;
use ledgerline_consumers::projector::ProjectorSettings;
use ledgerline_query_api::config::ApiSettings;
use ledgerline_service::config::ConfigSource;

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_owned()
}

/// The block scalar under `ledgerline.toml: |` in the ConfigMap, unindented.
fn configmap_toml() -> String {
    let yaml =
        std::fs::read_to_string(repo().join("deploy/kubernetes/ledgerline-config.yaml")).unwrap();
    let mut lines = yaml
        .lines()
        .skip_while(|line| line.trim() != "ledgerline.toml: |");
    let header = lines
        .next()
        .expect("no `ledgerline.toml: |` in the ConfigMap");
    let key_indent = header.len() - header.trim_start().len();
    let body: Vec<&str> = lines
        .take_while(|line| {
            line.trim().is_empty() || line.len() - line.trim_start().len() > key_indent
        })
        .collect();
    let indent = body
        .iter()
        .filter(|line| !line.trim().is_empty())
        .map(|line| line.len() - line.trim_start().len())
        .min()
        .unwrap();
    body.iter()
        .map(|line| line.get(indent..).unwrap_or(""))
        .collect::<Vec<_>>()
        .join("\n")
}

fn load_every_service(what: &str, toml: &str) {
    let source = ConfigSource::from_toml_str(toml).unwrap();
    let projector =
        ProjectorSettings::load(&source).unwrap_or_else(|e| panic!("{what}: projector: {e}"));
    let archive = ArchiveSettings::load(&source).unwrap_or_else(|e| panic!("{what}: archive: {e}"));
    let api = ApiSettings::load(&source).unwrap_or_else(|e| panic!("{what}: api: {e}"));
    // The manifests run the replicated layout.
    for (section, cluster) in [
        ("projector", &projector.projector.clickhouse.cluster),
        ("archive", &archive.archive.clickhouse.cluster),
        ("api", &api.api.clickhouse.cluster),
    ] {
        assert_eq!(
            cluster.as_deref(),
            Some("ledgerline"),
            "{what}: [{section}.clickhouse] cluster"
        );
    }
}

#[test]
fn the_compose_config_loads_in_every_service() {
    let toml = std::fs::read_to_string(repo().join("deploy/compose/ledgerline.toml")).unwrap();
    load_every_service("deploy/compose/ledgerline.toml", &toml);
}

#[test]
fn the_kubernetes_config_loads_in_every_service() {
    load_every_service("ConfigMap ledgerline-config", &configmap_toml());
}

#[test]
fn a_bad_key_in_a_shipped_config_is_refused() {
    let toml = std::fs::read_to_string(repo().join("deploy/compose/ledgerline.toml")).unwrap();
    let bad = toml.replacen("cluster = ", "clustre = ", 1);
    let source = ConfigSource::from_toml_str(&bad).unwrap();
    let error = ProjectorSettings::load(&source).unwrap_err().to_string();
    assert!(error.contains("clustre"), "{error}");
}
