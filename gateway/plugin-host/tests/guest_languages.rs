//! Plugins in other languages: each test copies a language's template from
//! `sdk/<lang>/` into the target directory the way a user copies it, puts
//! the contract (`sdk/wit/plugin.wit`) where the template expects it, runs
//! the template's own build with that language's toolchain, and runs the
//! component in the real host.
//!
//! Every template implements the same plugin ("shout", see any template's
//! README): `init` reads `prefix` through `config.get` and logs; `on-message`
//! uppercases the payload of messages on topics under the prefix and adds
//! an `x-shouted` header numbered by a kv counter, and passes anything else;
//! `on-batch` gives the same verdicts. So one check covers them all.
//!
//! A missing toolchain fails the test with the install step (`scripts/test.sh`
//! installs them all): a test that skipped would let a template rot unseen.
//! Build outputs stay under the target directory; nothing here is committed.
//! The figures printed (size, compile, instantiate, call) are for the
//! README and the report, never asserted.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use common::*;
use edgesync_plugin_host::{
    BatchBuilder, Family, Header, HostConfig, HostServices, Message, MessageVerdict, PluginConfig,
};

/// The repository root.
fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// One language's template: where it is, how it builds, what it produces.
struct Template {
    /// Short name, also the build directory's name.
    lang: &'static str,
    /// The template directory, relative to the repository root.
    dir: &'static str,
    /// The built component, relative to the template copy.
    output: &'static str,
    /// `limits.memory_mib` the template's README documents (its runtime's
    /// linear memory after start-up).
    memory_mib: u32,
    /// `limits.init_deadline_ms` the template's README documents.
    init_deadline_ms: u64,
}

#[tokio::test]
async fn javascript_template_builds_and_runs() {
    let _one = ONE_AT_A_TIME.lock().await;
    let t = Template {
        lang: "js",
        dir: "sdk/js/plugin/template",
        output: "dist/plugin.wasm",
        memory_mib: 32,
        init_deadline_ms: 100,
    };
    let dir = copy_template(&t);
    require("npm", &["--version"], "Node.js ≥ 20 and npm");
    // `npm ci` replaces node_modules on every run; skip it while the lock
    // file is the one last installed, so a warm run costs only the build.
    let lock = std::fs::read(dir.join("package-lock.json")).expect("read package-lock.json");
    let stamp = dir.join("node_modules/.edgesync-installed-lock.json");
    if std::fs::read(&stamp).ok().as_deref() != Some(lock.as_slice()) {
        run(&dir, "npm", &["ci", "--no-audit", "--no-fund"]);
        std::fs::write(&stamp, &lock).expect("write install stamp");
    }
    run(&dir, "npm", &["run", "build"]);
    check_shout(&t, &dir).await;
}

#[tokio::test]
async fn python_template_builds_and_runs() {
    let _one = ONE_AT_A_TIME.lock().await;
    let t = Template {
        lang: "python",
        dir: "sdk/python/template",
        output: "dist/plugin.wasm",
        memory_mib: 32,
        init_deadline_ms: 500,
    };
    let dir = copy_template(&t);
    let pinned = std::fs::read_to_string(dir.join("requirements.txt")).expect("requirements.txt");
    let version = pinned
        .lines()
        .find_map(|l| l.strip_prefix("componentize-py=="))
        .expect("requirements.txt pins componentize-py");
    let install = format!(
        "it with `python3 -m pip install -r {}/requirements.txt` (componentize-py {version})",
        t.dir
    );
    require_version(
        "componentize-py",
        &format!("componentize-py {version}"),
        &install,
    );
    run(&dir, "sh", &["build.sh"]);
    check_shout(&t, &dir).await;
}

#[tokio::test]
async fn c_template_builds_and_runs() {
    let _one = ONE_AT_A_TIME.lock().await;
    let t = Template {
        lang: "c",
        dir: "sdk/c/template",
        output: "dist/plugin.wasm",
        memory_mib: 32,
        init_deadline_ms: 100,
    };
    let dir = copy_template(&t);
    let apt = "Debian's clang, lld, wasi-libc and libclang-rt-dev-wasm32 (`apt-get install …`)";
    require("make", &["--version"], "make (`apt-get install make`)");
    require("clang", &["--version"], apt);
    require("wasm-ld", &["--version"], apt);
    let bindgen = format!("`cargo install --locked wit-bindgen-cli@{WIT_BINDGEN}`");
    require_version(
        "wit-bindgen",
        &format!("wit-bindgen-cli {WIT_BINDGEN}"),
        &bindgen,
    );
    let tools = format!("`cargo install --locked wasm-tools@{WASM_TOOLS}`");
    require_version("wasm-tools", &format!("wasm-tools {WASM_TOOLS}"), &tools);
    run(&dir, "make", &["clean"]);
    // Warnings are errors here, so the template stays clean; not in the
    // Makefile, where another clang's new warnings would break a user's build.
    run(&dir, "make", &["CFLAGS=-O2 -Werror"]);
    check_shout(&t, &dir).await;
}

