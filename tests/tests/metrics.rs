//! Metrics, health and the admin API against an in-process gateway on
//! 127.0.0.1 (port 0, temporary data directory).
//!
//! The promtool and Prometheus tests call `tests/scripts/ensure-prometheus.sh`,
//! which installs Debian's `prometheus` package when the tools are missing.
//! Every wait is a bounded poll; nothing asserts on wall-clock durations.
//!
//! The monitoring example (examples/monitoring) is checked here too: every query of
//! its Grafana dashboard is sent to a real Prometheus scraping a gateway (a query
//! that does not parse fails), the queue-group panels return series once a group
//! has worked, and the queue alert rules pass `promtool check rules` / `test rules`.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use edgesync::config::{Config, ListenAddr};
use edgesync::server::{Running, start};
use edgesync_client::{Client, ClientOptions, Event, PublishOptions, QueueOptions, Start};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const TOKEN: &str = "s3cret-admin-token";
/// Upper bound of any single poll loop (steps of 50 ms).
const POLL_STEPS: usize = 400;

/// A gateway with ws and admin on 127.0.0.1 ports chosen by the OS.
struct Gw {
    running: Running,
    _dir: tempfile::TempDir,
}

impl Gw {
    async fn start(token: Option<&str>, tweak: impl FnOnce(&mut Config)) -> Result<Gw> {
        let dir = tempfile::tempdir()?;
        let mut c = Config {
            data_dir: dir.path().to_path_buf(),
            ..Config::default()
        };
        c.listen.ws = ListenAddr::parse("127.0.0.1:0").map_err(anyhow::Error::msg)?;
        c.listen.wss = ListenAddr(None);
        c.listen.quic = ListenAddr(None);
        c.listen.admin = ListenAddr::parse("127.0.0.1:0").map_err(anyhow::Error::msg)?;
        c.admin.token = token.map(String::from);
        tweak(&mut c);
        let running = start(c.build()?).await?;
        Ok(Gw { running, _dir: dir })
    }

    fn admin(&self) -> SocketAddr {
        self.running.bound.admin.expect("admin listener bound")
    }

    fn ws_url(&self) -> String {
        format!("ws://{}", self.running.bound.ws.expect("ws listener bound"))
    }

    async fn client(&self, id: &str) -> Result<Client> {
        let mut o = ClientOptions::new(self.ws_url());
        o.client_id = Some(id.into());
        o.reconnect = false;
        Ok(Client::connect(o).await?)
    }

    async fn get(&self, path: &str, token: Option<&str>) -> Result<(u16, String)> {
        http(self.admin(), "GET", path, token, None).await
    }

    async fn metrics(&self) -> Result<String> {
        let (status, body) = self.get("/metrics", None).await?;
        anyhow::ensure!(status == 200, "/metrics answered {status}: {body}");
        Ok(body)
    }

    async fn stop(self) {
        self.running.stop(Duration::from_secs(5)).await;
    }
}

/// One HTTP/1.0 exchange (the server closes the connection, so the body is
/// everything after the header block — no chunked encoding with 1.0).
async fn http(
    addr: SocketAddr,
    method: &str,
    path: &str,
    token: Option<&str>,
    body: Option<&str>,
) -> Result<(u16, String)> {
    let exchange = async {
        let mut s = TcpStream::connect(addr).await?;
        let mut req = format!("{method} {path} HTTP/1.0\r\nHost: {addr}\r\n");
        if let Some(t) = token {
            req.push_str(&format!("Authorization: Bearer {t}\r\n"));
        }
        let body = body.unwrap_or("");
        if method != "GET" {
            req.push_str(&format!(
                "Content-Type: application/json\r\nContent-Length: {}\r\n",
                body.len()
            ));
        }
        req.push_str("\r\n");
        req.push_str(body);
        s.write_all(req.as_bytes()).await?;
        let mut raw = Vec::new();
        s.read_to_end(&mut raw).await?;
        let text = String::from_utf8(raw)?;
        let (head, body) = text
            .split_once("\r\n\r\n")
            .context("no header terminator")?;
        let status: u16 = head
            .split_whitespace()
            .nth(1)
            .context("no status")?
            .parse()?;
        anyhow::Ok((status, body.to_string()))
    };
    tokio::time::timeout(Duration::from_secs(20), exchange)
        .await
        .context("HTTP exchange timed out")?
}

