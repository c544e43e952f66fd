//! Builds every plugin in `plugins/` (first-party and test plugins) from
//! source to `wasm32-wasip2` components, and writes their paths to
//! `$OUT_DIR/built_plugins.rs` (see `src/built.rs`). Tests and benches
//! therefore always run against plugins built from the current sources,
//! and no `.wasm` is ever committed.
//!
//! The nested cargo uses its own target directory next to this build's
//! (`<target>/.../wasm-plugins`), so it never contends for the outer lock.

use std::env;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

const WASM_TARGET: &str = "wasm32-wasip2";

fn main() {
    let manifest_dir =
        PathBuf::from(env::var("CARGO_MANIFEST_DIR").expect("cargo sets CARGO_MANIFEST_DIR"));
    let repo = manifest_dir.join("../..");
    let plugins = repo.join("plugins");
    let out_dir = PathBuf::from(env::var("OUT_DIR").expect("cargo sets OUT_DIR"));
    // OUT_DIR = <target>[/<triple>]/<profile>/build/<pkg>-<hash>/out: go up
    // to the profile's parent so the wasm build is shared across hashes.
    let wasm_target_dir = out_dir
        .ancestors()
        .nth(4)
        .map(|p| p.join("wasm-plugins"))
        .unwrap_or_else(|| out_dir.join("wasm-plugins"));

    for dir in [&plugins, &repo.join("sdk/rust"), &repo.join("sdk/wit")] {
        watch(dir);
    }

    let members = workspace_members(&plugins.join("Cargo.toml"));
    // A fuzz build (cargo-fuzz passes `--cfg fuzzing`, fuzz/README.md) never runs a
    // plugin, and the nested cargo would inherit its nightly toolchain and sanitizer
    // flags: the paths below are written but nothing is built.
    let fuzzing = env::var_os("CARGO_CFG_FUZZING").is_some();
    if !fuzzing {
        ensure_wasm_target();
        build_plugins(&plugins, &wasm_target_dir);
    }

    let release = wasm_target_dir.join(WASM_TARGET).join("release");
    let mut src = String::new();
    src.push_str(&format!(
        "/// Directory holding the built components.\npub const DIR: &str = {:?};\n\n",
        release.display().to_string()
    ));
    let mut all = Vec::new();
    for member in &members {
        let name = package_name(&plugins.join(member).join("Cargo.toml"));
        let file = release.join(format!("{}.wasm", name.replace('-', "_")));
        assert!(
            fuzzing || file.is_file(),
            "plugin `{name}` did not produce {}",
            file.display()
        );
        let ident = name.to_uppercase().replace('-', "_");
        src.push_str(&format!(
            "/// The `{name}` component (`plugins/{member}`).\npub const {ident}: &str = {:?};\n",
            file.display().to_string()
        ));
        all.push((name, file));
    }
    src.push_str(
        "\n/// (package name, path) of every built plugin.\npub const ALL: &[(&str, &str)] = &[\n",
    );
    for (name, file) in &all {
        src.push_str(&format!(
            "    ({name:?}, {:?}),\n",
            file.display().to_string()
        ));
    }
    src.push_str("];\n\n");
    src.push_str(
        "/// The path of the built plugin named `name` (its package name, e.g. `jwt-auth`).\n\
         pub fn path(name: &str) -> Option<&'static str> {\n    \
         ALL.iter().find(|(n, _)| *n == name).map(|(_, p)| *p)\n}\n",
    );
    fs::write(out_dir.join("built_plugins.rs"), src).expect("write built_plugins.rs");
}

/// Re-run when any source file under `dir` changes (skipping `target`).
fn watch(dir: &Path) {
    let Ok(entries) = fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        let name = entry.file_name();
        if name == "target" || name.to_string_lossy().starts_with('.') {
            continue;
        }
        if path.is_dir() {
            watch(&path);
        } else {
            println!("cargo:rerun-if-changed={}", path.display());
        }
    }
}

/// The uncommented entries of `members = [...]`.
fn workspace_members(manifest: &Path) -> Vec<String> {
    let text = fs::read_to_string(manifest).expect("read plugins/Cargo.toml");
    let start = text
        .find("members = [")
        .expect("plugins/Cargo.toml has members");
    let rest = &text[start + "members = [".len()..];
    let end = rest.find(']').expect("members list is closed");
    rest[..end]
        .lines()
        .map(str::trim)
        .filter(|l| l.starts_with('"'))
        .filter_map(|l| l.split('"').nth(1))
        .map(str::to_string)
        .collect()
}

fn package_name(manifest: &Path) -> String {
    let text =
        fs::read_to_string(manifest).unwrap_or_else(|e| panic!("read {}: {e}", manifest.display()));
    text.lines()
        .map(str::trim)
        .find_map(|l| {
            l.strip_prefix("name = \"")
                .and_then(|r| r.split('"').next())
        })
        .unwrap_or_else(|| panic!("{} has no package name", manifest.display()))
        .to_string()
}

fn ensure_wasm_target() {
    let Ok(out) = Command::new("rustup")
        .args(["target", "list", "--installed"])
        .output()
    else {
        return; // no rustup: assume a toolchain with the target
    };
    if String::from_utf8_lossy(&out.stdout)
        .lines()
        .any(|l| l.trim() == WASM_TARGET)
    {
        return;
    }
    let status = Command::new("rustup")
        .args(["target", "add", WASM_TARGET])
        .status();
    assert!(
        status.is_ok_and(|s| s.success()),
        "`rustup target add {WASM_TARGET}` failed"
    );
}

fn build_plugins(plugins: &Path, target_dir: &Path) {
    let cargo = env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let mut cmd = Command::new(cargo);
    cmd.args([
        "build",
        "--release",
        "--target",
        WASM_TARGET,
        "--manifest-path",
    ])
    .arg(plugins.join("Cargo.toml"))
    .env("CARGO_TARGET_DIR", target_dir);
    // The outer build's settings must not leak into the wasm build.
    for (key, _) in env::vars_os() {
        let k = key.to_string_lossy();
        let leaks = (k.starts_with("CARGO_") && k != "CARGO_HOME" && k != "CARGO_MAKEFLAGS")
            || matches!(
                k.as_ref(),
                "RUSTFLAGS" | "RUSTDOCFLAGS" | "RUSTC_WRAPPER" | "RUSTC_WORKSPACE_WRAPPER"
            );
        if leaks && k != "CARGO_TARGET_DIR" {
            cmd.env_remove(&key);
        }
    }
    let status = cmd.status().expect("run cargo for plugins/");
    assert!(
        status.success(),
        "building plugins/ for {WASM_TARGET} failed (see output above)"
    );
}
