//! Shared test helpers: a host over in-memory services, configs for the
//! plugins built from `plugins/` by build.rs, message constructors.

#![allow(dead_code)]

use std::sync::Arc;

use edgesync_plugin_host::testing::MemoryServices;
use edgesync_plugin_host::{
    ConnInfo, ConnRef, HostConfig, Message, Plugin, PluginConfig, PluginHost, Transport, built,
};
use prometheus::Registry;

pub struct TestHost {
    pub host: PluginHost,
    pub services: Arc<MemoryServices>,
    pub registry: Registry,
}

pub fn host() -> TestHost {
    host_with(HostConfig::default())
}

pub fn host_with(config: HostConfig) -> TestHost {
    let services = Arc::new(MemoryServices::new());
    let registry = Registry::new();
    let host = PluginHost::new(config, services.clone(), registry.clone()).expect("host starts");
    TestHost {
        host,
        services,
        registry,
    }
}

/// A config for the built plugin `package` (e.g. `jwt-auth`), named `name`.
pub fn config(name: &str, package: &str) -> PluginConfig {
    let path = built::path(package).unwrap_or_else(|| panic!("plugin `{package}` was not built"));
    let mut c = PluginConfig::new(name, path);
    c.limits.pool_size = 1;
    // The CPU meter is wall time spent in guest code: on a loaded CI box a
    // preempted worker can exceed the default 10 ms. Tests of the deadline
    // itself set it explicitly.
    c.limits.deadline_ms = 1000;
    c.limits.timeout_ms = 2000;
    c
}

/// `config` with a JSON config table.
pub fn config_json(name: &str, package: &str, json: serde_json::Value) -> PluginConfig {
    let mut c = config(name, package);
    c.config = match json {
        serde_json::Value::Object(m) => m,
        _ => panic!("config must be an object"),
    };
    c
}

impl TestHost {
    pub async fn load(&self, c: PluginConfig) -> Plugin {
        match self.host.load(c).await {
            Ok(p) => p,
            Err(e) => panic!("load failed: {e}"),
        }
    }

    /// The registry in Prometheus text format.
    pub fn metrics_text(&self) -> String {
        let mut out = String::new();
        prometheus::TextEncoder::new()
            .encode_utf8(&self.registry.gather(), &mut out)
            .expect("encode metrics");
        out
    }

    /// The value of the first sample `name{...}` whose labels include all
    /// of `labels` (histograms: use `<name>_count`).
    pub fn metric(&self, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
        let text = self.metrics_text();
        text.lines()
            .filter(|l| !l.starts_with('#'))
            .find_map(|line| {
                let (series, value) = line.rsplit_once(' ')?;
                let (metric, rest) = series.split_once('{').unwrap_or((series, ""));
                if metric != name {
                    return None;
                }
                let all = labels
                    .iter()
                    .all(|(k, v)| rest.contains(&format!("{k}=\"{v}\"")));
                if !all {
                    return None;
                }
                value.parse().ok()
            })
    }
}

pub fn conn(client: &str) -> ConnRef {
    ConnRef {
        conn_id: 7,
        client_id: client.into(),
        principal: client.into(),
    }
}

pub fn conn_info(client: &str, token: Option<&str>) -> ConnInfo {
    ConnInfo {
        conn_id: 7,
        client_id: client.into(),
        token: token.map(str::to_string),
        remote_addr: "127.0.0.1:5000".into(),
        transport: Transport::Websocket,
        tls_identity: None,
    }
}

pub fn msg(topic: &str, payload: &[u8]) -> Message {
    Message {
        topic: topic.into(),
        headers: Vec::new(),
        payload: payload.to_vec(),
    }
}
