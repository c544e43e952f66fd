//! Paths of the plugins in `plugins/`, compiled from source to
//! `wasm32-wasip2` components by this crate's `build.rs`. For tests and
//! benches here and in the gateway; never committed `.wasm` files.

include!(concat!(env!("OUT_DIR"), "/built_plugins.rs"));
