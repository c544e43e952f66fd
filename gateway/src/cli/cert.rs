//! `edgesync cert`: a CA and certificates signed by it.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Subcommand;

use crate::transport::tls;

#[derive(Debug, Subcommand)]
pub enum CertCommand {
    /// Create a CA (`ca.pem`, `ca.key`) in DIR.
    Ca {
        #[arg(long, default_value = "certs")]
        out: PathBuf,
        #[arg(long, default_value = "edgesync cluster CA")]
        name: String,
    },
    /// Create `<NAME>.pem` / `<NAME>.key` signed by the CA in --ca-dir, valid for the given
    /// DNS names / IPs, usable as server and as client certificate: a cluster node's
    /// certificate (`[tls] cert`/`key`), whose subject CN NAME is the node id peers see
    /// (gateway-to-gateway mTLS, `[cluster]`).
    Node {
        /// File base name, e.g. the node id: letters, digits, `.`, `_`, `-` (not first `.`),
        /// at most 64 bytes.
        name: String,
        /// DNS names or IP addresses (default: localhost, 127.0.0.1, ::1).
        #[arg(long = "san")]
        sans: Vec<String>,
        #[arg(long, default_value = "certs")]
        ca_dir: PathBuf,
        #[arg(long, default_value = "certs")]
        out: PathBuf,
    },
    /// Create `<NAME>.pem` / `<NAME>.key`, a client certificate with subject CN NAME signed by
    /// the CA in --ca-dir, for mTLS (`[tls] client_ca` on the gateway; `--cert/--key` on
    /// `edgesync pub/sub`). NAME becomes the connection's TLS identity. A development
    /// gateway's CA is `<data_dir>/tls` (`ca.pem`, `ca.key`).
    Client {
        /// The identity (subject CN), also the file base name: one topic segment (no `.`,
        /// `*`, `>`, whitespace, control characters or leading `$`), at most 64 bytes.
        name: String,
        #[arg(long, default_value = "certs")]
        ca_dir: PathBuf,
        #[arg(long, default_value = "certs")]
        out: PathBuf,
    },
}

/// A file name from an identity: characters outside `[A-Za-z0-9._-]` become `_`.
fn file_base(name: &str) -> String {
    name.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-') {
                c
            } else {
                '_'
            }
        })
        .collect()
}

/// Why `name` is not a safe file base name, if it is not: it names files in --out, so
/// no path separators, no leading `.` (`..`, hidden files), only `[A-Za-z0-9._-]`.
fn file_name_problem(name: &str) -> Option<String> {
    if name.is_empty() || name.len() > 64 {
        return Some("use 1 to 64 bytes".into());
    }
    if name.starts_with('.') {
        return Some("it must not start with '.'".into());
    }
    name.chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-')))
        .map(|c| format!("{c:?} is not allowed (letters, digits, '.', '_', '-')"))
}

pub fn run(cmd: CertCommand) -> ExitCode {
    let result = match cmd {
        CertCommand::Ca { out, name } => tls::generate_ca(&out, &name).map(|(c, k)| vec![c, k]),
        CertCommand::Node {
            name,
            mut sans,
            ca_dir,
            out,
        } => {
            if let Some(why) = file_name_problem(&name) {
                eprintln!("error: node name {name:?}: {why}");
                return ExitCode::FAILURE;
            }
            if sans.is_empty() {
                sans = vec!["localhost".into(), "127.0.0.1".into(), "::1".into()];
            }
            tls::generate_leaf(
                &ca_dir.join("ca.pem"),
                &ca_dir.join("ca.key"),
                &sans,
                &out,
                &name,
            )
            .map(|(c, k)| vec![c, k])
        }
        CertCommand::Client { name, ca_dir, out } => tls::generate_client(
            &ca_dir.join("ca.pem"),
            &ca_dir.join("ca.key"),
            &name,
            &out,
            &file_base(&name),
        )
        .map(|(c, k)| vec![c, k]),
    };
    match result {
        Ok(paths) => {
            for p in paths {
                println!("{}", p.display());
            }
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn node_names_are_safe_file_names() {
        for ok in ["node-1", "edge_2.eu", "a"] {
            assert_eq!(file_name_problem(ok), None, "{ok}");
        }
        for bad in ["../etc/x", "/abs", "..", ".hidden", "a/b", "a b", "", "é"] {
            assert!(file_name_problem(bad).is_some(), "{bad}");
        }
        assert!(file_name_problem(&"n".repeat(65)).is_some());
    }
}
