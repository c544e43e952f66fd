//! The session driver against an in-memory transport and a real store: what a client
//! sees, frame by frame, without sockets.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use edgesync_protocol::{Encoding, ErrorCode, ServerFrame};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::AllowAll;
use super::driver::{self, Conn, ConnError, Datagrams, SessionCtx};
use crate::broker::Broker;
use crate::config::Limits;
use crate::conns::ConnRegistry;
use crate::metrics::Metrics;
use crate::model::{ConnInfo, Transport};
use crate::outbox::SlowConsumerPolicy;
use crate::pipeline::Pipeline;
use crate::store::{Store, StoreOptions};

/// What the driver did to the transport.
#[derive(Debug, PartialEq)]
enum Out {
    Frames(Vec<ServerFrame>),
    Close(Option<ErrorCode>, String),
}

/// A transport whose inbound frames come from a channel and whose writes go to one.
struct FakeConn {
    inbound: mpsc::UnboundedReceiver<Bytes>,
    out: mpsc::UnboundedSender<Out>,
}

impl Conn for FakeConn {
    async fn recv(&mut self) -> Option<Result<Bytes, ConnError>> {
        self.inbound.recv().await.map(Ok)
    }

    async fn send(&mut self, frame: Vec<u8>) -> Result<(), ConnError> {
        let frames = Encoding::Json
            .decode_all(&frame)
            .map_err(|e| ConnError::Protocol(e.to_string()))?;
        let _ = self.out.send(Out::Frames(frames));
        Ok(())
    }

    async fn ping(&mut self) -> Result<(), ConnError> {
        Ok(())
    }

    async fn close(&mut self, code: Option<ErrorCode>, reason: &str) {
        let _ = self.out.send(Out::Close(code, reason.to_string()));
    }
}

/// Datagrams from a channel.
struct FakeDatagrams(mpsc::UnboundedReceiver<Bytes>);

impl Datagrams for FakeDatagrams {
    async fn next(&mut self) -> Option<Bytes> {
        self.0.recv().await
    }
}

struct Harness {
    ctx: Arc<SessionCtx>,
    _dir: tempfile::TempDir,
}

impl Harness {
    async fn new() -> Harness {
        let dir = tempfile::tempdir().expect("tempdir");
        let opts = StoreOptions::new(dir.path());
        let (store, mut committed) = tokio::task::spawn_blocking(move || Store::open(opts))
            .await
            .expect("join")
            .expect("store");
        let metrics = Arc::new(Metrics::new());
        let broker = Arc::new(Broker::new(
            store.heads(),
            Arc::new(|_| SlowConsumerPolicy::Gap),
            metrics.clone(),
        ));
        let fanout = broker.clone();
        tokio::spawn(async move {
            while let Some(batch) = committed.recv().await {
                fanout.fanout(&batch);
            }
        });
        let clock = crate::clock::system();
        let limits = Limits::default();
        let pipeline = Pipeline::new(
            store.clone(),
            broker.clone(),
            metrics.clone(),
            clock.clone(),
            limits.clone(),
        );
        let max_groups = limits.max_queue_groups;
        let ctx = Arc::new(SessionCtx {
            limits,
            queues: crate::queues::Queues::new(
                pipeline.clone(),
                store.clone(),
                metrics.clone(),
                max_groups,
            ),
            presence: crate::presence::Presence::new(
                edgesync_protocol::Origin::new("n1", 1),
                clock.clone(),
                1000,
            ),
            pipeline,
            store,
            broker,
            conns: ConnRegistry::new(clock),
            authorizer: Arc::new(AllowAll),
            metrics,
            tasks: TaskTracker::new(),
            shutdown: CancellationToken::new(),
        });
        Harness { ctx, _dir: dir }
    }

    /// Start a session; returns its inbound and datagram senders and its output.
    fn session(
        &self,
    ) -> (
        mpsc::UnboundedSender<Bytes>,
        mpsc::UnboundedSender<Bytes>,
        mpsc::UnboundedReceiver<Out>,
    ) {
        let (in_tx, inbound) = mpsc::unbounded_channel();
        let (dg_tx, dg_rx) = mpsc::unbounded_channel();
        let (out, out_rx) = mpsc::unbounded_channel();
        let info = ConnInfo {
            remote: "127.0.0.1:9".parse().expect("addr"),
            transport: Transport::Quic,
            tls_identity: None,
            encoding: Encoding::Json,
        };
        tokio::spawn(driver::run_with_datagrams(
            FakeConn { inbound, out },
            self.ctx.clone(),
            info,
            Some(FakeDatagrams(dg_rx)),
        ));
        (in_tx, dg_tx, out_rx)
    }

