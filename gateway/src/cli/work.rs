//! `edgesync work`: a drop-in queue worker. Joins a queue group and runs a command per
//! delivery — the payload on standard input, the message's identity in the
//! environment — then answers for it: exit 0 `ack`, `--term-exit` code `term`, any
//! other end `nak` (delivered again after `--nak-delay-ms`). While a command runs it
//! sends `progress` every half ack wait, so long jobs are not taken back.

use std::process::{ExitCode, Stdio};
use std::time::Duration;

use edgesync_client::{Client, Event, Msg, Ordering, QueueOptions};
use tokio::io::AsyncWriteExt;

use super::client::{ConnectArgs, parse_start, runtime};

#[derive(Debug, clap::Args)]
pub struct WorkArgs {
    /// Topic or pattern whose messages the group shares out.
    pub pattern: String,
    /// Queue group to join (one topic segment).
    #[arg(long)]
    pub group: String,
    /// Deliveries held (and commands run) at once.
    #[arg(long, default_value_t = 1)]
    pub max_unacked: u32,
    /// Where a new group starts: `latest`, `earliest`, `last:N` or a cursor (an
    /// existing group goes on from its progress).
    #[arg(long, default_value = "latest")]
    pub from: String,
    /// The group's ack wait in ms (group option: must match the group's).
    #[arg(long)]
    pub ack_wait_ms: Option<u64>,
    /// The group's deliveries before dead-lettering (group option).
    #[arg(long)]
    pub max_deliveries: Option<u32>,
    /// One message per topic at a time, in order (group option).
    #[arg(long)]
    pub strict: bool,
    /// A failed command's message comes back after this many ms.
    #[arg(long, default_value_t = 1000)]
    pub nak_delay_ms: u64,
    /// This exit code means "never retry": the message is dead-lettered (`term`).
    #[arg(long)]
    pub term_exit: Option<i32>,
    /// Exit after this many messages were answered.
    #[arg(long)]
    pub count: Option<u64>,
    /// Exit when no delivery arrives for this many seconds.
    #[arg(long)]
    pub idle_exit: Option<u64>,
    #[command(flatten)]
    pub conn: ConnectArgs,
    /// The command to run per message, after `--`.
    #[arg(last = true, required = true)]
    pub command: Vec<String>,
}

/// How a command ended, as the answer it earns.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Outcome {
    Ack,
    Nak(String),
    Term(String),
}

pub fn run(args: WorkArgs) -> ExitCode {
    let Some(rt) = runtime() else {
        return ExitCode::FAILURE;
    };
    rt.block_on(async move {
        let mut opts = args.conn.options();
        opts.reconnect = true;
        let client = match Client::connect(opts).await {
            Ok(c) => c,
            Err(e) => {
                eprintln!("error: {e}");
                return ExitCode::FAILURE;
            }
        };
        let q = QueueOptions {
            group: args.group.clone(),
            start: parse_start(&args.from),
            max_unacked: Some(args.max_unacked),
            ack_wait_ms: args.ack_wait_ms,
            max_deliveries: args.max_deliveries,
            ordering: args.strict.then_some(Ordering::Strict),
        };
        let mut sub = match client.join_queue(&args.pattern, q).await {
            Ok(s) => s,
            Err(e) => {
                eprintln!("error: {e}");
                return ExitCode::FAILURE;
            }
        };
        // Half the ack wait between `progress` answers (30 s is the gateway's default).
        let beat = Duration::from_millis(args.ack_wait_ms.unwrap_or(30_000) / 2);
        let mut running = tokio::task::JoinSet::new();
        let mut answered = 0u64;
        let mut failed = false;
        loop {
            if args.count.is_some_and(|c| answered >= c) {
                break;
            }
            let idle = running.is_empty();
            let next = async {
                match args.idle_exit {
                    Some(s) if idle => {
                        sub.next_timeout(Duration::from_secs(s)).await
                    }
                    _ => sub.next().await,
                }
            };
            // With --count, no more deliveries taken than can still be answered.
            let want_more = args
                .count
                .is_none_or(|c| answered + (running.len() as u64) < c);
            tokio::select! {
                ev = next, if want_more => match ev {
                    Some(Event::Msg(m)) => {
                        let (c, cmd, a) = (client.clone(), args.command.clone(), answer_args(&args));
                        running.spawn(async move { handle(&c, &cmd, m, beat, a).await });
                    }
                    Some(_) => {}
                    None => break,
                },
                Some(done) = running.join_next(), if !running.is_empty() => {
                    answered += 1;
                    if !matches!(done, Ok(true)) {
                        failed = true;
                    }
                }
            }
        }
        while let Some(done) = running.join_next().await {
            if !matches!(done, Ok(true)) {
                failed = true;
            }
        }
        client.close().await;
        if failed && args.count.is_some() {
            ExitCode::FAILURE
        } else {
            ExitCode::SUCCESS
        }
    })
}

