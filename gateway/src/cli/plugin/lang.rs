//! The plugin languages `edgesync plugin new|build` know: each one's
//! template (embedded in the binary, so an installed `edgesync` needs no
//! checkout), how a project in it is recognised, and how it is built.
//!
//! Every template is the same reference plugin, "redact" (docs/plugins.md,
//! "The reference plugin"), over that language's SDK layer. The sources
//! are the files under `sdk/<lang>/template` (and `plugins/redact` for
//! Rust), included at compile time: the suite builds exactly what a user
//! gets.

use std::path::Path;

/// A plugin language.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Lang {
    Rust,
    Js,
    Ts,
    Python,
    C,
    Go,
    Zig,
    #[value(name = "assemblyscript", alias = "as")]
    AssemblyScript,
}

impl Lang {
    pub const ALL: [Lang; 8] = [
        Lang::Rust,
        Lang::Js,
        Lang::Ts,
        Lang::Python,
        Lang::C,
        Lang::Go,
        Lang::Zig,
        Lang::AssemblyScript,
    ];

    /// The name `--lang` takes.
    pub fn name(self) -> &'static str {
        match self {
            Lang::Rust => "rust",
            Lang::Js => "js",
            Lang::Ts => "ts",
            Lang::Python => "python",
            Lang::C => "c",
            Lang::Go => "go",
            Lang::Zig => "zig",
            Lang::AssemblyScript => "assemblyscript",
        }
    }

    /// The language a project directory is written in, from the build
    /// files `plugin new` writes.
    ///
    /// # Errors
    /// No known build file: says which files were looked for.
    pub fn detect(dir: &Path) -> Result<Lang, String> {
        let has = |f: &str| dir.join(f).exists();
        if has("Cargo.toml") {
            return Ok(Lang::Rust);
        }
        if has("package.json") {
            let pkg = std::fs::read_to_string(dir.join("package.json")).unwrap_or_default();
            return Ok(if pkg.contains("\"assemblyscript\"") {
                Lang::AssemblyScript
            } else if has("tsconfig.json") {
                Lang::Ts
            } else {
                Lang::Js
            });
        }
        if has("app.py") || has("requirements.txt") {
            return Ok(Lang::Python);
        }
        if has("witgo") || has("go.mod") {
            return Ok(Lang::Go);
        }
        if has("build.sh") && has_ext(&dir.join("src"), "zig") {
            return Ok(Lang::Zig);
        }
        if has("Makefile") && has_ext(&dir.join("src"), "c") {
            return Ok(Lang::C);
        }
        Err(format!(
            "{}: not a plugin project edgesync knows (looked for Cargo.toml, package.json, \
             app.py, witgo/ or go.mod, build.sh with src/*.zig, Makefile with src/*.c); \
             create one with `edgesync plugin new NAME --lang LANG`",
            dir.display()
        ))
    }

    /// The files of a new project, relative to its directory, except the
    /// contract (every non-Rust template gets it in `wit/deps/edgesync/`)
    /// and the README.
    pub fn template(self) -> &'static [(&'static str, &'static str)] {
        match self {
            Lang::Rust => &[(
                "src/lib.rs",
                include_str!("../../../../plugins/redact/src/lib.rs"),
            )],
            Lang::C => &[
                (
                    "Makefile",
                    include_str!("../../../../sdk/c/template/Makefile"),
                ),
                ("wit/world.wit", WORLD),
                ("src/edgesync.h", C_SDK_H),
                ("src/edgesync.c", C_SDK_C),
                (
                    "src/redact.c",
                    include_str!("../../../../sdk/c/template/src/redact.c"),
                ),
            ],
            Lang::Zig => &[
                (
                    "build.sh",
                    include_str!("../../../../sdk/zig/template/build.sh"),
                ),
                ("wit/world.wit", WORLD),
                ("src/edgesync.h", C_SDK_H),
                ("src/edgesync.c", C_SDK_C),
                (
                    "src/edgesync.zig",
                    include_str!("../../../../sdk/zig/template/src/edgesync.zig"),
                ),
                (
                    "src/redact.zig",
                    include_str!("../../../../sdk/zig/template/src/redact.zig"),
                ),
            ],
            Lang::Go => &[
                (
                    "Makefile",
                    include_str!("../../../../sdk/go/template/Makefile"),
                ),
                ("wit/world.wit", WORLD),
                (
                    "edgesync/edgesync.go",
                    include_str!("../../../../sdk/go/template/edgesync/edgesync.go"),
                ),
                (
                    "export_edgesync_plugin_lifecycle/lifecycle.go",
                    include_str!(
                        "../../../../sdk/go/template/export_edgesync_plugin_lifecycle/lifecycle.go"
                    ),
                ),
                (
                    "export_edgesync_plugin_message_hooks/message_hooks.go",
                    include_str!(
                        "../../../../sdk/go/template/export_edgesync_plugin_message_hooks/message_hooks.go"
                    ),
                ),
                (
                    "plugin/redact.go",
                    include_str!("../../../../sdk/go/template/plugin/redact.go"),
                ),
                (
                    "witgo/go.mod",
                    include_str!("../../../../sdk/go/witgo/go.mod"),
                ),
                (
                    "witgo/wit/runtime/runtime.go",
                    include_str!("../../../../sdk/go/witgo/wit/runtime/runtime.go"),
                ),
                (
                    "witgo/wit/types/types.go",
                    include_str!("../../../../sdk/go/witgo/wit/types/types.go"),
                ),
            ],
            Lang::Js => &[
                (
                    "package.json",
                    include_str!("../../../../sdk/js/plugin/template/package.json"),
                ),
                (
                    "package-lock.json",
                    include_str!("../../../../sdk/js/plugin/template/package-lock.json"),
                ),
                ("wit/world.wit", WORLD),
                (
                    "src/edgesync.js",
                    include_str!("../../../../sdk/js/plugin/template/src/edgesync.js"),
                ),
                (
                    "src/redact.js",
                    include_str!("../../../../sdk/js/plugin/template/src/redact.js"),
                ),
            ],
            Lang::Ts => &[
                (
                    "package.json",
                    include_str!("../../../../sdk/ts/template/package.json"),
                ),
                (
                    "package-lock.json",
                    include_str!("../../../../sdk/ts/template/package-lock.json"),
                ),
                (
                    "tsconfig.json",
                    include_str!("../../../../sdk/ts/template/tsconfig.json"),
                ),
                ("wit/world.wit", WORLD),
                (
                    "src/edgesync.ts",
                    include_str!("../../../../sdk/ts/template/src/edgesync.ts"),
                ),
                (
                    "src/globals.d.ts",
                    include_str!("../../../../sdk/ts/template/src/globals.d.ts"),
                ),
                (
                    "src/redact.ts",
                    include_str!("../../../../sdk/ts/template/src/redact.ts"),
                ),
            ],
            Lang::Python => &[
                (
                    "build.sh",
                    include_str!("../../../../sdk/python/template/build.sh"),
                ),
                (
                    "requirements.txt",
                    include_str!("../../../../sdk/python/template/requirements.txt"),
                ),
                ("wit/world.wit", WORLD),
                (
                    "edgesync.py",
                    include_str!("../../../../sdk/python/template/edgesync.py"),
                ),
                (
                    "app.py",
                    include_str!("../../../../sdk/python/template/app.py"),
                ),
            ],
            Lang::AssemblyScript => AS_TEMPLATE,
        }
    }

    /// Where the build leaves the component, relative to the project
    /// (Rust: see `build`).
    pub fn output(self) -> &'static str {
        "dist/plugin.wasm"
    }

    /// The file a user edits first (for `plugin new`'s hint).
    pub fn main_file(self) -> &'static str {
        match self {
            Lang::Rust => "src/lib.rs",
            Lang::C => "src/redact.c",
            Lang::Zig => "src/redact.zig",
            Lang::Go => "plugin/redact.go",
            Lang::Js => "src/redact.js",
            Lang::Ts => "src/redact.ts",
            Lang::Python => "app.py",
            Lang::AssemblyScript => "assembly/redact.ts",
        }
    }

    /// Files the template's build generates or installs (for .gitignore).
    pub fn ignored(self) -> &'static [&'static str] {
        match self {
            Lang::Rust => &["target/"],
            Lang::C | Lang::Zig => &["build/", "dist/", "gen/", ".zig-cache/"],
            Lang::Go => &[
                "build/",
                "dist/",
                "go.mod",
                "go.sum",
                "wit_exports.go",
                "edgesync_plugin_*/",
            ],
            Lang::Js | Lang::Ts | Lang::AssemblyScript => {
                &["node_modules/", "build/", "dist/", "types/"]
            }
            Lang::Python => &["dist/", "__pycache__/", "wit_world/", "componentize_py_*"],
        }
    }
}

