//! `edgesync pub` and `edgesync sub`, built on `edgesync-client`.

use std::io::{BufRead, Write};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use edgesync_client::{Client, ClientOptions, Encoding, Event, Headers, PublishOptions, Start};

/// Connection flags shared by client commands.
#[derive(Debug, clap::Args)]
pub struct ConnectArgs {
    /// Gateway URL: ws://host:port, wss://host:port or quic://host:port.
    #[arg(long, env = "EDGESYNC_URL", default_value = "ws://127.0.0.1:7400")]
    pub url: String,
    /// CA certificate (PEM) to trust, e.g. <data_dir>/tls/ca.pem of a development gateway.
    #[arg(long, env = "EDGESYNC_CA")]
    pub ca: Option<PathBuf>,
    /// Do not verify the server certificate (development only).
    #[arg(long)]
    pub insecure: bool,
    /// Client certificate (PEM) for gateways with `[tls] client_ca` (mTLS on wss/quic),
    /// e.g. from `edgesync cert client NAME`. Needs --key.
    #[arg(long, env = "EDGESYNC_CERT", requires = "key")]
    pub cert: Option<PathBuf>,
    /// Private key (PEM) of --cert.
    #[arg(long, env = "EDGESYNC_KEY", requires = "cert")]
    pub key: Option<PathBuf>,
    /// Token handed to the gateway's auth plugins.
    #[arg(long, env = "EDGESYNC_TOKEN")]
    pub token: Option<String>,
    /// Client id (scopes idempotent publish). Default: a new one per run, so a retry
    /// with the same --mid must also repeat --client-id.
    #[arg(long)]
    pub client_id: Option<String>,
    /// Use the JSON encoding instead of MessagePack (WebSocket only).
    #[arg(long)]
    pub json_protocol: bool,
    /// Seconds to wait for the gateway.
    #[arg(long, default_value_t = 10)]
    pub timeout: u64,
}

impl ConnectArgs {
    pub(crate) fn options(&self) -> ClientOptions {
        let mut o = ClientOptions::new(self.url.clone());
        o.ca = self.ca.clone();
        o.insecure = self.insecure;
        o.cert = self.cert.clone();
        o.key = self.key.clone();
        o.token = self.token.clone();
        o.client_id = self.client_id.clone();
        o.encoding = if self.json_protocol {
            Encoding::Json
        } else {
            Encoding::MsgPack
        };
        o.request_timeout = Duration::from_secs(self.timeout);
        o
    }
}

#[derive(Debug, clap::Args)]
pub struct PubArgs {
    /// Topic (dot-separated, no wildcards).
    pub topic: String,
    /// Payload; `-` (the default) publishes each line of standard input as one message.
    #[arg(default_value = "-")]
    pub data: String,
    /// Header `name=value` (repeatable).
    #[arg(long = "header", short = 'H')]
    pub headers: Vec<String>,
    /// Client message id: retries with the same id and the same --client-id are stored once.
    #[arg(long)]
    pub mid: Option<String>,
    /// Do not wait for the durable acknowledgement.
    #[arg(long)]
    pub no_ack: bool,
    /// Print each ack as JSON.
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub conn: ConnectArgs,
}

#[derive(Debug, clap::Args)]
pub struct SubArgs {
    /// Topic or pattern (`*` one segment, `>` the rest).
    pub pattern: String,
    /// Where to start: `latest`, `earliest`, `last:N`, or a cursor.
    #[arg(long, default_value = "latest")]
    pub from: String,
    /// Exit after this many messages.
    #[arg(long)]
    pub count: Option<u64>,
    /// Print the full record as JSON instead of the payload.
    #[arg(long)]
    pub json: bool,
    /// Exit when no message arrives for this many seconds.
    #[arg(long)]
    pub idle_exit: Option<u64>,
    #[command(flatten)]
    pub conn: ConnectArgs,
}

pub(crate) fn runtime() -> Option<tokio::runtime::Runtime> {
    match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => Some(rt),
        Err(e) => {
            eprintln!("error: runtime: {e}");
            None
        }
    }
}

