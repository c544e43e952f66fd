//! WASI p2, granted nothing but clocks and random: no preopened
//! directories, no environment or arguments, no sockets, no name lookup;
//! stdin is empty and stdout/stderr are discarded unless `grants.stdio`.
//!
//! All of WASI p2 is linked (Rust's std imports parts of it, e.g. stderr for
//! panic messages); with an empty context the rest has nothing to act on.
//!
//! **Synchronous, and never waiting.** Hooks are called with a plain
//! synchronous `call` (no fiber per call: that was a fifth of an
//! `on-message`), which requires every import to be a synchronous host
//! function. wasmtime-wasi's synchronous bindings implement WASI's blocking
//! operations by entering the tokio runtime (`block_on`), which panics on a
//! runtime worker and would stall it if it did not. So the operations that
//! can wait — `poll`, `pollable.block`/`ready`, the `blocking-*` stream
//! methods, dropping a stream, creating a UDP socket — are linked again
//! here, shadowing those, with versions that poll the operation exactly
//! once: ready → its result; not ready → [`WOULD_BLOCK`], a trap. With
//! what plugins are granted, "not ready" means the guest is waiting on a
//! clock (`thread::sleep`): a hook that sleeps would stall the message
//! path, so it fails at once instead of at the wall-clock timeout. Stdout
//! and stderr, when granted, are written synchronously and are always
//! ready. Filesystem descriptors and TCP sockets cannot exist (no preopens,
//! TCP denied), so their waiting methods are unreachable.

use std::future::Future;
use std::io::Write;
use std::pin::pin;
use std::task::{Context, Poll, Waker};

use wasmtime::component::{HasData, Linker, Resource, ResourceTable};
use wasmtime_wasi::cli::{IsTerminal, StdoutStream};
use wasmtime_wasi::p2::bindings::sync::io::{poll, streams};
use wasmtime_wasi::p2::bindings::sync::sockets::network::{self, ErrorCode};
use wasmtime_wasi::p2::bindings::sync::sockets::udp_create_socket;
use wasmtime_wasi::p2::{SocketError, SocketResult, StreamError, StreamResult, UdpSocket};
use wasmtime_wasi::sockets::{WasiSocketsCtxView, WasiSocketsView};
use wasmtime_wasi::{WasiCtx, WasiCtxBuilder};
use wasmtime_wasi_io::bindings::wasi::io::{poll as async_poll, streams as async_streams};

use crate::config::Grants;
use crate::state::HostState;

/// The trap of a WASI call that would have to wait.
pub(crate) const WOULD_BLOCK: &str = "plugin blocked in a waiting WASI call (a sleep or poll on a \
     clock that is not due): hooks may not wait; use the timers capability";

pub(crate) fn link(linker: &mut Linker<HostState>) -> wasmtime::Result<()> {
    wasmtime_wasi::p2::add_to_linker_sync(linker)?;
    linker.allow_shadowing(true);
    fn io(s: &mut HostState) -> NonBlocking<'_> {
        NonBlocking(&mut s.table)
    }
    poll::add_to_linker::<HostState, NonBlockingIo>(linker, io)?;
    streams::add_to_linker::<HostState, NonBlockingIo>(linker, io)?;
    udp_create_socket::add_to_linker::<HostState, NoUdpData>(linker, |s| NoUdp(s.sockets()))?;
    linker.allow_shadowing(false);
    Ok(())
}

/// A fresh, empty WASI context for one instance.
pub(crate) fn ctx(grants: &Grants) -> WasiCtx {
    let mut b = WasiCtxBuilder::new();
    b.allow_tcp(false)
        .allow_udp(false)
        .allow_ip_name_lookup(false);
    if grants.stdio {
        b.stdout(SyncStdio::Stdout).stderr(SyncStdio::Stderr);
    }
    b.build()
}

/// Polls `f` once, without a waker to be woken: its output if it is ready.
fn now<F: Future>(f: F) -> Option<F::Output> {
    match pin!(f).poll(&mut Context::from_waker(Waker::noop())) {
        Poll::Ready(v) => Some(v),
        Poll::Pending => None,
    }
}

