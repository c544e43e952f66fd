//! Test plugin for hangs: spins forever on a message whose payload is
//! `loop` (the CPU deadline must stop it), sleeps for an hour in a WASI
//! host call on `sleep` (no guest code would run, so no deadline could stop
//! it: the host refuses the wait instead), and passes everything else. The
//! host must stop both and keep serving. On `print` it writes to stdout
//! and stderr and passes; on `udp` / `tcp` it tries to open a socket and
//! rejects with the error it gets.

use edgesync_plugin::{MessageRef, MessageVerdict, Plugin, SenderRef};

struct InfiniteLoop;

#[edgesync_plugin::export]
impl Plugin for InfiniteLoop {
    fn init(_config: &str) -> Result<Self, String> {
        Ok(InfiniteLoop)
    }

    fn on_message(&self, _sender: SenderRef<'_>, msg: MessageRef<'_>) -> MessageVerdict {
        if msg.payload == b"loop" {
            let mut x: u64 = 0;
            loop {
                x = std::hint::black_box(x.wrapping_add(1));
            }
        }
        if msg.payload == b"sleep" {
            std::thread::sleep(std::time::Duration::from_secs(3600));
        }
        // Sockets are never granted: each attempt must come back as an error
        // (never a host panic, never a wait).
        if msg.payload == b"udp" {
            return match std::net::UdpSocket::bind("127.0.0.1:0") {
                Ok(_) => MessageVerdict::Pass,
                Err(e) => MessageVerdict::Reject(format!("udp: {e}")),
            };
        }
        if msg.payload == b"tcp" {
            return match std::net::TcpStream::connect("127.0.0.1:9") {
                Ok(_) => MessageVerdict::Pass,
                Err(e) => MessageVerdict::Reject(format!("tcp: {e}")),
            };
        }
        if msg.payload == b"print" {
            // Writing to stdout/stderr must never count as waiting.
            println!("infinite-loop: print to stdout");
            eprintln!("infinite-loop: print to stderr");
        }
        MessageVerdict::Pass
    }
}