/// The contract, copied into every non-Rust project.
pub const CONTRACT: &str = include_str!("../../../../sdk/wit/plugin.wit");

/// The world every template declares (the same imports and exports in
/// every language: what "redact" uses).
const WORLD: &str = include_str!("../../../../sdk/c/template/wit/world.wit");

const C_SDK_H: &str = include_str!("../../../../sdk/c/template/src/edgesync.h");
const C_SDK_C: &str = include_str!("../../../../sdk/c/template/src/edgesync.c");

const AS_TEMPLATE: &[(&str, &str)] = &[
    (
        "package.json",
        include_str!("../../../../sdk/assemblyscript/template/package.json"),
    ),
    (
        "package-lock.json",
        include_str!("../../../../sdk/assemblyscript/template/package-lock.json"),
    ),
    (
        "asconfig.json",
        include_str!("../../../../sdk/assemblyscript/template/asconfig.json"),
    ),
    ("wit/world.wit", WORLD),
    (
        "assembly/edgesync.ts",
        include_str!("../../../../sdk/assemblyscript/template/assembly/edgesync.ts"),
    ),
    (
        "assembly/redact.ts",
        include_str!("../../../../sdk/assemblyscript/template/assembly/redact.ts"),
    ),
    (
        "assembly/tsconfig.json",
        include_str!("../../../../sdk/assemblyscript/template/assembly/tsconfig.json"),
    ),
    (
        "build.mjs",
        include_str!("../../../../sdk/assemblyscript/template/build.mjs"),
    ),
];

fn has_ext(dir: &Path, ext: &str) -> bool {
    std::fs::read_dir(dir).is_ok_and(|entries| {
        entries
            .flatten()
            .any(|e| e.path().extension().is_some_and(|x| x == ext))
    })
}