fn would_block() -> wasmtime::Error {
    wasmtime::format_err!("{WOULD_BLOCK}")
}

fn stream_would_block() -> StreamError {
    StreamError::Trap(would_block())
}

/// wasi:io over the instance's resource table, never waiting.
pub(crate) struct NonBlocking<'a>(&'a mut ResourceTable);

struct NonBlockingIo;

impl HasData for NonBlockingIo {
    type Data<'a> = NonBlocking<'a>;
}

impl poll::Host for NonBlocking<'_> {
    fn poll(&mut self, pollables: Vec<Resource<poll::Pollable>>) -> wasmtime::Result<Vec<u32>> {
        now(async_poll::Host::poll(self.0, pollables)).unwrap_or_else(|| Err(would_block()))
    }
}

impl poll::HostPollable for NonBlocking<'_> {
    fn ready(&mut self, p: Resource<poll::Pollable>) -> wasmtime::Result<bool> {
        // `ready` never waits by definition; polling once is its meaning.
        now(async_poll::HostPollable::ready(self.0, p)).unwrap_or(Ok(false))
    }

    fn block(&mut self, p: Resource<poll::Pollable>) -> wasmtime::Result<()> {
        now(async_poll::HostPollable::block(self.0, p)).unwrap_or_else(|| Err(would_block()))
    }

    fn drop(&mut self, p: Resource<poll::Pollable>) -> wasmtime::Result<()> {
        async_poll::HostPollable::drop(self.0, p)
    }
}

impl streams::Host for NonBlocking<'_> {
    fn convert_stream_error(&mut self, err: StreamError) -> wasmtime::Result<streams::StreamError> {
        streams::Host::convert_stream_error(self.0, err)
    }
}

type Out = Resource<streams::OutputStream>;
type In = Resource<streams::InputStream>;

impl streams::HostOutputStream for NonBlocking<'_> {
    fn drop(&mut self, s: Out) -> wasmtime::Result<()> {
        now(async_streams::HostOutputStream::drop(self.0, s)).unwrap_or_else(|| Err(would_block()))
    }

    fn check_write(&mut self, s: Out) -> StreamResult<u64> {
        streams::HostOutputStream::check_write(self.0, s)
    }

    fn write(&mut self, s: Out, bytes: Vec<u8>) -> StreamResult<()> {
        streams::HostOutputStream::write(self.0, s, bytes)
    }

    fn blocking_write_and_flush(&mut self, s: Out, bytes: Vec<u8>) -> StreamResult<()> {
        now(async_streams::HostOutputStream::blocking_write_and_flush(
            self.0, s, bytes,
        ))
        .unwrap_or_else(|| Err(stream_would_block()))
    }

    fn blocking_write_zeroes_and_flush(&mut self, s: Out, len: u64) -> StreamResult<()> {
        now(async_streams::HostOutputStream::blocking_write_zeroes_and_flush(self.0, s, len))
            .unwrap_or_else(|| Err(stream_would_block()))
    }

    fn subscribe(&mut self, s: Out) -> wasmtime::Result<Resource<poll::Pollable>> {
        streams::HostOutputStream::subscribe(self.0, s)
    }

    fn write_zeroes(&mut self, s: Out, len: u64) -> StreamResult<()> {
        streams::HostOutputStream::write_zeroes(self.0, s, len)
    }

    fn flush(&mut self, s: Out) -> StreamResult<()> {
        streams::HostOutputStream::flush(self.0, s)
    }

    fn blocking_flush(&mut self, s: Out) -> StreamResult<()> {
        now(async_streams::HostOutputStream::blocking_flush(self.0, s))
            .unwrap_or_else(|| Err(stream_would_block()))
    }

    fn splice(&mut self, dst: Out, src: In, len: u64) -> StreamResult<u64> {
        streams::HostOutputStream::splice(self.0, dst, src, len)
    }

    fn blocking_splice(&mut self, dst: Out, src: In, len: u64) -> StreamResult<u64> {
        now(async_streams::HostOutputStream::blocking_splice(
            self.0, dst, src, len,
        ))
        .unwrap_or_else(|| Err(stream_would_block()))
    }
}