/// The value of one exposition line: `series` is the name with its labels
/// exactly as rendered (e.g. `edgesync_connections_open{transport="ws"}`).
fn value(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .find_map(|l| {
            l.strip_prefix(series)
                .and_then(|rest| rest.strip_prefix(' '))
        })
        .and_then(|v| v.trim().parse().ok())
}

fn v(text: &str, series: &str) -> f64 {
    value(text, series).unwrap_or(0.0)
}

/// Poll `/metrics` until `cond` holds (bounded).
async fn wait_metrics(gw: &Gw, what: &str, cond: impl Fn(&str) -> bool) -> Result<String> {
    let mut last = String::new();
    for _ in 0..POLL_STEPS {
        last = gw.metrics().await?;
        if cond(&last) {
            return Ok(last);
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    bail!("metrics never showed {what}:\n{last}")
}

fn json(body: &str) -> Result<serde_json::Value> {
    serde_json::from_str(body).with_context(|| format!("not JSON: {body}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_move_with_connects_publishes_and_deliveries() -> Result<()> {
    let gw = Gw::start(Some(TOKEN), |_| {}).await?;
    let before = gw.metrics().await?;
    assert_eq!(v(&before, "edgesync_ready"), 1.0);
    assert_eq!(v(&before, "edgesync_messages_in_total"), 0.0);

    let sub = gw.client("sub").await?;
    let publisher = gw.client("pub").await?;
    let mut s = sub.subscribe("m.>", Start::Latest).await?;
    for i in 0..5 {
        publisher.publish("m.a", format!("hello {i}")).await?;
    }
    for _ in 0..5 {
        match s.next_timeout(Duration::from_secs(10)).await {
            Some(Event::Msg(_)) => {}
            other => bail!("expected a message, got {other:?}"),
        }
    }
    let m = gw.metrics().await?;
    assert_eq!(
        v(&m, "edgesync_connections_open{transport=\"ws\"}"),
        2.0,
        "{m}"
    );
    assert_eq!(
        v(&m, "edgesync_connections_accepted_total{transport=\"ws\"}"),
        2.0
    );
    assert_eq!(v(&m, "edgesync_subscriptions"), 1.0);
    assert_eq!(v(&m, "edgesync_messages_in_total"), 5.0);
    assert_eq!(v(&m, "edgesync_messages_out_total"), 5.0);
    assert_eq!(v(&m, "edgesync_store_appends_total"), 5.0);
    assert_eq!(
        v(&m, "edgesync_commands_total{command=\"pub\",result=\"ok\"}"),
        5.0
    );
    assert_eq!(v(&m, "edgesync_publish_ack_seconds_count"), 5.0);
    assert_eq!(v(&m, "edgesync_publish_deliver_seconds_count"), 5.0);
    assert!(v(&m, "edgesync_store_commit_seconds_count") >= 1.0);
    assert!(v(&m, "edgesync_store_batch_records_sum") >= 5.0);
    assert!(
        v(&m, "edgesync_store_fsync_seconds_count") >= 1.0,
        "fsync policy always"
    );
    assert_eq!(v(&m, "edgesync_store_topics"), 1.0);
    assert_eq!(v(&m, "edgesync_store_records"), 5.0);
    assert!(v(&m, "edgesync_store_payload_bytes") >= 35.0);
    assert!(v(&m, "edgesync_store_disk_bytes") > 0.0);
    assert_eq!(v(&m, "edgesync_store_poisoned"), 0.0);
    assert!(v(&m, "edgesync_frame_bytes_total{direction=\"in\"}") > 0.0);
    assert!(v(&m, "edgesync_frame_bytes_total{direction=\"out\"}") > 0.0);
    assert!(m.contains("edgesync_build_info{version="));
    if cfg!(target_os = "linux") {
        assert!(
            v(&m, "process_resident_memory_bytes") > 0.0,
            "process metrics"
        );
        assert!(v(&m, "process_open_fds") > 0.0);
    }

    sub.close().await;
    publisher.close().await;
    let m = wait_metrics(&gw, "both connections closed", |m| {
        v(m, "edgesync_connections_open{transport=\"ws\"}") == 0.0
    })
    .await?;
    assert_eq!(v(&m, "edgesync_subscriptions"), 0.0);
    let closed: f64 = m
        .lines()
        .filter(|l| l.starts_with("edgesync_connections_closed_total{"))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum();
    assert_eq!(closed, 2.0, "{m}");
    gw.stop().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_consumer_drops_and_gaps_are_counted() -> Result<()> {
    // An outbox of 2 frames: one group commit with more records than that already overflows it.
    let gw = Gw::start(Some(TOKEN), |c| {
        c.limits.outbox_frames = 2;
        c.limits.publish_rate_per_sec = 1_000_000;
    })
    .await?;
    let sub = gw.client("slow").await?;
    let publisher = gw.client("fast").await?;
    let mut s = sub.subscribe("d.x", Start::Latest).await?;
    let mut dropped = 0.0;
    for _round in 0..50 {
        for i in 0..200 {
            let o = PublishOptions {
                ack: false,
                ..PublishOptions::default()
            };
            publisher.publish_with("d.x", format!("m{i}"), o).await?;
        }
        publisher.publish("d.x", "sync").await?; // durable ack: everything before it is fanned out
        dropped = v(
            &gw.metrics().await?,
            "edgesync_deliveries_dropped_total{reason=\"outbox_full\"}",
        );
        if dropped > 0.0 {
            break;
        }
    }
    assert!(
        dropped > 0.0,
        "no delivery was dropped with a 2-frame outbox"
    );
    // The subscriber is told: a gap notice arrives (bounded read).
    let mut saw_gap = false;
    for _ in 0..20_000 {
        match s.next_timeout(Duration::from_secs(10)).await {
            Some(Event::Gap { .. }) => {
                saw_gap = true;
                break;
            }
            Some(_) => {}
            None => break,
        }
    }
    assert!(saw_gap, "dropped deliveries are announced with a gap");
    // Fan-out runs just after the ack, so wait (bounded) for the last batch to be counted.
    wait_metrics(
        &gw,
        "every stored message either queued or dropped for the one subscriber",
        |m| {
            let out = v(m, "edgesync_messages_out_total");
            let dropped = v(
                m,
                "edgesync_deliveries_dropped_total{reason=\"outbox_full\"}",
            );
            out + dropped == v(m, "edgesync_store_appends_total")
        },
    )
    .await?;
    sub.close().await;
    publisher.close().await;
    gw.stop().await;
    Ok(())
}

/// Run `tests/scripts/ensure-prometheus.sh`; the directory holding the tools.
fn ensure_prometheus() -> Result<PathBuf> {
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("scripts/ensure-prometheus.sh");
    let out = std::process::Command::new("sh")
        .arg(&script)
        .output()
        .context("running ensure-prometheus.sh")?;
    anyhow::ensure!(
        out.status.success(),
        "ensure-prometheus.sh failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(PathBuf::from(String::from_utf8(out.stdout)?.trim()))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exposition_passes_promtool() -> Result<()> {
    let tools = tokio::task::spawn_blocking(ensure_prometheus).await??;
    let gw = Gw::start(Some(TOKEN), |_| {}).await?;
    let c = gw.client("p").await?;
    let _s = c.subscribe("p.>", Start::Latest).await?;
    c.publish("p.a", "x").await?;
    let text = wait_metrics(&gw, "the delivery", |m| {
        v(m, "edgesync_messages_out_total") >= 1.0
    })
    .await?;
    let mut child = tokio::process::Command::new(tools.join("promtool"))
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()?;
    let mut stdin = child.stdin.take().context("stdin")?;
    stdin.write_all(text.as_bytes()).await?;
    drop(stdin);
    let out = tokio::time::timeout(Duration::from_secs(60), child.wait_with_output()).await??;
    let report = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.status.success() && report.trim().is_empty(),
        "promtool check metrics:\n{report}"
    );
    c.close().await;
    gw.stop().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_real_prometheus_scrapes_the_gateway() -> Result<()> {
    let tools = tokio::task::spawn_blocking(ensure_prometheus).await??;
    let gw = Gw::start(Some(TOKEN), |_| {}).await?;
    let c = gw.client("scraped").await?;
    c.publish("s.a", "x").await?;
    let dir = tempfile::tempdir()?;
    let admin = gw.admin();
    let config = format!(
        "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\nscrape_configs:\n  - job_name: edgesync\n    static_configs:\n      - targets: ['{admin}']\n"
    );
    std::fs::write(dir.path().join("prometheus.yml"), config)?;
    // A free port for Prometheus' own HTTP API (bind, read, release).
    let web = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?;
    let mut prom = tokio::process::Command::new(tools.join("prometheus"))
        .arg(format!(
            "--config.file={}",
            dir.path().join("prometheus.yml").display()
        ))
        .arg(format!(
            "--storage.tsdb.path={}",
            dir.path().join("data").display()
        ))
        .arg(format!("--web.listen-address={web}"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .context("starting prometheus")?;
    let query = "/api/v1/query?query=edgesync_messages_in_total";
    let mut last = String::from("(no answer)");
    let mut found = None;
    for _ in 0..POLL_STEPS {
        if let Some(status) = prom.try_wait()? {
            bail!("prometheus exited early: {status}");
        }
        if let Ok((200, body)) = http(web, "GET", query, None, None).await {
            let j = json(&body)?;
            let ours = j["data"]["result"]
                .as_array()
                .into_iter()
                .flatten()
                .find(|r| {
                    r["metric"]["instance"] == admin.to_string() && r["metric"]["job"] == "edgesync"
                });
            if let Some(r) = ours {
                found = r["value"][1].as_str().map(String::from);
                break;
            }
            last = body;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let Some(value) = found else {
        bail!("Prometheus never returned our series; last answer: {last}")
    };
    assert_eq!(value, "1", "one message was published before the scrape");
    let _ = prom.kill().await;
    c.close().await;
    gw.stop().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_api_needs_the_token_and_works_with_it() -> Result<()> {
    let gw = Gw::start(Some(TOKEN), |_| {}).await?;
    for path in [
        "/v1/topics",
        "/v1/connections",
        "/v1/config",
        "/v1/plugins",
        "/readyz",
    ] {
        let (status, body) = gw.get(path, None).await?;
        assert_eq!(status, 401, "{path} without a token: {body}");
        assert_eq!(json(&body)?["code"], "unauthorized");
        let (status, _) = gw.get(path, Some("wrong")).await?;
        assert_eq!(status, 401, "{path} with a wrong token");
        let (status, body) = gw.get(path, Some(TOKEN)).await?;
        assert_eq!(status, 200, "{path} with the token: {body}");
    }
    let (status, _) = http(
        gw.admin(),
        "POST",
        "/v1/publish",
        Some("wrong"),
        Some("{\"topic\":\"a\",\"data\":\"x\"}"),
    )
    .await?;
    assert_eq!(status, 401);
    assert_eq!(gw.get("/healthz", None).await?.0, 200, "healthz is open");
    assert_eq!(
        gw.get("/metrics", None).await?.0,
        200,
        "metrics are open unless protect_metrics"
    );

    // Publish through the API: stored, acknowledged, delivered to a subscriber, readable.
    let c = gw.client("watcher").await?;
    let mut s = c.subscribe("adm.>", Start::Latest).await?;
    let body = r#"{"topic":"adm.t","data":"hello","headers":{"k":"v"},"mid":"m-1"}"#;
    let (status, ack) = http(gw.admin(), "POST", "/v1/publish", Some(TOKEN), Some(body)).await?;
    assert_eq!(status, 200, "{ack}");
    let ack = json(&ack)?;
    assert_eq!(ack["seq"], 1);
    assert_eq!(ack["stored"], true);
    assert_eq!(ack["dup"], false);
    let (_, again) = http(gw.admin(), "POST", "/v1/publish", Some(TOKEN), Some(body)).await?;
    assert_eq!(json(&again)?["dup"], true, "same mid: the original ack");
    match s.next_timeout(Duration::from_secs(10)).await {
        Some(Event::Msg(m)) => {
            assert_eq!(m.topic, "adm.t");
            assert_eq!(&m.data.0[..], b"hello");
            assert_eq!(m.client, "admin");
        }
        other => bail!("expected the admin publish, got {other:?}"),
    }
    let (status, err) = http(
        gw.admin(),
        "POST",
        "/v1/publish",
        Some(TOKEN),
        Some(r#"{"topic":"a..b","data":"x"}"#),
    )
    .await?;
    assert_eq!(status, 400);
    assert_eq!(json(&err)?["code"], "topic_invalid");
    let (status, err) = http(
        gw.admin(),
        "POST",
        "/v1/publish",
        Some(TOKEN),
        Some("{not json"),
    )
    .await?;
    assert_eq!(status, 400, "{err}");
    assert_eq!(json(&err)?["code"], "bad_request");

    let (_, h) = gw
        .get(
            "/v1/history?topic=adm.t&from=earliest&limit=10",
            Some(TOKEN),
        )
        .await?;
    let h = json(&h)?;
    assert_eq!(h["msgs"].as_array().map(Vec::len), Some(1), "{h}");
    assert_eq!(h["msgs"][0]["data"], "hello");
    assert_eq!(h["more"], false);
    let cursor = h["cursor"].as_str().context("cursor")?.to_string();
    let (_, next) = gw
        .get(
            &format!("/v1/history?topic=adm.t&from={cursor}"),
            Some(TOKEN),
        )
        .await?;
    assert_eq!(
        json(&next)?["msgs"].as_array().map(Vec::len),
        Some(0),
        "nothing after the cursor"
    );

    let (_, t) = gw.get("/v1/topics", Some(TOKEN)).await?;
    let t = json(&t)?;
    assert_eq!(t["topics"][0]["topic"], "adm.t", "{t}");
    assert_eq!(t["topics"][0]["messages"], 1);
    assert_eq!(
        t["topics"][0]["retention"]["max_messages"],
        serde_json::Value::Null
    );

    let (_, conns) = gw.get("/v1/connections", Some(TOKEN)).await?;
    let conns = json(&conns)?;
    assert_eq!(conns["connections"][0]["client_id"], "watcher", "{conns}");
    assert_eq!(conns["connections"][0]["transport"], "ws");

    let (_, cfg) = gw.get("/v1/config", Some(TOKEN)).await?;
    assert!(!cfg.contains(TOKEN), "the token is redacted: {cfg}");
    assert_eq!(json(&cfg)?["admin"]["token"], "<redacted>");

    let (_, p) = gw.get("/v1/plugins", Some(TOKEN)).await?;
    assert_eq!(json(&p)?["plugins"], serde_json::json!([]));
    let (status, err) = http(
        gw.admin(),
        "POST",
        "/v1/plugins/nope/reload",
        Some(TOKEN),
        Some(""),
    )
    .await?;
    assert_eq!(status, 404);
    assert_eq!(json(&err)?["code"], "not_found");

    let m = gw.metrics().await?;
    assert_eq!(
        v(
            &m,
            "edgesync_commands_total{command=\"admin_pub\",result=\"ok\"}"
        ),
        2.0,
        "{m}"
    );
    assert_eq!(
        v(
            &m,
            "edgesync_commands_total{command=\"admin_pub\",result=\"topic_invalid\"}"
        ),
        1.0
    );
    c.close().await;
    gw.stop().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_a_token_the_api_is_disabled_and_protect_metrics_guards_metrics() -> Result<()> {
    let open = Gw::start(None, |_| {}).await?;
    let (status, body) = open.get("/v1/topics", None).await?;
    assert_eq!(status, 403, "{body}");
    let err = json(&body)?;
    assert_eq!(err["code"], "admin_disabled");
    assert!(
        err["message"]
            .as_str()
            .is_some_and(|m| m.contains("[admin]")),
        "{err}"
    );
    assert_eq!(
        open.get("/readyz", None).await?.0,
        200,
        "readyz is open without a token"
    );
    open.stop().await;

    let guarded = Gw::start(Some(TOKEN), |c| c.admin.protect_metrics = true).await?;
    assert_eq!(guarded.get("/metrics", None).await?.0, 401);
    assert_eq!(guarded.get("/metrics", Some("wrong")).await?.0, 401);
    let (status, body) = guarded.get("/metrics", Some(TOKEN)).await?;
    assert_eq!(status, 200);
    assert!(body.contains("edgesync_messages_in_total"));
    assert_eq!(guarded.get("/healthz", None).await?.0, 200);
    guarded.stop().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readyz_is_false_unless_the_gateway_is_ready() -> Result<()> {
    let gw = Gw::start(Some(TOKEN), |_| {}).await?;
    let (status, body) = gw.get("/readyz", Some(TOKEN)).await?;
    assert_eq!(status, 200, "{body}");
    assert_eq!(json(&body)?["ready"], true);
    // Draining: the shutdown token is cancelled, the admin listener still answers.
    gw.running.shutdown_token().cancel();
    let (status, body) = gw.get("/readyz", Some(TOKEN)).await?;
    assert_eq!(status, 503, "{body}");
    let r = json(&body)?;
    assert_eq!(r["ready"], false);
    assert_eq!(r["shutting_down"], true);
    assert_eq!(v(&gw.metrics().await?, "edgesync_ready"), 0.0);
    assert_eq!(
        gw.get("/healthz", None).await?.0,
        200,
        "alive while draining"
    );
    let admin = gw.admin();
    gw.stop().await;
    assert!(
        http(admin, "GET", "/healthz", None, None).await.is_err(),
        "admin listener closed after stop"
    );
    Ok(())
}

/// Sum of every `edgesync_plugin_calls_total` series of `plugin` with `outcome`.
fn plugin_calls(text: &str, plugin: &str, outcome: &str) -> f64 {
    text.lines()
        .filter(|l| l.starts_with("edgesync_plugin_calls_total{"))
        .filter(|l| {
            l.contains(&format!("plugin=\"{plugin}\""))
                && l.contains(&format!("outcome=\"{outcome}\""))
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plugin_calls_show_in_metrics_and_the_admin_api_lists_and_reloads_plugins() -> Result<()> {
    use edgesync_plugin_host::built;
    let toml = format!(
        "[[plugin]]\nname = \"pass\"\npath = {pass:?}\n\n[[plugin]]\nname = \"trap\"\npath = {trap:?}\n\n\
         [[route]]\ntopics = \"ok.>\"\nplugins = [\"pass\"]\n\n[[route]]\ntopics = \"fragile.>\"\nplugins = [\"trap\"]\n",
        pass = built::PASS,
        trap = built::TRAP,
    );
    let parsed = Config::from_toml(&toml).map_err(anyhow::Error::msg)?;
    let gw = Gw::start(Some(TOKEN), move |c| {
        c.plugins = parsed.plugins;
        c.routes = parsed.routes;
    })
    .await?;
    let publish =
        |topic: &str, data: &str| format!("{{\"topic\":\"{topic}\",\"data\":\"{data}\"}}");
    for i in 0..3 {
        let (status, body) = http(
            gw.admin(),
            "POST",
            "/v1/publish",
            Some(TOKEN),
            Some(&publish("ok.a", &format!("m{i}"))),
        )
        .await?;
        assert_eq!(status, 200, "{body}");
    }
    // The trap plugin traps on this payload; the gateway fails open and dead-letters it.
    let _ = http(
        gw.admin(),
        "POST",
        "/v1/publish",
        Some(TOKEN),
        Some(&publish("fragile.a", "please TRAP now")),
    )
    .await?;
    let m = gw.metrics().await?;
    assert!(
        plugin_calls(&m, "pass", "ok") >= 3.0,
        "pass plugin calls counted:\n{m}"
    );
    assert!(
        plugin_calls(&m, "trap", "trap") >= 1.0,
        "the trap is counted by outcome:\n{m}"
    );

    let (status, body) = gw.get("/v1/plugins", Some(TOKEN)).await?;
    assert_eq!(status, 200, "{body}");
    let list = json(&body)?;
    let names: Vec<&str> = list["plugins"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|p| p["name"].as_str())
        .collect();
    assert_eq!(names, ["pass", "trap"], "{list}");
    let (status, body) = http(
        gw.admin(),
        "POST",
        "/v1/plugins/pass/reload",
        Some(TOKEN),
        Some(""),
    )
    .await?;
    assert_eq!(status, 200, "{body}");
    assert_eq!(json(&body)?["name"], "pass");
    let (status, _) = http(
        gw.admin(),
        "POST",
        "/v1/plugins/pass/reload",
        None,
        Some(""),
    )
    .await?;
    assert_eq!(status, 401, "reload needs the token");
    let (status, body) = http(
        gw.admin(),
        "POST",
        "/v1/plugins/nope/reload",
        Some(TOKEN),
        Some(""),
    )
    .await?;
    assert_eq!(
        (status, json(&body)?["code"].clone()),
        (404, serde_json::json!("not_found"))
    );
    // Still passing after the reload.
    let (status, body) = http(
        gw.admin(),
        "POST",
        "/v1/publish",
        Some(TOKEN),
        Some(&publish("ok.a", "after")),
    )
    .await?;
    assert_eq!(status, 200, "{body}");
    let m = gw.metrics().await?;
    assert!(plugin_calls(&m, "pass", "ok") >= 4.0, "{m}");
    gw.stop().await;
    Ok(())
}

/// examples/monitoring, next to this package.
fn monitoring_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../examples/monitoring")
}

/// Every `expr` of the dashboard's panels (rows' nested panels included), with the
/// Grafana variables replaced as Grafana would for job "edgesync" and all instances.
fn dashboard_queries() -> Result<Vec<String>> {
    let text = std::fs::read_to_string(monitoring_dir().join("grafana-dashboard.json"))?;
    let dashboard = json(&text)?;
    let mut panels: Vec<&serde_json::Value> = dashboard["panels"]
        .as_array()
        .context("dashboard has no panels")?
        .iter()
        .collect();
    let mut out = Vec::new();
    while let Some(p) = panels.pop() {
        panels.extend(p["panels"].as_array().into_iter().flatten());
        for t in p["targets"].as_array().into_iter().flatten() {
            let expr = t["expr"]
                .as_str()
                .with_context(|| format!("a target without expr in {}", p["title"]))?;
            out.push(
                expr.replace("$__rate_interval", "1m")
                    .replace("$job", "edgesync")
                    .replace("$instance", ".*"),
            );
        }
    }
    Ok(out)
}

/// `s` percent-encoded for a URL query value.
fn query_encode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn queue_alert_rules_pass_promtool() -> Result<()> {
    let tools = tokio::task::spawn_blocking(ensure_prometheus).await??;
    for args in [
        ["check", "rules", "queue-alerts.yml"],
        ["test", "rules", "queue-alerts.test.yml"],
    ] {
        let out = std::process::Command::new(tools.join("promtool"))
            .args(args)
            .current_dir(monitoring_dir())
            .output()?;
        assert!(
            out.status.success(),
            "promtool {args:?}:\n{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(())
}

/// Every dashboard query is accepted by a real Prometheus scraping a gateway, and each
/// queue-group query returns a series once a group has delivered, acked, dead-lettered,
/// redelivered and holds a message in flight (skips aside: no retention runs here).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dashboard_queries_run_on_a_real_prometheus_and_queue_panels_have_data() -> Result<()> {
    let queries = dashboard_queries()?;
    let queue_queries: Vec<&String> = queries
        .iter()
        .filter(|q| q.contains("edgesync_queue_"))
        .collect();
    for family in [
        "edgesync_queue_pending",
        "edgesync_queue_in_flight",
        "edgesync_queue_members",
        "edgesync_queue_deliveries_total",
        "edgesync_queue_redeliveries_total",
        "edgesync_queue_dead_lettered_total",
        "edgesync_queue_skipped_total",
        "edgesync_queue_ack_seconds_bucket",
    ] {
        assert!(
            queue_queries.iter().any(|q| q.contains(family)),
            "no dashboard panel shows {family}"
        );
    }

    let tools = tokio::task::spawn_blocking(ensure_prometheus).await??;
    let gw = Gw::start(Some(TOKEN), |_| {}).await?;
    // A queue group that has worked: an ack, a dead letter, a redelivery, one in flight.
    let worker = gw.client("worker").await?;
    let mut group = worker
        .join_queue("jobs.>", QueueOptions::new("work"))
        .await?;
    let producer = gw.client("producer").await?;
    for i in 0..3 {
        producer.publish("jobs.a", format!("job {i}")).await?;
    }
    // Deliveries: ack one, term one (a dead letter), nak one and hold its redelivery.
    for i in 0..4 {
        let Some(Event::Msg(m)) = group.next_timeout(Duration::from_secs(10)).await else {
            bail!("queue delivery {i} did not come");
        };
        match i {
            0 => worker.ack(&m).await?,
            1 => worker.term(&m, "bad job").await?,
            2 => worker.nak(&m, Duration::ZERO).await?,
            _ => assert_eq!(m.delivery, Some(2), "the nak'd job again"), // held: in flight
        }
    }

    let dir = tempfile::tempdir()?;
    let config = format!(
        "global:\n  scrape_interval: 1s\nscrape_configs:\n  - job_name: edgesync\n    static_configs:\n      - targets: ['{}']\n",
        gw.admin()
    );
    std::fs::write(dir.path().join("prometheus.yml"), config)?;
    let web = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?;
    let mut prom = tokio::process::Command::new(tools.join("prometheus"))
        .arg(format!(
            "--config.file={}",
            dir.path().join("prometheus.yml").display()
        ))
        .arg(format!(
            "--storage.tsdb.path={}",
            dir.path().join("data").display()
        ))
        .arg(format!("--web.listen-address={web}"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .context("starting prometheus")?;

    // The answer to one instant query: Err when Prometheus refuses it (a parse error is
    // a 400 with status "error"), else the number of series.
    let run = |q: String| async move {
        let (code, body) = http(
            web,
            "GET",
            &format!("/api/v1/query?query={}", query_encode(&q)),
            None,
            None,
        )
        .await?;
        let j = json(&body)?;
        anyhow::ensure!(
            code == 200 && j["status"] == "success",
            "Prometheus refused {q}: {code} {body}"
        );
        anyhow::Ok(j["data"]["result"].as_array().map_or(0, Vec::len))
    };
    // Prometheus up (it answers queries) before the dashboard's are judged.
    let mut up = false;
    for _ in 0..POLL_STEPS {
        if let Some(status) = prom.try_wait()? {
            bail!("prometheus exited early: {status}");
        }
        if run("up".into()).await.is_ok_and(|n| n > 0) {
            up = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    anyhow::ensure!(up, "Prometheus never scraped the gateway");
    for q in &queries {
        run(q.clone()).await?;
    }
    // Rates need two scrapes of the group's series: poll until every queue query has data
    // (but skips: that series appears with the first message retention took from a group).
    let with_data: Vec<&String> = queue_queries
        .iter()
        .copied()
        .filter(|q| !q.contains("edgesync_queue_skipped_total"))
        .collect();
    let mut empty = Vec::new();
    for _ in 0..POLL_STEPS {
        empty.clear();
        for q in &with_data {
            if run((*q).clone()).await? == 0 {
                empty.push((*q).clone());
            }
        }
        if empty.is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(empty.is_empty(), "queue panels without data: {empty:#?}");
    let in_flight = run(
        "sum(edgesync_queue_in_flight{group=\"work\"}) == 1 and sum(edgesync_queue_dead_lettered_total{group=\"work\"}) == 1"
            .into(),
    )
    .await?;
    assert_eq!(in_flight, 1, "one delivery in flight, one dead letter");
    let _ = prom.kill().await;
    worker.close().await;
    producer.close().await;
    gw.stop().await;
    Ok(())
}