/// The pinned versions `sdk/c/README.md` names and
/// `scripts/guest-toolchains.sh` installs.
const WIT_BINDGEN: &str = "0.61.1";
const WASM_TOOLS: &str = "1.258.3";

/// Copies the template into `<target>/tmp/guest-langs/<lang>` (over an
/// earlier copy, keeping its installed dependencies) and the contract into
/// the copy's `wit/deps/edgesync/`, as the template's README tells a user.
fn copy_template(t: &Template) -> PathBuf {
    let dst = Path::new(env!("CARGO_TARGET_TMPDIR"))
        .join("guest-langs")
        .join(t.lang);
    copy_dir(&repo().join(t.dir), &dst);
    let deps = dst.join("wit/deps/edgesync");
    std::fs::create_dir_all(&deps).expect("create wit/deps/edgesync");
    std::fs::copy(repo().join("sdk/wit/plugin.wit"), deps.join("plugin.wit"))
        .expect("copy sdk/wit/plugin.wit");
    let _ = std::fs::remove_file(dst.join(t.output));
    dst
}

fn copy_dir(src: &Path, dst: &Path) {
    std::fs::create_dir_all(dst).unwrap_or_else(|e| panic!("create {}: {e}", dst.display()));
    let entries = std::fs::read_dir(src).unwrap_or_else(|e| panic!("read {}: {e}", src.display()));
    for entry in entries {
        let entry = entry.expect("directory entry");
        let (from, to) = (entry.path(), dst.join(entry.file_name()));
        if from.is_dir() {
            copy_dir(&from, &to);
        } else {
            std::fs::copy(&from, &to).unwrap_or_else(|e| panic!("copy {}: {e}", from.display()));
        }
    }
}

/// Fails the test, naming `install`, unless `program args` runs.
fn require(program: &str, args: &[&str], install: &str) {
    let ok = Command::new(program)
        .args(args)
        .output()
        .is_ok_and(|o| o.status.success());
    assert!(
        ok,
        "`{program}` is missing: install {install}; `scripts/test.sh` installs every \
         toolchain the guest-language tests need"
    );
}

/// Fails the test, naming `install`, unless `program --version` prints
/// `expected` (the pinned version).
fn require_version(program: &str, expected: &str, install: &str) {
    require(program, &["--version"], install);
    let out = Command::new(program)
        .arg("--version")
        .output()
        .unwrap_or_else(|e| panic!("run `{program} --version`: {e}"));
    let found = String::from_utf8_lossy(&out.stdout);
    assert!(
        found.trim().starts_with(expected),
        "`{program}` is {}, not the pinned `{expected}`: install {install}",
        found.trim()
    );
}

/// Runs `program args` in `dir`, failing the test with its output.
fn run(dir: &Path, program: &str, args: &[&str]) {
    let started = Instant::now();
    let out = Command::new(program)
        .args(args)
        .current_dir(dir)
        .output()
        .unwrap_or_else(|e| panic!("run `{program}`: {e}"));
    assert!(
        out.status.success(),
        "`{program} {}` in {} failed ({}):\n{}\n{}",
        args.join(" "),
        dir.display(),
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
    );
    eprintln!(
        "{}: `{program} {}` took {:.1?}",
        dir.display(),
        args.join(" "),
        started.elapsed()
    );
}

