//! WASI p2, granted nothing but clocks and random: no preopened
//! directories, no environment or arguments, no sockets, no name lookup;
//! stdin is empty and stdout/stderr are discarded unless `grants.stdio`.
//!
//! All of WASI p2 is linked (Rust's std imports parts of it, e.g. stderr for
//! panic messages); with an empty context the rest has nothing to act on.

use wasmtime::component::Linker;
use wasmtime_wasi::{WasiCtx, WasiCtxBuilder};

use crate::config::Grants;
use crate::state::HostState;

pub(crate) fn link(linker: &mut Linker<HostState>) -> wasmtime::Result<()> {
    wasmtime_wasi::p2::add_to_linker_async(linker)
}

/// A fresh, empty WASI context for one instance.
pub(crate) fn ctx(grants: &Grants) -> WasiCtx {
    let mut b = WasiCtxBuilder::new();
    b.allow_tcp(false)
        .allow_udp(false)
        .allow_ip_name_lookup(false);
    if grants.stdio {
        b.inherit_stdout().inherit_stderr();
    }
    b.build()
}
