//! `edgesync peers`: the replication links of a running gateway, from its admin API
//! (`GET /v1/peers`).

use std::io::{Read as _, Write as _};
use std::net::{SocketAddr, TcpStream, ToSocketAddrs as _};
use std::process::ExitCode;
use std::time::Duration;

/// `edgesync peers` flags.
#[derive(Debug, clap::Args)]
pub struct PeersArgs {
    /// The gateway's admin listener (host:port).
    #[arg(long, env = "EDGESYNC_ADMIN_ADDR", default_value = "127.0.0.1:7480")]
    pub admin: String,
    /// The admin token (`[admin] token`).
    #[arg(long, env = "EDGESYNC_ADMIN_TOKEN")]
    pub token: Option<String>,
    /// Print the API's JSON instead of a table.
    #[arg(long)]
    pub json: bool,
}

/// Longest wait for the admin API.
const TIMEOUT: Duration = Duration::from_secs(5);
/// Largest answer read (a cluster of hundreds of links fits easily).
const MAX_ANSWER_BYTES: u64 = 8 << 20;

pub fn run(args: PeersArgs) -> ExitCode {
    match fetch(&args).and_then(|body| render(&body, args.json)) {
        Ok(text) => {
            print!("{text}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

/// `GET /v1/peers` over HTTP/1.0 (the answer ends with the connection).
fn fetch(args: &PeersArgs) -> Result<String, String> {
    let addr: SocketAddr = args
        .admin
        .to_socket_addrs()
        .map_err(|e| format!("{}: {e}", args.admin))?
        .next()
        .ok_or_else(|| format!("{}: no address", args.admin))?;
    let mut s = TcpStream::connect_timeout(&addr, TIMEOUT).map_err(|e| format!("{addr}: {e}"))?;
    let _ = s.set_read_timeout(Some(TIMEOUT));
    let _ = s.set_write_timeout(Some(TIMEOUT));
    let auth = args
        .token
        .as_ref()
        .map(|t| format!("Authorization: Bearer {t}\r\n"))
        .unwrap_or_default();
    write!(s, "GET /v1/peers HTTP/1.0\r\nHost: {addr}\r\n{auth}\r\n")
        .map_err(|e| format!("{addr}: {e}"))?;
    let mut raw = Vec::new();
    s.take(MAX_ANSWER_BYTES)
        .read_to_end(&mut raw)
        .map_err(|e| format!("{addr}: {e}"))?;
    let text = String::from_utf8_lossy(&raw);
    let (head, body) = text
        .split_once("\r\n\r\n")
        .ok_or_else(|| format!("{addr}: not an HTTP answer"))?;
    let status = head.split_whitespace().nth(1).unwrap_or("");
    if status != "200" {
        return Err(format!("{addr}: HTTP {status}: {}", body.trim()));
    }
    Ok(body.to_string())
}

/// The JSON as is, or one line per link.
fn render(body: &str, json: bool) -> Result<String, String> {
    if json {
        return Ok(format!("{}\n", body.trim()));
    }
    let v: serde_json::Value =
        serde_json::from_str(body).map_err(|e| format!("bad answer: {e}"))?;
    let mut out = String::new();
    let (Some(cluster), Some(node)) = (v["cluster"].as_str(), v["node"].as_str()) else {
        return Ok("replication is off on this gateway (no [cluster])\n".into());
    };
    out.push_str(&format!("cluster {cluster}, node {node}\n"));
    out.push_str(&format!(
        "{:<20} {:<9} {:<6} {:<22} {:>10} {:>12} {:>12} {:>12}\n",
        "PEER", "STATE", "DIALED", "REMOTE", "LAG", "RECORDS IN", "BYTES IN", "BYTES OUT"
    ));
    let links = v["links"].as_array().cloned().unwrap_or_default();
    for l in &links {
        out.push_str(&format!(
            "{:<20} {:<9} {:<6} {:<22} {:>10} {:>12} {:>12} {:>12}\n",
            l["peer"].as_str().unwrap_or("?"),
            l["state"].as_str().unwrap_or("?"),
            if l["dialed"].as_bool().unwrap_or(false) {
                "yes"
            } else {
                "no"
            },
            l["remote"].as_str().unwrap_or("?"),
            l["lag_records"].as_u64().unwrap_or(0),
            l["records_in"].as_u64().unwrap_or(0),
            l["bytes_in"].as_u64().unwrap_or(0),
            l["bytes_out"].as_u64().unwrap_or(0),
        ));
    }
    if links.is_empty() {
        out.push_str("(no link)\n");
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_links_and_the_off_state() {
        let body = r#"{"cluster":"plant-7","node":"edge-1","links":[{"peer":"hub","state":"up","dialed":true,"remote":"127.0.0.1:7543","lag_records":3,"records_in":27,"bytes_in":10,"bytes_out":20}]}"#;
        let t = render(body, false).expect("table");
        assert!(t.starts_with("cluster plant-7, node edge-1\n"), "{t}");
        let row = t.lines().nth(2).expect("row");
        for want in ["hub", "up", "yes", "127.0.0.1:7543", " 3", "27", "10", "20"] {
            assert!(row.contains(want), "{want} in {row}");
        }
        let off = render(r#"{"cluster":null,"links":[]}"#, false).expect("off");
        assert!(off.contains("replication is off"), "{off}");
        assert!(render("nonsense", false).is_err());
    }
}