    fn count(&self, kind: &str, result: &str) -> u64 {
        self.ctx
            .metrics
            .commands
            .with_label_values(&[kind, result])
            .get()
    }
}

/// The next `n` messages the session wrote (across frames).
async fn replies(out: &mut mpsc::UnboundedReceiver<Out>, n: usize) -> Vec<ServerFrame> {
    let mut got = Vec::new();
    while got.len() < n {
        match tokio::time::timeout(Duration::from_secs(10), out.recv()).await {
            Ok(Some(Out::Frames(f))) => got.extend(f),
            other => panic!("expected frames, got {other:?} after {got:?}"),
        }
    }
    got
}

fn json(text: &str) -> Bytes {
    Bytes::copy_from_slice(text.as_bytes())
}

#[tokio::test]
async fn an_invalid_command_is_answered_in_its_place_and_the_frame_goes_on() {
    let h = Harness::new().await;
    let (tx, _dg, mut out) = h.session();
    tx.send(json(r#"{"t":"connect","id":1}"#)).expect("send");
    assert!(matches!(
        replies(&mut out, 1).await[0],
        ServerFrame::Connected { .. }
    ));
    tx.send(json(
        "{\"t\":\"ping\",\"id\":2}\n{\"t\":\"sub\",\"id\":3,\"topic\":7}\n{\"t\":\"ping\",\"id\":4}",
    ))
    .expect("send");
    let got = replies(&mut out, 3).await;
    assert_eq!(got[0], ServerFrame::Pong { id: 2 });
    assert!(
        matches!(
            &got[1],
            ServerFrame::Error { id: Some(3), code: ErrorCode::BadRequest, msg, .. } if msg.contains("sub")
        ),
        "{:?}",
        got[1]
    );
    assert_eq!(got[2], ServerFrame::Pong { id: 4 });
    assert_eq!(h.count("frame", "bad_request"), 1);
    // A frame broken in its encoding is one bad_frame without id; the session goes on.
    tx.send(json(r#"{"t":"ping","id":5} {oops"#)).expect("send");
    assert!(matches!(
        replies(&mut out, 1).await[0],
        ServerFrame::Error {
            id: None,
            code: ErrorCode::BadFrame,
            ..
        }
    ));
    tx.send(json(r#"{"t":"ping","id":6}"#)).expect("send");
    assert_eq!(replies(&mut out, 1).await[0], ServerFrame::Pong { id: 6 });
}

#[tokio::test]
async fn datagrams_waiting_before_connect_are_dropped_not_held() {
    let h = Harness::new().await;
    let (tx, dg, mut out) = h.session();
    let datagram = |data: &str| {
        // In the session's encoding (JSON here; QUIC sessions are MessagePack).
        Bytes::from(Encoding::Json.encode(&edgesync_protocol::ClientFrame::Pub {
            id: 0,
            topic: "d.t".into(),
            data: data.into(),
            headers: Default::default(),
            mid: None,
            ack: false,
        }))
    };
    // Both wait when the session first looks: the datagram was there before `connect`.
    dg.send(datagram("early")).expect("datagram");
    tx.send(json(r#"{"t":"connect","id":1}"#)).expect("send");
    assert!(matches!(
        replies(&mut out, 1).await[0],
        ServerFrame::Connected { .. }
    ));
    assert_eq!(h.count("datagram", "not_connected"), 1);
    dg.send(datagram("later")).expect("datagram");
    let mut passed = false;
    for _ in 0..500 {
        if h.count("datagram", "ok") == 1 {
            passed = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(passed, "after connect they pass");
    assert_eq!(h.count("datagram", "not_connected"), 1);
}

#[tokio::test]
async fn shutdown_pushes_the_reason_and_closes_with_the_same_words() {
    let h = Harness::new().await;
    let (tx, _dg, mut out) = h.session();
    tx.send(json(r#"{"t":"connect","id":1}"#)).expect("send");
    replies(&mut out, 1).await;
    h.ctx.shutdown.cancel();
    let pushed = replies(&mut out, 1).await;
    let ServerFrame::Error {
        id: None,
        code: ErrorCode::ShuttingDown,
        msg,
        retry: true,
    } = &pushed[0]
    else {
        panic!("expected shutting_down, got {pushed:?}");
    };
    match tokio::time::timeout(Duration::from_secs(10), out.recv()).await {
        Ok(Some(Out::Close(code, reason))) => {
            assert_eq!(code, Some(ErrorCode::ShuttingDown));
            assert_eq!(&reason, msg, "the close reason is the error's message");
        }
        other => panic!("expected the close, got {other:?}"),
    }
}
