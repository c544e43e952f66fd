//! Issue 3's remaining plugin requirements at the gateway level, over real
//! sockets, with plugins compiled from source (`plugins/`) by the plugin
//! host's build:
//!
//! - a timer plugin (`ticker`) publishing on schedule through the normal
//!   pipeline;
//! - plugin kv durable across a gateway restart (`kv-counter`);
//! - the storage hook (`retention`): ephemeral topics delivered but not
//!   stored, retention hints applied by the store's housekeeping;
//! - a plugin exporting only auth hooks is never called for messages;
//! - hot reload under publish load loses and duplicates nothing, and a
//!   failed reload (broken component, failing `init`) keeps the old version.
//!
//! Every wait is a bounded loop; nothing asserts on wall-clock time.

use std::collections::BTreeSet;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use edgesync::config::Config;
use edgesync_client::{Client, ClientOptions, Encoding, ErrorCode, Event, Msg, Start};
use edgesync_plugin_host::built;
use edgesync_tests::TestGateway;

/// Bound on waiting for one event or one eventual condition.
const WAIT: Duration = Duration::from_secs(20);

fn parse(toml: &str) -> Config {
    Config::from_toml(toml).unwrap_or_else(|e| panic!("plugin config parses: {e}\n{toml}"))
}

async fn start_with(toml: &str) -> TestGateway {
    let parsed = parse(toml);
    TestGateway::start(move |c| {
        c.plugins = parsed.plugins;
        c.routes = parsed.routes;
    })
    .await
}

async fn restart_in(dir: &Path, toml: &str) -> TestGateway {
    let parsed = parse(toml);
    TestGateway::start_in(dir, move |c| {
        c.plugins = parsed.plugins;
        c.routes = parsed.routes;
    })
    .await
}

async fn client_named(gw: &TestGateway, client_id: Option<&str>) -> Client {
    let mut o = ClientOptions::new(gw.ws_url());
    o.client_id = client_id.map(str::to_string);
    o.reconnect = false;
    o.encoding = Encoding::Json;
    o.request_timeout = WAIT;
    Client::connect(o).await.expect("client connects")
}

fn text(m: &Msg) -> String {
    String::from_utf8_lossy(&m.data.0).into_owned()
}

/// Every retained message of `topic`, following history pages (at most 1000 pages).
async fn all_history(c: &Client, topic: &str) -> Vec<Msg> {
    let mut out = Vec::new();
    let mut start = Start::Earliest;
    for _ in 0..1000 {
        let page = c.history(topic, start, None).await.expect("history");
        let more = page.more && !page.msgs.is_empty();
        out.extend(page.msgs);
        if !more {
            return out;
        }
        start = Start::Cursor(page.cursor);
    }
    panic!("history of {topic} did not end within 1000 pages");
}