pub fn run_pub(args: PubArgs) -> ExitCode {
    let Some(rt) = runtime() else {
        return ExitCode::FAILURE;
    };
    let mut headers = Vec::new();
    for h in &args.headers {
        match h.split_once('=') {
            Some((k, v)) => headers.push((k.to_string(), v.to_string())),
            None => {
                eprintln!("error: header {h:?} is not name=value");
                return ExitCode::from(2);
            }
        }
    }
    rt.block_on(async move {
        let client = match Client::connect(args.conn.options()).await {
            Ok(c) => c,
            Err(e) => {
                eprintln!("error: {e}");
                return ExitCode::FAILURE;
            }
        };
        let payloads: Vec<String> = if args.data == "-" {
            std::io::stdin().lock().lines().map_while(Result::ok).collect()
        } else {
            vec![args.data.clone()]
        };
        let mut failed = false;
        let mut acks = Vec::new();
        for (i, p) in payloads.into_iter().enumerate() {
            let opts = PublishOptions {
                headers: Headers(headers.clone()),
                mid: args.mid.clone().map(|m| if i == 0 { m } else { format!("{m}-{i}") }),
                ack: !args.no_ack,
            };
            let c = client.clone();
            let topic = args.topic.clone();
            acks.push(tokio::spawn(async move { c.publish_with(&topic, p.into_bytes(), opts).await }));
        }
        for a in acks {
            match a.await {
                Ok(Ok(ack)) if args.json => println!(
                    "{{\"topic\":{:?},\"origin\":{:?},\"epoch\":{},\"seq\":{},\"dup\":{},\"cursor\":{:?}}}",
                    ack.topic, ack.origin.node, ack.origin.epoch, ack.seq, ack.dup, ack.cursor
                ),
                Ok(Ok(_)) => {}
                Ok(Err(e)) => {
                    eprintln!("error: {e}");
                    failed = true;
                }
                Err(e) => {
                    eprintln!("error: {e}");
                    failed = true;
                }
            }
        }
        client.close().await;
        if failed { ExitCode::FAILURE } else { ExitCode::SUCCESS }
    })
}

pub(crate) fn parse_start(s: &str) -> Start {
    match s {
        "latest" => Start::Latest,
        "earliest" => Start::Earliest,
        other => match other.strip_prefix("last:").and_then(|n| n.parse().ok()) {
            Some(n) => Start::Last(n),
            None => Start::Cursor(other.to_string()),
        },
    }
}

pub fn run_sub(args: SubArgs) -> ExitCode {
    let Some(rt) = runtime() else {
        return ExitCode::FAILURE;
    };
    rt.block_on(async move {
        let client = match Client::connect(args.conn.options()).await {
            Ok(c) => c,
            Err(e) => {
                eprintln!("error: {e}");
                return ExitCode::FAILURE;
            }
        };
        let mut sub = match client.subscribe(&args.pattern, parse_start(&args.from)).await {
            Ok(s) => s,
            Err(e) => {
                eprintln!("error: {e}");
                return ExitCode::FAILURE;
            }
        };
        let mut seen = 0u64;
        let stdout = std::io::stdout();
        while args.count.is_none_or(|c| seen < c) {
            let ev = match args.idle_exit {
                Some(s) => sub.next_timeout(Duration::from_secs(s)).await,
                None => sub.next().await,
            };
            let Some(ev) = ev else { break };
            let mut out = stdout.lock();
            match ev {
                Event::Msg(m) => {
                    seen += 1;
                    let line = if args.json {
                        serde_json::to_string(&m).unwrap_or_default()
                    } else {
                        String::from_utf8_lossy(&m.data.0).into_owned()
                    };
                    let _ = writeln!(out, "{line}");
                }
                Event::Join { topic, client, .. } => eprintln!("join: {client} on {topic}"),
                Event::Leave { topic, client, .. } => eprintln!("leave: {client} on {topic}"),
                Event::Gap { topic, from, to, cursor, .. } => {
                    eprintln!("gap: {topic} seq {from}..={to} not delivered live; re-read from cursor {cursor}");
                }
            }
            let _ = out.flush();
        }
        client.close().await;
        ExitCode::SUCCESS
    })
}
