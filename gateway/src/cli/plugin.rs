//! `edgesync plugin`: make, build, check and reload WebAssembly plugins.

use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode};
use std::sync::Arc;

use clap::Subcommand;
use edgesync_plugin_host as ph;

#[derive(Debug, Subcommand)]
pub enum PluginCommand {
    /// Create a ready-to-build Rust plugin project in ./NAME (or --dir).
    New {
        name: String,
        #[arg(long)]
        dir: Option<PathBuf>,
        /// Path to the guest SDK (`sdk/rust` of the edgesync repository).
        #[arg(long, default_value = concat!(env!("CARGO_MANIFEST_DIR"), "/../sdk/rust"))]
        sdk: PathBuf,
    },
    /// Build a plugin project to a wasm32-wasip2 component (installs the target if missing).
    Build {
        #[arg(default_value = ".")]
        dir: PathBuf,
        /// Debug build (default: release).
        #[arg(long)]
        debug: bool,
    },
    /// Validate a component against the contract and list the hook families it exports.
    Check { file: PathBuf },
    /// Hot-reload a plugin of a running gateway through its admin API.
    Reload {
        name: String,
        #[arg(
            long,
            env = "EDGESYNC_ADMIN_URL",
            default_value = "http://127.0.0.1:7480"
        )]
        admin: String,
        #[arg(long, env = "EDGESYNC_ADMIN_TOKEN")]
        token: Option<String>,
    },
}

pub fn run(cmd: PluginCommand) -> ExitCode {
    let result = match cmd {
        PluginCommand::New { name, dir, sdk } => new(&name, dir, &sdk),
        PluginCommand::Build { dir, debug } => build(&dir, !debug),
        PluginCommand::Check { file } => check(&file),
        PluginCommand::Reload { name, admin, token } => reload(&name, &admin, token.as_deref()),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

fn new(name: &str, dir: Option<PathBuf>, sdk: &Path) -> Result<(), String> {
    if name.is_empty()
        || !name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
    {
        return Err(format!("{name:?}: use letters, digits, '-' and '_'"));
    }
    let dir = dir.unwrap_or_else(|| PathBuf::from(name));
    if dir.exists() {
        return Err(format!("{} already exists", dir.display()));
    }
    let sdk = std::fs::canonicalize(sdk)
        .map_err(|e| format!("SDK at {}: {e} (pass --sdk PATH)", sdk.display()))?;
    std::fs::create_dir_all(dir.join("src")).map_err(|e| e.to_string())?;
    let manifest = format!(
        "[package]\nname = \"{name}\"\nversion = \"0.1.0\"\nedition = \"2024\"\n\n[lib]\ncrate-type = [\"cdylib\"]\n\n\
         [dependencies]\nedgesync-plugin = {{ path = {:?} }}\n\n[profile.release]\nopt-level = \"s\"\nlto = true\n\n\
         # A standalone project, not part of any enclosing workspace.\n[workspace]\n",
        sdk.display().to_string()
    );
    let lib = r#"//! An edgesync plugin. Build: `edgesync plugin build`; load it with
//!
//! ```toml
//! [[plugin]]
//! name = "NAME"
//! path = "target/wasm32-wasip2/release/NAME_FILE.wasm"
//! [[route]]
//! topics = ">"
//! plugins = ["NAME"]
//! ```

use edgesync_plugin::{MessageRef, MessageVerdict, Plugin, SenderRef};

struct MyPlugin;

#[edgesync_plugin::export]
impl Plugin for MyPlugin {
    fn init(_config: &str) -> Result<Self, String> {
        Ok(MyPlugin)
    }

    /// Runs for every message on a routed topic before it is stored.
    fn on_message(&self, _sender: SenderRef<'_>, msg: MessageRef<'_>) -> MessageVerdict {
        if msg.payload.is_empty() {
            return MessageVerdict::Reject("empty payloads are not allowed".into());
        }
        MessageVerdict::Pass
    }
}
"#
    .replace("NAME_FILE", &name.replace('-', "_"))
    .replace("NAME", name);
    std::fs::write(dir.join("Cargo.toml"), manifest).map_err(|e| e.to_string())?;
    std::fs::write(dir.join("src/lib.rs"), lib).map_err(|e| e.to_string())?;
    println!(
        "created {}; next: edgesync plugin build {}",
        dir.display(),
        dir.display()
    );
    Ok(())
}

fn build(dir: &Path, release: bool) -> Result<(), String> {
    let installed = Command::new("rustup")
        .args(["target", "list", "--installed"])
        .output();
    if !installed.is_ok_and(|o| {
        String::from_utf8_lossy(&o.stdout)
            .lines()
            .any(|l| l.trim() == "wasm32-wasip2")
    }) {
        eprintln!("installing the wasm32-wasip2 target");
        let ok = Command::new("rustup")
            .args(["target", "add", "wasm32-wasip2"])
            .status()
            .is_ok_and(|s| s.success());
        if !ok {
            return Err("`rustup target add wasm32-wasip2` failed".into());
        }
    }
    let mut cargo = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()));
    cargo
        .current_dir(dir)
        .args(["build", "--target", "wasm32-wasip2"]);
    if release {
        cargo.arg("--release");
    }
    let status = cargo.status().map_err(|e| format!("cargo: {e}"))?;
    if !status.success() {
        return Err(format!("cargo build failed ({status})"));
    }
    let profile = if release { "release" } else { "debug" };
    let out = dir.join("target/wasm32-wasip2").join(profile);
    for entry in std::fs::read_dir(&out)
        .map_err(|e| format!("{}: {e}", out.display()))?
        .flatten()
    {
        if entry.path().extension().is_some_and(|x| x == "wasm") {
            println!("{}", entry.path().display());
        }
    }
    Ok(())
}