/// Held by each test while it builds and measures: the builds and the
/// compilation of megabytes of engine would only fight over two cores, and
/// the printed figures would mean less.
static ONE_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// Loads the built template and checks the "shout" behaviour every
/// template implements.
async fn check_shout(t: &Template, dir: &Path) {
    let path = dir.join(t.output);
    let size = std::fs::metadata(&path)
        .unwrap_or_else(|e| panic!("{} was not built: {e}", path.display()))
        .len();
    let cache = tempfile::tempdir().expect("cache dir");
    let h = host_with(HostConfig {
        cache_dir: Some(cache.path().to_path_buf()),
        // The JS and Python engines are megabytes of code: on a loaded
        // 2-core machine Cranelift can take minutes (the READMEs say so).
        compile_timeout_ms: 600_000,
        ..HostConfig::default()
    });

    // Compile alone first (a cache miss), so the load below measures
    // instantiation and `init` only.
    let started = Instant::now();
    let info = h.host.inspect(&path).await.expect("compiles");
    let compile = started.elapsed();
    let mut imports: Vec<&str> = info
        .imports
        .iter()
        .map(String::as_str)
        .filter(|i| i.starts_with("edgesync:"))
        .collect();
    imports.sort_unstable();
    assert_eq!(
        imports,
        [
            "edgesync:plugin/config@0.1.0",
            "edgesync:plugin/kv@0.1.0",
            "edgesync:plugin/log@0.1.0",
            "edgesync:plugin/types@0.1.0",
            "edgesync:plugin/verdict@0.1.0",
        ],
        "the template's world imports exactly what it uses"
    );

    let mut c = PluginConfig::new("shout", &path);
    c.config.insert("prefix".into(), serde_json::json!("loud."));
    c.limits.pool_size = 1;
    c.limits.memory_mib = t.memory_mib;
    c.limits.init_deadline_ms = t.init_deadline_ms;
    // Wall time in guest code; generous for a shared CI machine.
    c.limits.deadline_ms = 1000;
    c.limits.timeout_ms = 2000;
    let started = Instant::now();
    let p = h.load(c).await;
    let instantiate = started.elapsed();
    assert_eq!(
        p.exports().iter().collect::<Vec<_>>(),
        vec![Family::Lifecycle, Family::Message]
    );
    // `init` again on a fresh instance: it is idempotent.
    p.init().await.expect("init");

    let shouted = p
        .on_message(&conn("alice"), &msg_with("loud.room", b"hello, world 1"))
        .await
        .expect("on-message");
    assert_eq!(
        shouted,
        MessageVerdict::Replace(shouted_msg("loud.room", "HELLO, WORLD 1", 1))
    );
    let passed = p
        .on_message(&conn("alice"), &msg("shout.room", b"quiet"))
        .await
        .expect("on-message");
    assert_eq!(
        passed,
        MessageVerdict::Pass,
        "the prefix comes from the config"
    );

    let batch = BatchBuilder::from_messages(&[
        msg("other.x", b"a"),
        msg_with("loud.x", b"b"),
        msg("loud", b"c"),
    ])
    .expect("batch");
    let verdicts = p.on_batch(&conn("alice"), &batch).await.expect("on-batch");
    // Only the verdicts that are not `pass` come back, by index.
    let indexes: Vec<u32> = verdicts.exceptions().iter().map(|e| e.index).collect();
    assert_eq!(
        indexes,
        [1],
        "on-batch lists only the messages that do not pass"
    );
    assert_eq!(
        verdicts.into_vec(),
        vec![
            MessageVerdict::Pass,
            MessageVerdict::Replace(shouted_msg("loud.x", "B", 2)),
            MessageVerdict::Pass,
        ]
    );
    // The counter lives in the host's kv, under the plugin's name.
    let counter = h.services.kv_get("shout", "shouted").expect("kv get");
    assert_eq!(counter.map(|e| e.value), Some(b"2".to_vec()));

    // Best of 5 rounds: the machine is shared, the figure is rough.
    let (sender, passing) = (conn("alice"), msg("other.room", b"x"));
    let mut call = std::time::Duration::MAX;
    for _ in 0..5 {
        let n = 100u32;
        let started = Instant::now();
        for _ in 0..n {
            p.on_message(&sender, &passing).await.expect("on-message");
        }
        call = call.min(started.elapsed() / n);
    }
    eprintln!(
        "{}: component {} KiB, compile {compile:.1?}, instantiate + init {instantiate:.1?}, \
         on-message (pass) {call:.1?}",
        t.lang,
        size / 1024,
    );
}

/// A message on `topic` with one header, to check headers are kept.
fn msg_with(topic: &str, payload: &[u8]) -> Message {
    let mut m = msg(topic, payload);
    m.headers.push(Header {
        name: "from".into(),
        value: "test".into(),
    });
    m
}

/// What the template makes of `msg_with(topic, _)`: the payload
/// uppercased, the headers kept and `x-shouted: count` appended.
fn shouted_msg(topic: &str, payload: &str, count: u64) -> Message {
    let mut m = msg_with(topic, payload.as_bytes());
    m.headers.push(Header {
        name: "x-shouted".into(),
        value: count.to_string(),
    });
    m
}
