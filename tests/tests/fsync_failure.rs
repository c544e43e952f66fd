//! A failing fsync, injected at the syscall: the gateway process runs with a small
//! `LD_PRELOAD` library (compiled here from C) whose `fdatasync`/`fsync` return `EIO`
//! while a flag file exists. Before the flag every publish is acknowledged; once the
//! disk "fails", the next publish is refused `storage_unavailable` naming the failed
//! fsync — never acknowledged — `/readyz` turns 503 with the cause, and after a
//! `kill -9` and a restart without the fault every acknowledged message is there.

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use edgesync_tests::json::Conn;
use edgesync_tests::{admin_get, free_port};
use serde_json::json;

const SHIM: &str = r#"
#define _GNU_SOURCE
#include <dlfcn.h>
#include <errno.h>
#include <stdlib.h>
#include <unistd.h>
static int failing(void) {
    const char *flag = getenv("EDGESYNC_TEST_FAIL_FSYNC");
    return flag && access(flag, F_OK) == 0;
}
int fdatasync(int fd) {
    if (failing()) { errno = EIO; return -1; }
    int (*real)(int) = (int (*)(int))dlsym(RTLD_NEXT, "fdatasync");
    return real(fd);
}
int fsync(int fd) {
    if (failing()) { errno = EIO; return -1; }
    int (*real)(int) = (int (*)(int))dlsym(RTLD_NEXT, "fsync");
    return real(fd);
}
"#;

fn spawn(dir: &Path, port: u16, admin: u16, shim: Option<(&Path, &Path)>) -> Child {
    let mut c = Command::new(env!("CARGO_BIN_EXE_edgesync-test-gateway"));
    c.args(["serve", "--ws", &format!("127.0.0.1:{port}")])
        .args(["--wss", "off", "--quic", "off"])
        .args(["--admin", &format!("127.0.0.1:{admin}")])
        .arg("--data-dir")
        .arg(dir)
        .env("RUST_LOG", "error")
        .stdout(Stdio::null())
        .stderr(Stdio::inherit());
    if let Some((lib, flag)) = shim {
        c.env("LD_PRELOAD", lib)
            .env("EDGESYNC_TEST_FAIL_FSYNC", flag);
    }
    c.spawn().expect("spawn gateway")
}

async fn open(url: &str, client: &str) -> Conn {
    for _ in 0..200 {
        if tokio_tungstenite::connect_async(url).await.is_ok() {
            return Conn::open(url, client).await;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    panic!("gateway at {url} never answered");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_fsync_acknowledges_nothing_it_did_not_make_durable() {
    let tmp = tempfile::tempdir().expect("tmp");
    let src = tmp.path().join("failsync.c");
    let lib = tmp.path().join("libfailsync.so");
    let flag = tmp.path().join("fail-now");
    std::fs::write(&src, SHIM).expect("write shim");
    let built = Command::new("cc")
        .args(["-shared", "-fPIC", "-O2", "-o"])
        .arg(&lib)
        .arg(&src)
        .arg("-ldl")
        .status()
        .expect("a C compiler (cc) builds the fault-injection shim");
    assert!(built.success(), "cc failed");
    let data = tmp.path().join("data");
    let (port, admin) = (free_port(), free_port());
    let url = format!("ws://127.0.0.1:{port}");
    let mut child = spawn(&data, port, admin, Some((&lib, &flag)));
    let mut p = open(&url, "writer").await;
    let mut acked = Vec::new();
    for i in 0..20u64 {
        p.send(json!({"t":"pub","id":100 + i,"topic":"ledger","data":format!("entry-{i}"),"mid":format!("m{i}")}))
            .await;
        let v = p.next_of("puback").await;
        acked.push(v["seq"].as_u64().expect("seq"));
    }
    // The disk starts failing every sync.
    std::fs::write(&flag, b"").expect("flag");
    p.send(json!({"t":"pub","id":500,"topic":"ledger","data":"lost?","mid":"m-lost"}))
        .await;
    let e = p.next_of("error").await;
    assert_eq!(
        (e["id"].as_u64(), e["code"].as_str()),
        (Some(500), Some("storage_unavailable")),
        "{e}"
    );
    let msg = e["msg"].as_str().unwrap_or_default();
    assert!(
        msg.contains("fdatasync"),
        "the refusal names the failed sync: {msg}"
    );
    assert_eq!(e["retry"], true, "{e}");
    // Later publishes are refused at once, with the same cause.
    p.send(json!({"t":"pub","id":501,"topic":"ledger","data":"later"}))
        .await;
    let e = p.next_of("error").await;
    assert_eq!(e["code"], "storage_unavailable", "{e}");
    let (status, body) = admin_get(admin, "/readyz").await;
    assert_eq!(status, 503, "{body}");
    assert!(body.contains("fdatasync"), "{body}");
    let (status, _) = admin_get(admin, "/healthz").await;
    assert_eq!(status, 200);
    // Crash, and come back on a healthy disk: every acknowledged message is there.
    child.kill().expect("kill -9");
    child.wait().expect("reaped");
    std::fs::remove_file(&flag).expect("unflag");
    let mut child = spawn(&data, port, admin, None);
    let mut r = open(&url, "reader").await;
    r.send(json!({"t":"history","id":9,"topic":"ledger","start":"earliest"}))
        .await;
    let h = r.next_of("history").await;
    let stored: Vec<String> = h["msgs"]
        .as_array()
        .expect("msgs")
        .iter()
        .map(|m| m["data"].as_str().unwrap_or_default().to_string())
        .collect();
    for i in 0..20 {
        assert!(
            stored.contains(&format!("entry-{i}")),
            "acked entry-{i} survived: {stored:?}"
        );
    }
    assert!(
        !stored.iter().any(|d| d == "later"),
        "a refused publish is not stored: {stored:?}"
    );
    // Writes work again on the healthy disk.
    r.send(json!({"t":"pub","id":10,"topic":"ledger","data":"again"}))
        .await;
    assert_eq!(r.next_of("puback").await["id"], 10);
    child.kill().expect("kill");
    child.wait().expect("reaped");
}