async fn next_msg(sub: &mut edgesync_client::Subscription) -> Msg {
    match sub.next_timeout(WAIT).await {
        Some(Event::Msg(m)) => m,
        other => panic!("expected a message, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ticker_publishes_on_schedule_through_the_pipeline() {
    let gw = start_with(&format!(
        r#"
[[plugin]]
name = "ticker"
path = "{ticker}"
[plugin.config]
topic = "time.tick"
interval_ms = 20
node = "edge-test"
[plugin.grants]
pubsub = true
"#,
        ticker = built::TICKER,
    ))
    .await;
    let c = client_named(&gw, None).await;
    let mut sub = c
        .subscribe("time.tick", Start::Latest)
        .await
        .expect("subscribe");
    let mut seqs = Vec::new();
    for _ in 0..5 {
        let m = next_msg(&mut sub).await;
        assert_eq!(m.topic, "time.tick");
        assert!(m.seq > 0, "a tick is stored like any publish: {m:?}");
        let v: serde_json::Value = serde_json::from_slice(&m.data.0).expect("tick is JSON");
        assert_eq!(v["node"], "edge-test");
        seqs.push(v["seq"].as_i64().expect("tick seq"));
    }
    assert!(
        seqs.windows(2).all(|w| w[0] < w[1]),
        "ticks arrive in order: {seqs:?}"
    );
    assert!(seqs[0] >= 1, "kv counter started at 1: {seqs:?}");
    // Stored, so a late subscriber can read them back in the same order.
    let stored: Vec<i64> = all_history(&c, "time.tick")
        .await
        .iter()
        .map(|m| {
            serde_json::from_slice::<serde_json::Value>(&m.data.0).expect("json")["seq"]
                .as_i64()
                .expect("seq")
        })
        .collect();
    assert!(
        stored.windows(2).all(|w| w[0] < w[1]),
        "stored ticks in order: {stored:?}"
    );
    assert!(
        seqs.iter().all(|s| stored.contains(s)),
        "every delivered tick is stored"
    );
}

fn kv_config() -> String {
    format!(
        r#"
[[plugin]]
name = "kv-counter"
path = "{kv}"

[[route]]
topics = "count.>"
plugins = ["kv-counter"]
"#,
        kv = built::KV_COUNTER,
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plugin_kv_is_durable_across_a_restart() {
    let toml = kv_config();
    let mut first = start_with(&toml).await;
    let c = client_named(&first, None).await;
    for _ in 0..3 {
        c.publish("count.hits", "incr hits").await.expect("publish");
    }
    let before: Vec<String> = all_history(&c, "count.hits")
        .await
        .iter()
        .map(text)
        .collect();
    assert_eq!(
        before,
        ["1", "2", "3"],
        "the stored message is the plugin's replacement"
    );
    drop(c);
    first.stop().await;

    let second = restart_in(&first.dir, &toml).await;
    let c = client_named(&second, None).await;
    for _ in 0..2 {
        c.publish("count.hits", "incr hits")
            .await
            .expect("publish after restart");
    }
    let after: Vec<String> = all_history(&c, "count.hits")
        .await
        .iter()
        .map(text)
        .collect();
    assert_eq!(
        after,
        ["1", "2", "3", "4", "5"],
        "the kv counter continued after the restart"
    );
    c.publish("count.hits", "get hits").await.expect("get");
    let last = all_history(&c, "count.hits").await.last().map(text);
    assert_eq!(last.as_deref(), Some("5@5"), "value and version survived");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retention_plugin_skips_ephemeral_topics_and_applies_hints() {
    let gw = start_with(&format!(
        r#"
[[plugin]]
name = "retention"
path = "{retention}"
[plugin.config]
ephemeral = ["presence.>"]
[[plugin.config.rules]]
topics = "chat.>"
max_count = 3

[[route]]
topics = "presence.>"
plugins = ["retention"]

[[route]]
topics = "chat.>"
plugins = ["retention"]
"#,
        retention = built::RETENTION,
    ))
    .await;
    let c = client_named(&gw, None).await;

    // Ephemeral: delivered live, acked with seq 0, not stored.
    let mut sub = c
        .subscribe("presence.>", Start::Latest)
        .await
        .expect("subscribe");
    let ack = c
        .publish("presence.u1", "online")
        .await
        .expect("ephemeral publish acked");
    assert_eq!(ack.seq, 0, "not stored: {ack:?}");
    let live = next_msg(&mut sub).await;
    assert_eq!(
        (live.topic.as_str(), text(&live).as_str()),
        ("presence.u1", "online")
    );
    assert!(
        all_history(&c, "presence.u1").await.is_empty(),
        "ephemeral topic has no history"
    );

    // Retention hint: at most 3 messages kept once housekeeping ran.
    for i in 0..10 {
        let ack = c
            .publish("chat.room", format!("m{i}"))
            .await
            .expect("publish");
        assert!(ack.seq > 0, "stored: {ack:?}");
    }
    let mut kept = Vec::new();
    for _ in 0..500 {
        gw.gateway().store.tick();
        kept = all_history(&c, "chat.room")
            .await
            .iter()
            .map(text)
            .collect::<Vec<_>>();
        if kept.len() <= 3 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(
        kept,
        ["m7", "m8", "m9"],
        "the hinted max_count trimmed the oldest"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retention_hint_applies_only_to_messages_the_chain_stores() {
    // Two storage hooks on one chain: the first hints max_count 1 for every
    // `audit.>` topic, the second skips `audit.tmp.>` (not stored).
    let gw = start_with(&format!(
        r#"
[[plugin]]
name = "retention"
path = "{retention}"
[[plugin.config.rules]]
topics = "audit.>"
max_count = 1

[[plugin]]
name = "skip-tmp"
path = "{retention}"
[plugin.config]
ephemeral = ["audit.tmp.>"]

[[route]]
topics = "audit.>"
plugins = ["retention", "skip-tmp"]
"#,
        retention = built::RETENTION,
    ))
    .await;
    let c = client_named(&gw, None).await;
    let kept = c.publish("audit.log", "a").await.expect("publish");
    assert!(kept.seq > 0, "stored: {kept:?}");
    let skipped = c.publish("audit.tmp.x", "b").await.expect("publish");
    assert_eq!(skipped.seq, 0, "skipped by the second hook: {skipped:?}");

    let store = &gw.gateway().store;
    assert_eq!(
        store.retention_for("audit.log").max_messages,
        Some(1),
        "the stored message's hint is in force"
    );
    assert_eq!(
        store.retention_for("audit.tmp.x").max_messages,
        None,
        "a message the chain did not store leaves the topic's retention alone"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn auth_only_plugin_is_never_called_for_messages() {
    let gw = start_with(&format!(
        r#"
[[plugin]]
name = "auth-only"
path = "{auth}"

[[route]]
topics = ">"
plugins = ["auth-only"]
"#,
        auth = built::AUTH_ONLY,
    ))
    .await;
    let alice = client_named(&gw, Some("alice")).await;
    let mut sub = alice
        .subscribe("public.>", Start::Latest)
        .await
        .expect("subscribe");
    for i in 0..5 {
        alice
            .publish("public.news", format!("n{i}"))
            .await
            .expect("publish public");
        alice
            .publish("alice.notes", format!("a{i}"))
            .await
            .expect("publish own");
    }
    let err = alice
        .publish("bob.notes", "x")
        .await
        .expect_err("not alice's topic");
    assert_eq!(
        err.code(),
        Some(ErrorCode::Forbidden),
        "its permissions are enforced: {err}"
    );
    assert_eq!(
        text(&next_msg(&mut sub).await),
        "n0",
        "messages flow past the route"
    );
    let _bob = client_named(&gw, Some("bob")).await;

    let metrics = gw.gateway().metrics.render();
    let calls = |hook: &str| -> f64 {
        metrics
            .lines()
            .filter(|l| l.starts_with("edgesync_plugin_calls_total{"))
            .filter(|l| {
                l.contains("plugin=\"auth-only\"") && l.contains(&format!("hook=\"{hook}\""))
            })
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum()
    };
    assert!(
        calls("on-connect") >= 2.0,
        "connects were counted:\n{metrics}"
    );
    for hook in ["on-message", "on-batch", "on-write"] {
        assert_eq!(
            calls(hook),
            0.0,
            "{hook} never called for an auth-only plugin:\n{metrics}"
        );
    }
}

/// Clients publishing concurrently while the plugin is reloaded.
const LOAD_CLIENTS: usize = 3;
/// Publishes per client.
const LOAD_PER_CLIENT: usize = 120;
/// Successful reloads during the load.
const LOAD_RELOADS: usize = 5;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reload_under_publish_load_loses_and_duplicates_nothing() {
    let plugin_dir = tempfile::tempdir().expect("tempdir");
    let plugin_path = plugin_dir.path().join("hot.wasm");
    std::fs::copy(built::PASS, &plugin_path).expect("copy pass plugin");
    let gw = start_with(&format!(
        r#"
[[plugin]]
name = "hot"
path = "{path}"
[plugin.config]
poison = true     # ignored by `pass`; refused by `transform` (deny_unknown_fields)

[[route]]
topics = "load.>"
plugins = ["hot"]
"#,
        path = plugin_path.display(),
    ))
    .await;
    let admin = gw.gateway().plugins().expect("plugin admin");
    let version = |a: &Arc<dyn edgesync::plugin::PluginAdmin>| -> u64 {
        let list = a.list();
        list[0].detail["version"].as_u64().expect("version")
    };
    let v0 = version(&admin);

    let acked = Arc::new(AtomicUsize::new(0));
    let mut publishers = Vec::new();
    for k in 0..LOAD_CLIENTS {
        let c = client_named(&gw, None).await;
        let acked = acked.clone();
        publishers.push(tokio::spawn(async move {
            for i in 0..LOAD_PER_CLIENT {
                let ack = c
                    .publish(&format!("load.c{k}"), format!("c{k}-{i}"))
                    .await
                    .expect("every publish acked");
                assert!(ack.seq > 0 && !ack.dup, "stored once: {ack:?}");
                acked.fetch_add(1, Ordering::Relaxed);
            }
            c
        }));
    }
    // Reload r starts once (r + 1) / (LOAD_RELOADS + 2) of the publishes are acked, so every
    // reload begins mid-load whatever the machine's speed.
    let total = LOAD_CLIENTS * LOAD_PER_CLIENT;
    for r in 0..LOAD_RELOADS {
        let threshold = (r + 1) * total / (LOAD_RELOADS + 2);
        let reached =
            edgesync_tests::eventually(2000, || acked.load(Ordering::Relaxed) >= threshold).await;
        assert!(
            reached,
            "publishes progress: {} of {threshold}",
            acked.load(Ordering::Relaxed)
        );
        admin.reload("hot").await.expect("reload under load");
    }
    let mut clients = Vec::new();
    for p in publishers {
        clients.push(p.await.expect("publisher task"));
    }
    assert_eq!(
        version(&admin),
        v0 + LOAD_RELOADS as u64,
        "every reload swapped in a new version"
    );

    for (k, c) in clients.iter().enumerate() {
        let got: Vec<String> = all_history(c, &format!("load.c{k}"))
            .await
            .iter()
            .map(text)
            .collect();
        let want: Vec<String> = (0..LOAD_PER_CLIENT).map(|i| format!("c{k}-{i}")).collect();
        assert_eq!(
            got.len(),
            want.len(),
            "client {k}: nothing lost or duplicated"
        );
        assert_eq!(
            got.iter().collect::<BTreeSet<_>>().len(),
            got.len(),
            "client {k}: no duplicates"
        );
        assert_eq!(got, want, "client {k}: all payloads once, in order");
    }

    // A broken component: the reload fails, the old version keeps serving.
    let c = &clients[0];
    std::fs::write(&plugin_path, b"\0asm not really").expect("write garbage");
    admin
        .reload("hot")
        .await
        .expect_err("garbage does not load");
    // A valid component whose init fails on this config: rolled back too.
    std::fs::copy(built::TRANSFORM, &plugin_path).expect("copy transform");
    let err = admin.reload("hot").await.expect_err("init fails");
    assert!(
        err.to_string().contains("poison"),
        "the error names the cause: {err}"
    );
    assert_eq!(
        version(&admin),
        v0 + LOAD_RELOADS as u64,
        "no version swapped in"
    );
    c.publish("load.after", "still pass")
        .await
        .expect("old version serves");
    let after = all_history(c, "load.after").await;
    assert_eq!(after.iter().map(text).collect::<Vec<_>>(), ["still pass"]);
    // Fixed file: reload works again.
    std::fs::copy(built::PASS, &plugin_path).expect("restore pass");
    let before_fix = version(&admin);
    admin.reload("hot").await.expect("reload after fix");
    assert!(
        version(&admin) > before_fix,
        "the fixed version is swapped in"
    );
}

/// `[plugin_watch]`: replacing a plugin's component file hot-reloads it — here a
/// pass-through plugin is replaced by the `trap` test plugin, which upper-cases every
/// payload that does not contain `TRAP` (none here), so its output shows it runs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plugin_file_change_triggers_hot_reload() {
    let files = tempfile::tempdir().expect("tmp");
    let path = files.path().join("live.wasm");
    std::fs::copy(edgesync_plugin_host::built::PASS, &path).expect("copy pass");
    let toml = format!(
        "[[plugin]]\nname = \"live\"\npath = {:?}\n[[route]]\ntopics = \"w.>\"\nplugins = [\"live\"]\n[plugin_watch]\ninterval_ms = 50\n",
        path.display().to_string()
    );
    let parsed = edgesync::config::Config::from_toml(&toml).expect("config");
    let gw = edgesync_tests::TestGateway::start(move |c| {
        c.plugins = parsed.plugins;
        c.routes = parsed.routes;
        c.plugin_watch = parsed.plugin_watch;
    })
    .await;
    let c = gw.client(edgesync_client::Encoding::MsgPack).await;
    c.publish("w.a", "before").await.expect("publish");
    // Replace the file atomically (write elsewhere, rename over).
    let staged = files.path().join("staged.wasm");
    std::fs::copy(edgesync_plugin_host::built::TRAP, &staged).expect("copy trap");
    std::fs::rename(&staged, &path).expect("rename");
    let mut reloaded = false;
    for i in 0..400 {
        c.publish("w.a", format!("after{i}"))
            .await
            .expect("publish");
        let h = c
            .history("w.a", edgesync_client::Start::Last(1), None)
            .await
            .expect("history");
        if h.msgs
            .last()
            .is_some_and(|m| m.data.0.starts_with(b"AFTER"))
        {
            reloaded = true;
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(25)).await;
    }
    assert!(reloaded, "the new component runs after the file changed");
    let first = c
        .history("w.a", edgesync_client::Start::Earliest, Some(1))
        .await
        .expect("history");
    assert_eq!(
        first.msgs[0].data.0.as_ref(),
        b"before",
        "the old version handled messages before the change"
    );
}