#[derive(Debug, Clone, Copy)]
struct AnswerArgs {
    nak_delay: Duration,
    term_exit: Option<i32>,
}

fn answer_args(a: &WorkArgs) -> AnswerArgs {
    AnswerArgs {
        nak_delay: Duration::from_millis(a.nak_delay_ms),
        term_exit: a.term_exit,
    }
}

/// Run the command for `m`, keep the delivery alive meanwhile, answer. True when the
/// message was acked.
async fn handle(client: &Client, cmd: &[String], m: Msg, beat: Duration, a: AnswerArgs) -> bool {
    let run = run_command(cmd, &m, a.term_exit);
    tokio::pin!(run);
    let mut tick = tokio::time::interval(beat.max(Duration::from_millis(50)));
    tick.tick().await; // the first tick is immediate
    let outcome = loop {
        tokio::select! {
            o = &mut run => break o,
            _ = tick.tick() => {
                if let Err(e) = client.progress(&m).await {
                    eprintln!("warning: progress for {} seq {}: {e}", m.topic, m.seq);
                }
            }
        }
    };
    let res = match &outcome {
        Outcome::Ack => client.ack(&m).await,
        Outcome::Nak(why) => {
            eprintln!(
                "{} seq {} (delivery {}): {why}; retried",
                m.topic,
                m.seq,
                m.delivery.unwrap_or(1)
            );
            client.nak(&m, a.nak_delay).await
        }
        Outcome::Term(why) => {
            eprintln!("{} seq {}: {why}; dead-lettered", m.topic, m.seq);
            client.term(&m, why).await
        }
    };
    if let Err(e) = res {
        // Not held any more (the connection dropped, or the ack wait passed): the
        // group delivers it again; nothing to do here.
        eprintln!("warning: answer for {} seq {}: {e}", m.topic, m.seq);
        return false;
    }
    outcome == Outcome::Ack
}

async fn run_command(cmd: &[String], m: &Msg, term_exit: Option<i32>) -> Outcome {
    let Some((prog, rest)) = cmd.split_first() else {
        return Outcome::Term("no command".into());
    };
    let mut c = tokio::process::Command::new(prog);
    c.args(rest)
        .stdin(Stdio::piped())
        .env("EDGESYNC_TOPIC", &m.topic)
        .env("EDGESYNC_ORIGIN", &m.origin)
        .env("EDGESYNC_EPOCH", m.epoch.to_string())
        .env("EDGESYNC_SEQ", m.seq.to_string())
        .env("EDGESYNC_QUEUE", m.queue.as_deref().unwrap_or_default())
        .env("EDGESYNC_DELIVERY", m.delivery.unwrap_or(1).to_string())
        .env("EDGESYNC_CLIENT", &m.client)
        .kill_on_drop(true);
    let mut child = match c.spawn() {
        Ok(ch) => ch,
        Err(e) => return Outcome::Nak(format!("cannot run {prog:?}: {e}")),
    };
    if let Some(mut stdin) = child.stdin.take() {
        // A command that does not read its input is fine: a broken pipe is ignored.
        let _ = stdin.write_all(&m.data.0).await;
        drop(stdin);
    }
    match child.wait().await {
        Ok(s) if s.success() => Outcome::Ack,
        Ok(s) => match s.code() {
            Some(code) if Some(code) == term_exit => Outcome::Term(format!("exit {code}")),
            Some(code) => Outcome::Nak(format!("exit {code}")),
            None => Outcome::Nak(format!("ended by {s}")),
        },
        Err(e) => Outcome::Nak(format!("wait: {e}")),
    }
}