fn check(file: &Path) -> Result<(), String> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| e.to_string())?;
    rt.block_on(async {
        let cache = tempfile_dir()?;
        let cfg = ph::HostConfig {
            cache_dir: Some(cache.clone()),
            ..ph::HostConfig::default()
        };
        let host = ph::PluginHost::new(
            cfg,
            Arc::new(ph::testing::MemoryServices::new()),
            prometheus::Registry::new(),
        )
        .map_err(|e| e.to_string())?;
        let info = host.inspect(file).await.map_err(|e| e.to_string());
        let _ = std::fs::remove_dir_all(&cache);
        let info = info?;
        println!(
            "{}: a valid edgesync:plugin@0.1.0 component",
            file.display()
        );
        println!("sha256: {}", info.sha256);
        println!("exports:");
        for f in info.exports.iter() {
            println!("  {}", f.interface());
        }
        println!("imports:");
        for i in &info.imports {
            println!("  {i}");
        }
        Ok(())
    })
}

fn tempfile_dir() -> Result<PathBuf, String> {
    let dir = std::env::temp_dir().join(format!("edgesync-check-{:016x}", rand::random::<u64>()));
    std::fs::create_dir_all(&dir).map_err(|e| e.to_string())?;
    Ok(dir)
}

/// POST /v1/plugins/NAME/reload with a minimal HTTP/1.1 client (the admin API is loopback HTTP).
fn reload(name: &str, admin: &str, token: Option<&str>) -> Result<(), String> {
    use std::io::{Read, Write};
    let hostport = admin
        .strip_prefix("http://")
        .ok_or("the admin URL must start with http://")?
        .trim_end_matches('/');
    let mut s = std::net::TcpStream::connect(hostport).map_err(|e| format!("{admin}: {e}"))?;
    let _ = s.set_read_timeout(Some(std::time::Duration::from_secs(60)));
    let auth = token
        .map(|t| format!("Authorization: Bearer {t}\r\n"))
        .unwrap_or_default();
    let req = format!(
        "POST /v1/plugins/{name}/reload HTTP/1.1\r\nHost: {hostport}\r\n{auth}Content-Length: 0\r\nConnection: close\r\n\r\n"
    );
    s.write_all(req.as_bytes()).map_err(|e| e.to_string())?;
    let mut resp = String::new();
    s.read_to_string(&mut resp).map_err(|e| e.to_string())?;
    let status = resp.split_whitespace().nth(1).unwrap_or("?").to_string();
    let body = resp
        .split_once("\r\n\r\n")
        .map(|(_, b)| b)
        .unwrap_or_default();
    if status == "200" {
        println!("{body}");
        Ok(())
    } else {
        Err(format!("HTTP {status}: {body}"))
    }
}
