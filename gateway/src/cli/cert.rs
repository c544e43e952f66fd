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
    /// DNS names / IPs as server and client (gateway mTLS).
    Node {
        /// File base name, e.g. the node id.
        name: String,
        /// DNS names or IP addresses (default: localhost, 127.0.0.1, ::1).
        #[arg(long = "san")]
        sans: Vec<String>,
        #[arg(long, default_value = "certs")]
        ca_dir: PathBuf,
        #[arg(long, default_value = "certs")]
        out: PathBuf,
    },
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