impl streams::HostInputStream for NonBlocking<'_> {
    fn drop(&mut self, s: In) -> wasmtime::Result<()> {
        now(async_streams::HostInputStream::drop(self.0, s)).unwrap_or_else(|| Err(would_block()))
    }

    fn read(&mut self, s: In, len: u64) -> StreamResult<Vec<u8>> {
        streams::HostInputStream::read(self.0, s, len)
    }

    fn blocking_read(&mut self, s: In, len: u64) -> StreamResult<Vec<u8>> {
        now(async_streams::HostInputStream::blocking_read(
            self.0, s, len,
        ))
        .unwrap_or_else(|| Err(stream_would_block()))
    }

    fn skip(&mut self, s: In, len: u64) -> StreamResult<u64> {
        streams::HostInputStream::skip(self.0, s, len)
    }

    fn blocking_skip(&mut self, s: In, len: u64) -> StreamResult<u64> {
        now(async_streams::HostInputStream::blocking_skip(
            self.0, s, len,
        ))
        .unwrap_or_else(|| Err(stream_would_block()))
    }

    fn subscribe(&mut self, s: In) -> wasmtime::Result<Resource<poll::Pollable>> {
        streams::HostInputStream::subscribe(self.0, s)
    }
}

/// `udp-create-socket`: UDP is never granted (wasmtime-wasi would refuse
/// it too, but only after entering the runtime).
struct NoUdp<'a>(WasiSocketsCtxView<'a>);

struct NoUdpData;

impl HasData for NoUdpData {
    type Data<'a> = NoUdp<'a>;
}

impl network::Host for NoUdp<'_> {
    fn convert_error_code(&mut self, error: SocketError) -> wasmtime::Result<ErrorCode> {
        network::Host::convert_error_code(&mut self.0, error)
    }

    fn network_error_code(
        &mut self,
        err: Resource<network::Error>,
    ) -> wasmtime::Result<Option<ErrorCode>> {
        network::Host::network_error_code(&mut self.0, err)
    }
}

impl network::HostNetwork for NoUdp<'_> {
    fn drop(&mut self, this: Resource<network::Network>) -> wasmtime::Result<()> {
        network::HostNetwork::drop(&mut self.0, this)
    }
}

impl udp_create_socket::Host for NoUdp<'_> {
    fn create_udp_socket(
        &mut self,
        _family: udp_create_socket::IpAddressFamily,
    ) -> SocketResult<Resource<UdpSocket>> {
        Err(ErrorCode::AccessDenied.into())
    }
}

/// The gateway's stdout or stderr for a guest granted `stdio`, written
/// synchronously: always ready, so a guest's `println!` never waits (a
/// tokio-backed stream would report "not ready" while its worker writes).
#[derive(Clone, Copy)]
enum SyncStdio {
    Stdout,
    Stderr,
}

impl IsTerminal for SyncStdio {
    fn is_terminal(&self) -> bool {
        false
    }
}

impl StdoutStream for SyncStdio {
    fn p2_stream(&self) -> Box<dyn wasmtime_wasi::p2::OutputStream> {
        Box::new(*self)
    }

    fn async_stream(&self) -> Box<dyn tokio::io::AsyncWrite + Send + Sync> {
        match self {
            SyncStdio::Stdout => Box::new(tokio::io::stdout()),
            SyncStdio::Stderr => Box::new(tokio::io::stderr()),
        }
    }
}

#[wasmtime_wasi::async_trait]
impl wasmtime_wasi::p2::Pollable for SyncStdio {
    async fn ready(&mut self) {}
}

impl wasmtime_wasi::p2::OutputStream for SyncStdio {
    fn write(&mut self, bytes: bytes::Bytes) -> StreamResult<()> {
        let r = match self {
            SyncStdio::Stdout => std::io::stdout().lock().write_all(&bytes),
            SyncStdio::Stderr => std::io::stderr().lock().write_all(&bytes),
        };
        r.map_err(|e| StreamError::LastOperationFailed(e.into()))
    }

    fn flush(&mut self) -> StreamResult<()> {
        Ok(())
    }

    fn check_write(&mut self) -> StreamResult<usize> {
        Ok(64 << 10)
    }
}
