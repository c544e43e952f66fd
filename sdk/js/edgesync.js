// edgesync.js: the edgesync client for browsers and Node >= 20.
//
// One ES module, no build step, no dependency in browsers. It speaks the client
// protocol of PROTOCOL.md over WebSocket (JSON or MessagePack) and adds what an
// application should not have to write itself:
//
//   - publish with a durable ack, an idempotent `mid` per publish, and in-flight
//     publishes resent with the same `mid` after a reconnect (stored exactly once);
//   - subscriptions as async iterables, each keeping the position it delivered and
//     the position the application consumed (`cursor()`), resumed with no gap and
//     no duplicate after a reconnect, a gateway restart or a failover;
//   - automatic reconnect with exponential backoff and jitter, across a list of
//     gateway URLs;
//   - `hlc` kept exact as a BigInt (it exceeds 2^53), in both encodings.
//
// Layout of this file, in reading order: errors; `connect` and `Client` (public API);
// `Subscription`; messages; the connection machinery (`#open`, `#onFrame`,
// routing, reconnect); then the codecs (JSON framing, MessagePack, base64, cursors)
// and topic matching, which have no I/O and are exported for tests and tools.
//
// Node 20 has no global WebSocket: the `ws` package is imported lazily, only when
// `globalThis.WebSocket` is missing, so browsers never load it.

const JSON_PROTOCOL = "edgesync.json.v1";
const MSGPACK_PROTOCOL = "edgesync.msgpack.v1";

/** Largest frame accepted from a gateway over the `ws` package (bytes); browsers set their own. */
const MAX_FRAME_BYTES_IN = 64 << 20;
/** Frame size assumed until the gateway announces its `max_frame_bytes`. */
const DEFAULT_MAX_FRAME_BYTES = 1 << 20;
/** Nesting bound of the MessagePack decoder (the protocol nests 4 deep). */
const MAX_DEPTH = 32;

// ---------------------------------------------------------------------------------------
// Errors

/**
 * Every failure the client reports. `code` is the gateway's stable error code
 * (PROTOCOL.md §6) or one of the client's own: `timeout`, `closed`, `connection_lost`,
 * `connect_failed`, `bad_url`, `protocol`, `invalid_argument`. `retry` says whether
 * sending the same thing later can succeed.
 */
export class EdgesyncError extends Error {
  constructor(code, message, retry = false, options = undefined) {
    super(message, options);
    this.name = "EdgesyncError";
    this.code = code;
    this.retry = retry;
  }
}

const clientError = {
  timeout: (what) => new EdgesyncError("timeout", `no reply to ${what} in time`, true),
  closed: () => new EdgesyncError("closed", "the client was closed", false),
  lost: () => new EdgesyncError("connection_lost", "the connection was lost", true),
  arg: (msg) => new EdgesyncError("invalid_argument", msg, false),
  protocol: (msg) => new EdgesyncError("protocol", msg, false),
};

// ---------------------------------------------------------------------------------------
// Public API

/**
 * Connect to the first reachable gateway of `urls` (a URL or a list, tried in order)
 * and complete the `connect` handshake. Later reconnects go round the list.
 *
 * @param {string | string[]} urls  `ws://host:port[/path]` or `wss://…`
 * @param {ConnectOptions} [options]
 * @returns {Promise<Client>}
 */
export async function connect(urls, options = {}) {
  const client = new Client(urls, options);
  await client._start();
  return client;
}

/** A client with one connection at a time; see `connect`. */
export class Client extends EventTarget {
  // Configuration (fixed at construction).
  #urls;
  #opts;
  #encoding;
  // The current socket and which URL it goes to.
  #ws = null;
  #urlIndex = 0;
  /** `connecting` → `open` ⇄ `reconnecting` → `closed`. */
  #state = "connecting";
  /** The gateway's `connected` reply of the current (or last) connection. */
  #session = null;
  /** Client id the gateway assigned on the first connection, reused so `mid`s stay deduplicated. */
  #clientId;
  // Commands.
  #nextId = 1;
  /** id → pending command (publish, sub, unsub, history, ping, generic). */
  #pending = new Map();
  /** Messages encoded but not yet written: flushed together in one frame per microtask. */
  #outQueue = [];
  #outBytes = 0;
  #flushScheduled = false;
  /** Random prefix + counter make generated `mid`s unique across processes and restarts. */
  #midPrefix = randomHex(8);
  #midCounter = 0;
  // Subscriptions.
  #subs = new Set();
  /** Id of the current `sub` command → its subscription (version ≥ 2 tags pushes with it). */
  #subsById = new Map();
  /** What the application consumed, over every subscription, seeded with `options.cursor`. */
  #consumed;
  // Liveness and reconnect.
  #lastRecvAt = 0;
  #keepalive = null;
  #attempt = 0;
  #reconnectTimer = null;
  #closedPromise = null;

  /** @internal use `connect`. */
  constructor(urls, options = {}) {
    super();
    const list = typeof urls === "string" ? [urls] : Array.from(urls ?? []);
    if (list.length === 0) throw clientError.arg("connect needs at least one gateway URL");
    for (const u of list) checkUrl(u);
    this.#urls = list;
    const encoding = options.encoding ?? "json";
    if (encoding !== "json" && encoding !== "msgpack") {
      throw clientError.arg(`encoding must be "json" or "msgpack", not ${encoding}`);
    }
    this.#encoding = encoding;
    this.#opts = {
      token: options.token,
      clientId: options.clientId,
      cursor: options.cursor,
      reconnect: options.reconnect ?? true,
      backoffInitialMs: options.backoff?.initialMs ?? 100,
      backoffMaxMs: options.backoff?.maxMs ?? 5000,
      connectTimeoutMs: options.connectTimeoutMs ?? 10_000,
      requestTimeoutMs: options.requestTimeoutMs ?? 30_000,
      pingIntervalMs: options.pingIntervalMs ?? 15_000,
      bufferSize: options.bufferSize ?? 10_000,
      WebSocket: options.WebSocket,
    };
    this.#clientId = options.clientId;
    this.#consumed = options.cursor ? CursorState.decode(options.cursor) : new CursorState();
  }

  /** Facts from the gateway's `connected` reply: `client_id`, `node`, `epoch`, `version`, `limits`. */
  get session() {
    return this.#session;
  }

  /** The URL of the current connection. */
  get url() {
    return this.#urls[this.#urlIndex];
  }

  /** `connecting`, `open`, `reconnecting` or `closed`. */
  get state() {
    return this.#state;
  }

  /** `json` or `msgpack`. */
  get encoding() {
    return this.#encoding;
  }

  /**
   * Publish and wait for the durable ack. A `mid` is generated when not given; if the
   * connection drops before the ack, the publish is resent with the same `mid` after
   * the reconnect and the gateway stores it once (`dup: true` on a repeat).
   *
   * @param {string} topic
   * @param {string | Uint8Array | ArrayBuffer | ArrayBufferView} data
   * @param {{ mid?: string, headers?: Record<string, string>, ack?: boolean }} [options]
   * @returns {Promise<PubAck | undefined>} `undefined` with `ack: false`
   */
  publish(topic, data, options = {}) {
    if (this.#state === "closed") return Promise.reject(clientError.closed());
    if (typeof topic !== "string") return Promise.reject(clientError.arg("topic must be a string"));
    let payload;
    try {
      payload = toPayload(data, this.#encoding);
    } catch (e) {
      return Promise.reject(e);
    }
    const mid = options.mid ?? `${this.#midPrefix}-${++this.#midCounter}`;
    const frame = { t: "pub", id: this.#nextId++, topic, data: payload, mid };
    if (options.headers && Object.keys(options.headers).length > 0) {
      frame.headers = checkHeaders(options.headers);
    }
    if (options.ack === false) {
      frame.ack = false;
      if (this.#state !== "open") return Promise.reject(clientError.lost());
      return this.#sendChecked(frame).then(() => undefined);
    }
    return this.#command(frame, { kind: "pub", resend: true, timeout: true });
  }

  /**
   * Subscribe to a topic or pattern. The subscription is made at once; iterate it to
   * receive messages (and `gap` notices, see `Gap`). `from`: `"latest"` (default, or the
   * connect cursor), `"earliest"`, `{ last: N }` or `{ cursor }`.
   *
   * @param {string} pattern
   * @param {{ from?: Start, bufferSize?: number }} [options]
   * @returns {Subscription}
   */
  subscribe(pattern, options = {}) {
    if (typeof pattern !== "string") throw clientError.arg("pattern must be a string");
    const start = encodeStart(options.from);
    const sub = new Subscription(this, pattern, start, options.bufferSize ?? this.#opts.bufferSize);
    sub.presence = options.presence === true;
    return this.#addSub(sub, start);
  }

  /**
   * Join a queue group (PROTOCOL.md §2.5): each message of the matching topics goes to
   * one member of the group. Deliveries are `Message`s with `queue` and `delivery` set;
   * answer each with `ack()`, `nak()`, `progress()` or `term()` (on the message or the
   * client). After a reconnect the client joins again; what it held is delivered again
   * (to any member) and answers for it fail with `not_in_flight`.
   *
   * @param {string} pattern
   * @param {QueueOptions} options  `group` is required
   * @returns {Subscription}
   */
  joinQueue(pattern, options = {}) {
    if (typeof pattern !== "string") throw clientError.arg("pattern must be a string");
    const group = options.group;
    if (typeof group !== "string" || group.length === 0) throw clientError.arg("joinQueue needs a group name");
    const start = encodeStart(options.from);
    const sub = new Subscription(this, pattern, start, options.bufferSize ?? this.#opts.bufferSize);
    const q = { queue: group };
    const fields = [
      ["maxUnacked", "max_unacked"],
      ["ackWaitMs", "ack_wait_ms"],
      ["maxDeliveries", "max_deliveries"],
    ];
    for (const [js, wire] of fields) {
      if (options[js] === undefined) continue;
      if (!Number.isInteger(options[js]) || options[js] < 0) throw clientError.arg(`${js} must be a non-negative integer`);
      q[wire] = options[js];
    }
    if (options.ordering !== undefined) {
      if (options.ordering !== "parallel" && options.ordering !== "strict") {
        throw clientError.arg(`ordering must be "parallel" or "strict", not ${options.ordering}`);
      }
      q.ordering = options.ordering;
    }
    sub.queue = q;
    return this.#addSub(sub, start);
  }

  /** The queue delivery `m` is handled: never delivered again in its group. */
  ack(m) {
    return this.#answer(m, "ack", {});
  }

  /** The queue delivery `m` was not handled: deliver it again after `delayMs` (default at once). */
  nak(m, options = {}) {
    const extra = {};
    if (options.delayMs !== undefined) extra.delay_ms = options.delayMs;
    return this.#answer(m, "nak", extra);
  }

  /** Still working on the queue delivery `m`: its ack wait starts again. */
  progress(m) {
    return this.#answer(m, "progress", {});
  }

  /** Give up on the queue delivery `m`: it goes to the group's dead-letter topic with `reason`. */
  term(m, reason) {
    return this.#answer(m, "term", reason === undefined ? {} : { reason: String(reason) });
  }

  /**
   * Who is present on `topic` (the exact string subscribed with `presence: true`).
   *
   * @returns {Promise<PresenceList>}
   */
  async presence(topic) {
    if (typeof topic !== "string") throw clientError.arg("topic must be a string");
    const frame = { t: "presence", id: this.#nextId++, topic };
    const r = await this.#command(frame, { kind: "presence", resend: true, timeout: true });
    return {
      topic: r.topic,
      count: r.count,
      truncated: r.truncated === true,
      members: (r.members ?? []).map((m) => ({ ...m })),
    };
  }

  /**
   * A direct message to every connection of client `clientId`, stored in its inbox
   * `$inbox.<clientId>` (PROTOCOL.md §2.7). Acked, idempotent by `mid` and resent after
   * a reconnect like `publish`.
   */
  sendToClient(clientId, data, options = {}) {
    if (typeof clientId !== "string") return Promise.reject(clientError.arg("clientId must be a string"));
    return this.#direct({ to_client: clientId }, data, options);
  }

  /** A direct message to every client authenticated as `principal` (`$inbox.@<principal>`). */
  sendToPrincipal(principal, data, options = {}) {
    if (typeof principal !== "string") return Promise.reject(clientError.arg("principal must be a string"));
    return this.#direct({ to_principal: principal }, data, options);
  }

  /**
   * This client's inbox `$inbox.<client id>`: direct messages from `from` (default
   * `latest`; pass a saved cursor to get what arrived while offline), then live.
   *
   * @param {{ from?: Start, bufferSize?: number }} [options]
   */
  inbox(options = {}) {
    return this.subscribe(`$inbox.${this.#clientId}`, options);
  }

  #addSub(sub, start) {
    if (this.#state === "closed") {
      sub._end(clientError.closed());
      return sub;
    }
    this.#subs.add(sub);
    this.#sendSub(sub, start);
    return sub;
  }

  #direct(to, data, options) {
    if (this.#state === "closed") return Promise.reject(clientError.closed());
    let payload;
    try {
      payload = toPayload(data, this.#encoding);
    } catch (e) {
      return Promise.reject(e);
    }
    const mid = options.mid ?? `${this.#midPrefix}-${++this.#midCounter}`;
    const frame = { t: "send", id: this.#nextId++, ...to, data: payload, mid };
    if (options.headers && Object.keys(options.headers).length > 0) {
      try {
        frame.headers = checkHeaders(options.headers);
      } catch (e) {
        return Promise.reject(e);
      }
    }
    return this.#command(frame, { kind: "pub", resend: true, timeout: true });
  }

  /** Answer a queue delivery. Never resent: after a reconnect the delivery is not held. */
  async #answer(m, verb, extra) {
    if (!m || typeof m.queue !== "string") {
      throw clientError.arg(`${m?.topic ?? "this"} seq ${m?.seq} is not a queue delivery`);
    }
    const frame = {
      t: verb,
      id: this.#nextId++,
      queue: m.queue,
      topic: m.topic,
      origin: m.origin,
      epoch: m.epoch,
      seq: m.seq,
      ...extra,
    };
    await this.#command(frame, { kind: "answer", resend: false, timeout: true });
  }

  /**
   * Read stored messages of one topic (no wildcards). Page on with `page.next()` or
   * with `from: { cursor: page.cursor }` while `page.more`.
   *
   * @param {string} topic
   * @param {{ from?: Start, limit?: number }} [options]
   * @returns {Promise<HistoryPage>}
   */
  async history(topic, options = {}) {
    const frame = { t: "history", id: this.#nextId++, topic };
    const start = encodeStart(options.from);
    if (start !== undefined) frame.start = start;
    if (options.limit !== undefined) frame.limit = options.limit;
    const reply = await this.#command(frame, { kind: "history", resend: true, timeout: true });
    const messages = (reply.msgs ?? []).map((m) => toMessage(m, undefined));
    const page = {
      topic: reply.topic,
      messages,
      cursor: reply.cursor,
      more: reply.more === true,
      next: () =>
        page.more
          ? this.history(topic, { from: { cursor: reply.cursor }, limit: options.limit })
          : Promise.resolve(null),
    };
    return page;
  }

  /** Round trip to the gateway. */
  async ping() {
    await this.#command({ t: "ping", id: this.#nextId++ }, { kind: "ping", resend: true, timeout: true });
  }

  /**
   * The position to resume from: everything the application consumed from every
   * subscription, merged with `options.cursor` and the start positions of its
   * subscriptions. Pass it as `connect(urls, { cursor })` or `from: { cursor }`.
   */
  cursor() {
    return this.#consumed.encode();
  }

  /** Resolves when every publish made so far is acknowledged (or has failed). */
  async flush() {
    const waits = [];
    for (const p of this.#pending.values()) if (p.kind === "pub") waits.push(p.promise);
    await Promise.allSettled(waits);
  }

  /**
   * Send a command this module does not wrap yet (e.g. one a newer gateway adds) and
   * resolve with its reply. It is not resent after a reconnect: it fails with
   * `connection_lost` instead, since the client cannot know whether repeating it is safe.
   *
   * @param {string} type  the command's `t`
   * @param {object} [fields]  its other fields (`id` is assigned)
   */
  command(type, fields = {}) {
    const frame = { ...fields, t: type, id: this.#nextId++ };
    return this.#command(frame, { kind: "generic", resend: false, timeout: true });
  }

  /**
   * Close the connection. Pending commands fail with `closed`; subscriptions end.
   * Call `flush()` first to wait for outstanding publishes.
   */
  close() {
    if (this.#closedPromise) return this.#closedPromise;
    this.#closedPromise = this.#shutdown(clientError.closed());
    return this.#closedPromise;
  }

  // --- internals used by Subscription -------------------------------------------------

  /** @internal the application took `item` from `sub`. */
  _consumed(item) {
    if (item.kind === "msg" && item.seq > 0) this.#consumed.observe(item.topic, item.origin, item.epoch, item.seq);
  }

  /** @internal stop a subscription: unsubscribe at the gateway when it holds one. */
  _unsubscribe(sub) {
    this.#subs.delete(sub);
    if (sub._cmdId !== undefined) this.#subsById.delete(sub._cmdId);
    if (this.#state !== "open" || !sub._held) return Promise.resolve();
    sub._held = false;
    const frame = { t: "unsub", id: this.#nextId++, topic: sub.pattern };
    return this.#command(frame, { kind: "unsub", resend: false, timeout: true }).then(
      () => undefined,
      (e) => {
        // Lost connection: the new one never holds it. Not subscribed: same outcome.
        if (e.code === "connection_lost" || e.code === "not_subscribed" || e.code === "closed") return;
        throw e;
      },
    );
  }

  /** @internal `sub`'s buffer overflowed: drop it at the gateway until the application drains. */
  _suspend(sub) {
    if (sub._cmdId !== undefined) this.#subsById.delete(sub._cmdId);
    sub._cmdId = undefined;
    if (this.#state !== "open" || !sub._held) {
      sub._held = false;
      return;
    }
    sub._held = false;
    sub._unsubPending = true;
    const frame = { t: "unsub", id: this.#nextId++, topic: sub.pattern };
    this.#command(frame, { kind: "unsub", resend: false, timeout: false })
      .catch(() => undefined)
      .then(() => {
        sub._unsubPending = false;
        sub._maybeResume();
      });
  }

  /** @internal `sub` drained after a suspension: subscribe again from what it delivered. */
  _resume(sub) {
    if (this.#state === "closed" || !this.#subs.has(sub)) return;
    this.#sendSub(sub, { cursor: sub._position.encode() });
  }

  /** @internal first connection (`connect`). */
  async _start() {
    let lastError;
    for (let i = 0; i < this.#urls.length; i++) {
      this.#urlIndex = i;
      try {
        await this.#open(this.#urls[i]);
        this.#state = "open";
        this.#startKeepalive();
        return;
      } catch (e) {
        lastError = e;
        if (e instanceof EdgesyncError && e.code !== "connect_failed" && !e.retry) break;
      }
    }
    this.#state = "closed";
    throw lastError instanceof EdgesyncError && lastError.code !== "connect_failed"
      ? lastError
      : new EdgesyncError(
          "connect_failed",
          `no gateway reachable (${this.#urls.join(", ")}): ${lastError?.message ?? "unknown"}`,
          true,
          { cause: lastError },
        );
  }

  // --- commands --------------------------------------------------------------------

  /** Register a command awaiting its reply and send it when connected. */
  #command(frame, { kind, resend, timeout, sub }) {
    if (this.#state === "closed") return Promise.reject(clientError.closed());
    let resolve, reject;
    const promise = new Promise((res, rej) => {
      resolve = res;
      reject = rej;
    });
    const entry = { kind, frame, resend, resolve, reject, promise, sub, timer: null, sent: false };
    if (timeout && this.#opts.requestTimeoutMs > 0) {
      entry.timer = setTimeout(() => {
        if (this.#pending.get(frame.id) !== entry) return;
        this.#pending.delete(frame.id);
        reject(clientError.timeout(frame.t));
      }, this.#opts.requestTimeoutMs);
      unref(entry.timer);
    }
    this.#pending.set(frame.id, entry);
    if (this.#state === "open") {
      entry.sent = true;
      this.#sendChecked(frame).catch((e) => this.#settle(frame.id, e));
    }
    return promise;
  }

  /**
   * Send a `sub` for `sub` with `start` under a fresh id. Not connected: nothing to do,
   * `#resume` subscribes it on the next connection.
   */
  #sendSub(sub, start) {
    if (this.#state !== "open") return;
    const id = this.#nextId++;
    sub._cmdId = id;
    sub._held = true;
    // Version ≥ 2 sends catch-up tagged, then `live`; a `latest` subscription is live at once.
    sub._live = start === "latest" || (start === undefined && !this.#opts.cursor);
    this.#subsById.set(id, sub);
    const frame = { t: "sub", id, topic: sub.pattern };
    if (start !== undefined) frame.start = start;
    if (sub.presence) frame.presence = true;
    if (sub.queue) Object.assign(frame, sub.queue);
    this.#command(frame, { kind: "sub", resend: true, timeout: false, sub }).catch((e) => {
      if (this.#subsById.get(id) === sub) this.#subsById.delete(id);
      this.#subs.delete(sub);
      sub._end(e);
    });
  }

  /** Encode, check the gateway's frame bound, queue for the next frame. */
  async #sendChecked(frame) {
    const bytes = this.#encoding === "json" ? encodeJson(frame) : encodeMsgpack(frame);
    const max = this.#session?.limits?.max_frame_bytes ?? DEFAULT_MAX_FRAME_BYTES;
    const size = typeof bytes === "string" ? utf8Length(bytes) : bytes.length;
    if (size > max) {
      throw new EdgesyncError("frame_too_large", `the ${frame.t} is ${size} bytes; the gateway accepts ${max}`, false);
    }
    this.#enqueue(bytes, size, max);
  }

  /** Several messages share one frame (PROTOCOL.md §1); a frame stays under `max`. */
  #enqueue(bytes, size, max) {
    if (this.#outBytes + size + 1 > max) this.#flushOut();
    this.#outQueue.push(bytes);
    this.#outBytes += size + 1;
    if (!this.#flushScheduled) {
      this.#flushScheduled = true;
      queueMicrotask(() => this.#flushOut());
    }
  }

  #flushOut() {
    this.#flushScheduled = false;
    const parts = this.#outQueue;
    if (parts.length === 0) return;
    this.#outQueue = [];
    this.#outBytes = 0;
    const ws = this.#ws;
    if (!ws || ws.readyState !== 1) return; // lost: pending commands are resent on reconnect
    try {
      if (this.#encoding === "json") ws.send(parts.length === 1 ? parts[0] : parts.join("\n"));
      else ws.send(parts.length === 1 ? parts[0] : concatBytes(parts));
    } catch {
      // The close event follows and starts the reconnect.
    }
  }

  #settle(id, error, value) {
    const entry = this.#pending.get(id);
    if (!entry) return undefined;
    this.#pending.delete(id);
    if (entry.timer) clearTimeout(entry.timer);
    if (error) entry.reject(error);
    else entry.resolve(value);
    return entry;
  }

  // --- connection ------------------------------------------------------------------

  /** Open a socket to `url`, say `connect`, and wait for `connected` (bounded). */
  async #open(url) {
    const WS = this.#opts.WebSocket ?? (await webSocketClass());
    const token = typeof this.#opts.token === "function" ? await this.#opts.token() : this.#opts.token;
    const protocol = this.#encoding === "json" ? JSON_PROTOCOL : MSGPACK_PROTOCOL;
    return new Promise((resolve, reject) => {
      let ws;
      try {
        ws = WS === wsPackage ? new WS(url, [protocol], { maxPayload: MAX_FRAME_BYTES_IN }) : new WS(url, [protocol]);
      } catch (e) {
        reject(new EdgesyncError("connect_failed", `cannot open ${url}: ${e.message}`, true, { cause: e }));
        return;
      }
      ws.binaryType = "arraybuffer";
      let done = false;
      const fail = (err) => {
        if (done) return;
        done = true;
        clearTimeout(timer);
        try {
          ws.close();
        } catch {
          // already closing
        }
        reject(err);
      };
      const timer = setTimeout(
        () => fail(new EdgesyncError("connect_failed", `${url}: no connected reply in time`, true)),
        this.#opts.connectTimeoutMs,
      );
      unref(timer);
      ws.onerror = () => fail(new EdgesyncError("connect_failed", `cannot connect to ${url}`, true));
      ws.onclose = (ev) => fail(new EdgesyncError("connect_failed", `${url} closed the connection (${ev.code})`, true));
      ws.onopen = () => {
        if (ws.protocol !== protocol) {
          fail(clientError.protocol(`${url} chose subprotocol "${ws.protocol}", not ${protocol}`));
          return;
        }
        const hello = { t: "connect", id: 0 };
        if (token !== undefined) hello.token = token;
        if (this.#clientId !== undefined) hello.client_id = this.#clientId;
        if (this.#opts.cursor !== undefined) hello.cursor = this.#opts.cursor;
        ws.send(this.#encoding === "json" ? encodeJson(hello) : encodeMsgpack(hello));
      };
      ws.onmessage = (ev) => {
        let msgs;
        try {
          msgs = decodeFrame(ev.data);
        } catch (e) {
          fail(clientError.protocol(`${url}: ${e.message}`));
          return;
        }
        for (const m of msgs) {
          if (m.t === "error") {
            fail(new EdgesyncError(m.code, m.msg, m.retry === true));
            return;
          }
          if (m.t === "connected") {
            done = true;
            clearTimeout(timer);
            this.#adopt(ws, m);
            resolve();
            return;
          }
        }
      };
    });
  }

  /** `ws` said `connected`: make it the current socket. */
  #adopt(ws, connected) {
    this.#ws = ws;
    this.#session = Object.freeze({ ...connected });
    this.#clientId = connected.client_id;
    this.#lastRecvAt = Date.now();
    ws.onmessage = (ev) => {
      if (ws === this.#ws) this.#onFrame(ev.data);
    };
    ws.onclose = (ev) => {
      if (ws === this.#ws) this.#onClose(ev);
    };
    ws.onerror = () => {
      // A close event always follows; reconnecting happens there.
    };
    this.dispatchEvent(new CustomEvent("connected", { detail: { url: this.url, session: this.#session } }));
  }

  #onFrame(data) {
    this.#lastRecvAt = Date.now();
    let msgs;
    try {
      msgs = decodeFrame(data);
    } catch (e) {
      // An undecodable frame could hide messages: drop the connection and resume
      // from the subscriptions' positions rather than skip them silently.
      this.#emitError(clientError.protocol(`undecodable frame from the gateway: ${e.message}`));
      this.#ws?.close(4000, "undecodable frame");
      return;
    }
    for (const m of msgs) this.#onMessage(m);
  }

  #onMessage(m) {
    switch (m.t) {
      case "msg":
        if (typeof m.queue === "string") return this.#routeQueue(m);
        return this.#route(m, (sub) => sub._deliverMsg(m));
      case "join":
      case "leave":
        for (const sub of this.#subs) {
          if (sub._held && sub.presence && sub.pattern === m.topic) sub._deliverPresence(m);
        }
        return undefined;
      case "gap":
        return this.#route(m, (sub) => sub._deliverGap(m));
      case "live": {
        const sub = this.#subsById.get(m.sub);
        if (sub) sub._live = true;
        return undefined;
      }
      case "subscribed": {
        const entry = this.#settle(m.id, null, m);
        const sub = entry?.sub;
        if (sub && sub._cmdId === m.id) sub._subscribed(m.cursor, (c) => this.#consumed.merge(c));
        return undefined;
      }
      case "error":
        if (m.id === undefined || m.id === null) {
          this.#emitError(new EdgesyncError(m.code, m.msg, m.retry === true));
          return undefined;
        }
        this.#settle(m.id, new EdgesyncError(m.code, m.msg, m.retry === true));
        return undefined;
      case "puback":
        m.hlc = toBigInt(m.hlc);
        m.dup = m.dup === true;
        this.#settle(m.id, null, m);
        return undefined;
      case "unsubscribed":
      case "history":
      case "presence":
      case "ok":
      case "pong":
      case "connected":
        if (m.id !== undefined) this.#settle(m.id, null, m);
        return undefined;
      default:
        // A reply or push this version does not know: a generic command's reply, or a
        // push for an application that listens to `push` events.
        if (m.id !== undefined && this.#pending.get(m.id)?.kind === "generic") {
          this.#settle(m.id, null, m);
          return undefined;
        }
        this.dispatchEvent(new CustomEvent("push", { detail: m }));
        return undefined;
    }
  }

  /**
   * Hand a push to its subscriptions. Version ≥ 2: a push tagged with `sub` goes only to
   * that subscription; an untagged one to every matching subscription that is live.
   * Version 1: to every matching subscription, each dropping what its position covers.
   */
  #route(m, deliver) {
    const tagged = (this.#session?.version ?? 1) >= 2;
    if (tagged && m.sub !== undefined && m.sub !== null) {
      const sub = this.#subsById.get(m.sub);
      if (sub) deliver(sub);
      return;
    }
    for (const sub of this.#subs) {
      if (!sub._held || sub.queue || (tagged && !sub._live)) continue;
      if (topicMatches(sub.pattern, m.topic)) deliver(sub);
    }
  }

  /** A queue delivery: for the membership of its group only (a redelivery repeats a seq). */
  #routeQueue(m) {
    for (const sub of this.#subs) {
      if (sub._held && sub.queue?.queue === m.queue) {
        sub._deliverQueued(toMessage(m, sub.pattern, this));
        return;
      }
    }
  }

  #onClose(ev) {
    this.#ws = null;
    this.#stopKeepalive();
    if (this.#state === "closed") return;
    this.dispatchEvent(
      new CustomEvent("disconnected", { detail: { url: this.url, code: ev?.code, reason: ev?.reason } }),
    );
    if (!this.#opts.reconnect) {
      this.#shutdown(clientError.lost());
      return;
    }
    this.#state = "reconnecting";
    this.#prepareResume();
    this.#scheduleReconnect();
  }

  /** What cannot be replayed fails now; the rest waits for the next connection. */
  #prepareResume() {
    this.#outQueue = [];
    this.#outBytes = 0;
    for (const [id, p] of this.#pending) {
      if (p.kind === "sub") {
        this.#settle(id, null, undefined); // re-sent by #resume from the subscription's position
      } else if (p.kind === "unsub") {
        this.#settle(id, null, undefined); // the next connection does not hold it
      } else if (!p.resend) {
        this.#settle(id, clientError.lost());
      } else {
        p.sent = false;
      }
    }
    this.#subsById.clear();
    for (const sub of this.#subs) {
      sub._held = false;
      sub._cmdId = undefined;
    }
  }

  #scheduleReconnect() {
    const cap = Math.min(this.#opts.backoffMaxMs, this.#opts.backoffInitialMs * 2 ** Math.min(this.#attempt, 30));
    // Equal jitter: at least half the cap, so a gateway's clients do not return in step.
    const delay = cap / 2 + Math.random() * (cap / 2);
    this.#attempt++;
    this.#urlIndex = (this.#urlIndex + 1) % this.#urls.length;
    this.dispatchEvent(
      new CustomEvent("reconnecting", { detail: { attempt: this.#attempt, delayMs: delay, url: this.url } }),
    );
    this.#reconnectTimer = setTimeout(() => this.#reconnect(), delay);
  }

  async #reconnect() {
    this.#reconnectTimer = null;
    if (this.#state === "closed") return;
    try {
      await this.#open(this.url);
    } catch (e) {
      if (this.#state === "closed") return;
      if (e instanceof EdgesyncError && e.code !== "connect_failed" && !e.retry) {
        // The gateway refused us for good (e.g. `unauthorized`): retrying cannot help.
        this.#emitError(e);
        this.#shutdown(e);
        return;
      }
      this.#scheduleReconnect();
      return;
    }
    if (this.#state === "closed") {
      this.#ws?.close(1000);
      return;
    }
    this.#state = "open";
    this.#attempt = 0;
    this.#resume();
    this.#startKeepalive();
  }

  /** Re-subscribe every subscription from what it delivered; resend what awaits a reply. */
  #resume() {
    for (const sub of this.#subs) {
      if (sub._suspended) continue; // re-subscribes when the application drains it
      const resumeAt = sub._confirmed && !sub.queue ? { cursor: sub._position.encode() } : sub._start;
      this.#sendSub(sub, resumeAt);
    }
    const waiting = [...this.#pending.entries()].filter(([, p]) => !p.sent).sort((a, b) => a[0] - b[0]);
    for (const [id, p] of waiting) {
      p.sent = true;
      this.#sendChecked(p.frame).catch((e) => this.#settle(id, e));
    }
  }

  #startKeepalive() {
    this.#stopKeepalive();
    const every = this.#opts.pingIntervalMs;
    if (!(every > 0)) return;
    this.#keepalive = setInterval(() => {
      const quiet = Date.now() - this.#lastRecvAt;
      if (quiet > 2 * every) {
        // No reply to the last ping: the path is dead even if no close arrived.
        this.#ws?.close(4001, "keepalive timeout");
        const ws = this.#ws;
        if (ws) {
          this.#ws = null;
          this.#onClose({ code: 4001, reason: "keepalive timeout" });
        }
      } else if (quiet >= every) {
        this.ping().catch(() => undefined);
      }
    }, every);
    unref(this.#keepalive);
  }

  #stopKeepalive() {
    if (this.#keepalive) clearInterval(this.#keepalive);
    this.#keepalive = null;
  }

  #emitError(error) {
    this.dispatchEvent(new CustomEvent("error", { detail: error }));
  }

  async #shutdown(error) {
    this.#state = "closed";
    this.#stopKeepalive();
    if (this.#reconnectTimer) clearTimeout(this.#reconnectTimer);
    for (const id of [...this.#pending.keys()]) this.#settle(id, error);
    for (const sub of this.#subs) sub._end(error.code === "closed" ? null : error);
    this.#subs.clear();
    this.#subsById.clear();
    const ws = this.#ws;
    this.#ws = null;
    if (!ws || ws.readyState === 3) return;
    await new Promise((resolve) => {
      const t = setTimeout(resolve, 1000);
      unref(t);
      ws.onclose = () => {
        clearTimeout(t);
        resolve();
      };
      try {
        ws.close(1000);
      } catch {
        clearTimeout(t);
        resolve();
      }
    });
  }
}

/**
 * A subscription: an async iterable of `Message` and `Gap` items. Breaking out of a
 * `for await` loop (or `close()`) unsubscribes. Items are buffered up to `bufferSize`;
 * past that the client drops the subscription at the gateway and makes it again from
 * where it stopped once the application has drained half the buffer, so a slow reader
 * costs bounded memory and loses nothing.
 */
export class Subscription {
  /** @internal */
  constructor(client, pattern, start, bufferSize) {
    this.pattern = pattern;
    /** True when made with `presence: true`: it also yields `join` and `leave` items. */
    this.presence = false;
    /** The wire options of a queue group membership (`joinQueue`), else `null`. */
    this.queue = null;
    this._client = client;
    this._start = start;
    this._bufferSize = Math.max(1, bufferSize);
    /** Delivered to the buffer: dedupes, and the resume point after a reconnect. */
    this._position = new CursorState();
    /** Taken by the application. */
    this._consumedPos = new CursorState();
    this._queue = [];
    this._queueHead = 0;
    /** Readers waiting in `next()`, first come first served. */
    this._waiters = [];
    this._ended = false;
    this._error = null;
    this._cmdId = undefined;
    this._held = false;
    this._live = false;
    this._confirmed = false;
    this._suspended = false;
    this._unsubPending = false;
    this._readyResolve = null;
    this._readyReject = null;
    /** Resolves with the start cursor once the gateway confirmed; rejects if it refused. */
    this.ready = new Promise((res, rej) => {
      this._readyResolve = res;
      this._readyReject = rej;
    });
    this.ready.catch(() => undefined);
  }

  /** What the application consumed from this subscription: resume from it to continue here. */
  cursor() {
    return this._consumedPos.encode();
  }

  /** Items buffered and not yet taken. */
  get buffered() {
    return this._queue.length - this._queueHead;
  }

  [Symbol.asyncIterator]() {
    return this;
  }

  /** The next item; `{ done: true }` after `close()` or the client's close. */
  next() {
    if (this.buffered > 0) return Promise.resolve({ value: this._take(), done: false });
    if (this._ended) {
      if (this._error) {
        const e = this._error;
        this._error = null;
        return Promise.reject(e);
      }
      return Promise.resolve({ value: undefined, done: true });
    }
    return new Promise((resolve, reject) => {
      this._waiters.push({ resolve, reject });
    });
  }

  /** Called by `for await` on `break`: unsubscribe. */
  async return() {
    await this.close();
    return { value: undefined, done: true };
  }

  /** Unsubscribe and end the iteration. */
  async close() {
    if (this._ended) return;
    this._end(null);
    await this._client._unsubscribe(this);
  }

  // --- internals ----------------------------------------------------------------------

  _take() {
    const item = this._queue[this._queueHead];
    this._queue[this._queueHead++] = undefined;
    if (this._queueHead > 1024 && this._queueHead * 2 > this._queue.length) {
      this._queue = this._queue.slice(this._queueHead);
      this._queueHead = 0;
    }
    if (item.kind === "msg" && item.seq > 0 && item.queue === undefined) {
      this._consumedPos.observe(item.topic, item.origin, item.epoch, item.seq);
      this._client._consumed(item);
    }
    this._maybeResume();
    return item;
  }

  _maybeResume() {
    if (this._suspended && !this._unsubPending && !this._ended && this.buffered <= this._bufferSize / 2) {
      this._suspended = false;
      this._client._resume(this);
    }
  }

  _push(item) {
    this._queue.push(item);
    const w = this._waiters.shift();
    if (w) w.resolve({ value: this._take(), done: false });
  }

  _deliverMsg(raw) {
    if (this._ended || this._suspended) return;
    const seq = raw.seq;
    if (seq === 0) {
      // Ephemeral: best-effort, never in a cursor, dropped when the buffer is full.
      if (this.buffered < this._bufferSize) this._push(toMessage(raw, this.pattern));
      return;
    }
    if (seq <= this._position.position(raw.topic, raw.origin, raw.epoch)) return; // already delivered
    if (this.buffered >= this._bufferSize) {
      this._suspended = true;
      this._client._suspend(this);
      return;
    }
    this._position.observe(raw.topic, raw.origin, raw.epoch, seq);
    this._push(toMessage(raw, this.pattern));
  }

  /**
   * A queue delivery: no position check (a redelivery repeats a seq). Not suspended on
   * overflow: the group's `max_unacked` bounds what a member holds.
   */
  _deliverQueued(message) {
    if (this._ended) return;
    this._push(message);
  }

  /** A `join` or `leave` of this subscription's topic, in order with its messages. */
  _deliverPresence(raw) {
    if (this._ended) return;
    const item = { kind: raw.t, topic: raw.topic, client: raw.client, node: raw.node };
    if (raw.principal !== undefined && raw.principal !== null) item.principal = raw.principal;
    if (raw.t === "join") item.since = raw.since;
    this._push(Object.freeze(item));
  }

  _deliverGap(raw) {
    if (this._ended || this._suspended) return;
    if (raw.to <= this._position.position(raw.topic, raw.origin, raw.epoch)) return;
    this._push(
      Object.freeze({
        kind: "gap",
        topic: raw.topic,
        origin: raw.origin,
        epoch: raw.epoch,
        from: raw.from,
        to: raw.to,
        reason: raw.reason,
        cursor: raw.cursor,
        subscription: this.pattern,
      }),
    );
  }

  _subscribed(cursorText, mergeIntoClient) {
    let start;
    try {
      start = CursorState.decode(cursorText);
    } catch {
      start = new CursorState();
    }
    this._position.merge(start);
    if (!this._confirmed) {
      // The start position counts as consumed (a `latest` subscription owes nothing older);
      // on later re-subscriptions it is what was delivered, not what was consumed.
      this._confirmed = true;
      this._consumedPos.merge(start);
      mergeIntoClient(start);
      this._readyResolve(cursorText);
    }
  }

  _end(error) {
    if (this._ended) return;
    this._ended = true;
    this._error = error;
    if (error && !this._confirmed) this._readyReject(error);
    const waiters = this._waiters;
    this._waiters = [];
    for (const w of waiters) {
      if (this._error) {
        this._error = null;
        w.reject(error);
      } else {
        w.resolve({ value: undefined, done: true });
      }
    }
    this._queue = [];
    this._queueHead = 0;
  }
}

// ---------------------------------------------------------------------------------------
// Messages

const utf8Encoder = new TextEncoder();
const utf8Decoder = new TextDecoder("utf-8", { fatal: true, ignoreBOM: true });

/** A delivered message. `data` is the payload's bytes whatever the encoding. */
class Message {
  constructor(raw, subscription, client) {
    this.kind = "msg";
    this.topic = raw.topic;
    this.data = fromPayload(raw.data);
    this.seq = raw.seq;
    this.origin = raw.origin;
    this.epoch = raw.epoch;
    this.hlc = toBigInt(raw.hlc);
    this.client = raw.client;
    this.mid = raw.mid;
    this.headers = raw.headers ?? {};
    this.subscription = subscription;
    if (typeof raw.queue === "string") {
      /** The queue group of a queue delivery. */
      this.queue = raw.queue;
      /** How many times this message has been handed out, this one included. */
      this.delivery = raw.delivery;
      Object.defineProperty(this, "_client", { value: client, enumerable: false });
    }
  }

  /** Queue deliveries only: handled, never delivered again in the group. */
  ack() {
    return this.#queueClient().ack(this);
  }

  /** Queue deliveries only: deliver again (to any member) now or after `delayMs`. */
  nak(options) {
    return this.#queueClient().nak(this, options);
  }

  /** Queue deliveries only: still working, the ack wait starts again. */
  progress() {
    return this.#queueClient().progress(this);
  }

  /** Queue deliveries only: to the group's dead-letter topic with `reason`. */
  term(reason) {
    return this.#queueClient().term(this, reason);
  }

  #queueClient() {
    if (this._client) return this._client;
    const e = clientError.arg(`${this.topic} seq ${this.seq} is not a queue delivery`);
    return { ack: () => Promise.reject(e), nak: () => Promise.reject(e), progress: () => Promise.reject(e), term: () => Promise.reject(e) };
  }

  /** The payload as UTF-8 text. */
  text() {
    return new TextDecoder().decode(this.data);
  }

  /** The payload parsed as JSON. */
  json() {
    return JSON.parse(this.text());
  }

  /** True for a best-effort message that was never stored (`seq` 0). */
  get ephemeral() {
    return this.seq === 0;
  }
}

function toMessage(raw, subscription, client = undefined) {
  return new Message(raw, subscription, client);
}

function toBigInt(v) {
  if (typeof v === "bigint") return v;
  if (typeof v === "string" || typeof v === "number") return BigInt(v);
  return 0n;
}

/** Application data → the wire form of `data` for `encoding`. */
function toPayload(data, encoding) {
  if (typeof data === "string") return encoding === "json" ? data : utf8Encoder.encode(data);
  let bytes;
  if (data instanceof Uint8Array) bytes = data;
  else if (data instanceof ArrayBuffer) bytes = new Uint8Array(data);
  else if (ArrayBuffer.isView(data)) bytes = new Uint8Array(data.buffer, data.byteOffset, data.byteLength);
  else throw clientError.arg("data must be a string, Uint8Array, ArrayBuffer or ArrayBufferView");
  if (encoding !== "json") return bytes;
  try {
    return utf8Decoder.decode(bytes);
  } catch {
    return { b64: base64Encode(bytes, STD_ALPHABET, true) };
  }
}

/** The wire form of `data` (JSON string, `{b64}`, or MessagePack bin) → bytes. */
function fromPayload(data) {
  if (data instanceof Uint8Array) return data;
  if (typeof data === "string") return utf8Encoder.encode(data);
  if (data && typeof data.b64 === "string") return base64Decode(data.b64);
  return new Uint8Array(0);
}

function checkHeaders(headers) {
  const out = {};
  for (const [k, v] of Object.entries(headers)) {
    if (typeof v !== "string") throw clientError.arg(`header ${k} must be a string`);
    Object.defineProperty(out, k, { value: v, enumerable: true, writable: true, configurable: true });
  }
  return out;
}

/** `from` option → the wire `start`. */
function encodeStart(from) {
  if (from === undefined || from === null) return undefined;
  if (from === "latest" || from === "earliest") return from;
  if (typeof from === "object") {
    if (typeof from.cursor === "string") return { cursor: from.cursor };
    if (Number.isInteger(from.last) && from.last >= 0) return { last: from.last };
  }
  throw clientError.arg(`from must be "latest", "earliest", { last: N } or { cursor }, not ${String(from)}`);
}

function checkUrl(u) {
  if (typeof u !== "string" || !/^wss?:\/\/[^/]+/.test(u)) {
    throw new EdgesyncError(
      "bad_url",
      `bad gateway URL ${JSON.stringify(u)}: use ws://host:port or wss://host:port`,
      false,
    );
  }
}

let wsPackage = null;

/** The WebSocket class: the platform's, or the `ws` package on Node 20. */
async function webSocketClass() {
  if (typeof globalThis.WebSocket === "function") return globalThis.WebSocket;
  if (!wsPackage) {
    const mod = await import("ws");
    wsPackage = mod.WebSocket ?? mod.default;
  }
  return wsPackage;
}

function unref(timer) {
  if (timer && typeof timer.unref === "function") timer.unref();
}

function randomHex(bytes) {
  const b = new Uint8Array(bytes);
  globalThis.crypto.getRandomValues(b);
  return Array.from(b, (x) => x.toString(16).padStart(2, "0")).join("");
}

function utf8Length(s) {
  let n = 0;
  for (let i = 0; i < s.length; i++) {
    const c = s.charCodeAt(i);
    if (c < 0x80) n += 1;
    else if (c < 0x800) n += 2;
    else if (c >= 0xd800 && c <= 0xdbff && i + 1 < s.length) {
      n += 4;
      i++;
    } else n += 3;
  }
  return n;
}

function concatBytes(parts) {
  let n = 0;
  for (const p of parts) n += p.length;
  const out = new Uint8Array(n);
  let o = 0;
  for (const p of parts) {
    out.set(p, o);
    o += p.length;
  }
  return out;
}

// ---------------------------------------------------------------------------------------
// Frames: JSON (text, objects separated by whitespace) and MessagePack (binary, values
// back to back). `hlc` exceeds 2^53, so JSON text has it rewritten to a string before
// parsing and every decoded `hlc` becomes a BigInt.

/**
 * Decode one frame from the gateway into its messages (an empty frame is a keepalive).
 * @param {string | ArrayBuffer | Uint8Array} data
 * @returns {object[]}
 */
export function decodeFrame(data) {
  if (typeof data === "string") return decodeJsonFrame(data);
  const bytes = data instanceof Uint8Array ? data : new Uint8Array(data);
  const out = [];
  let pos = 0;
  while (pos < bytes.length) {
    const [value, next] = decodeMsgpackValue(bytes, pos, 0);
    if (!isMessage(value)) throw new Error("a MessagePack message is not a map with a string t");
    out.push(value);
    pos = next;
  }
  return out;
}

function isMessage(v) {
  return v !== null && typeof v === "object" && !Array.isArray(v) && typeof v.t === "string";
}

/** `"hlc": 123…` where a JSON key can start (after `{` or `,`), never inside a string. */
const HLC_NUMBER = /([{,]\s*"hlc"\s*:\s*)(\d+)/g;

function decodeJsonFrame(text) {
  if (text.includes('"hlc"')) text = text.replace(HLC_NUMBER, '$1"$2"');
  const out = [];
  // Fast path: the gateway writes one object per line.
  const lines = text.split("\n");
  let ok = true;
  for (const line of lines) {
    if (line.trim() === "") continue;
    let v;
    try {
      v = JSON.parse(line);
    } catch {
      ok = false;
      break;
    }
    out.push(v);
  }
  if (!ok) {
    out.length = 0;
    for (const piece of splitJsonValues(text)) out.push(JSON.parse(piece));
  }
  for (const v of out) {
    if (!isMessage(v)) throw new Error("a JSON message is not an object with a string t");
    if (v.hlc !== undefined) v.hlc = toBigInt(v.hlc);
    if (Array.isArray(v.msgs)) for (const m of v.msgs) if (m && m.hlc !== undefined) m.hlc = toBigInt(m.hlc);
  }
  return out;
}

/** Split whitespace-separated top-level JSON values. */
function splitJsonValues(text) {
  const out = [];
  let depth = 0;
  let inString = false;
  let start = -1;
  for (let i = 0; i < text.length; i++) {
    const c = text[i];
    if (inString) {
      if (c === "\\") i++;
      else if (c === '"') inString = false;
      continue;
    }
    if (c === '"') {
      inString = true;
      if (start < 0) start = i;
    } else if (c === "{" || c === "[") {
      if (start < 0) start = i;
      depth++;
    } else if (c === "}" || c === "]") {
      depth--;
      if (depth < 0) throw new Error("unbalanced JSON");
      if (depth === 0) {
        out.push(text.slice(start, i + 1));
        start = -1;
      }
    } else if (depth === 0 && !/\s/.test(c)) {
      throw new Error(`unexpected ${JSON.stringify(c)} between JSON messages`);
    }
  }
  if (depth !== 0 || inString) throw new Error("truncated JSON message");
  return out;
}

/** Encode a command as JSON text; BigInts are written as exact integers. */
export function encodeJson(value) {
  let big = false;
  const text = JSON.stringify(value, (_k, v) => {
    if (typeof v !== "bigint") return v;
    big = true;
    return `${BIG_MARK}${v}`;
  });
  return big ? text.replace(BIG_NUMBER, "$1") : text;
}

/** Marks a BigInt in JSON text for one `replace`; random, so no application string carries it. */
const BIG_MARK = `__edgesync_big_${randomHex(8)}_`;
const BIG_NUMBER = new RegExp(`"${BIG_MARK}(-?\\d+)"`, "g");

// ---------------------------------------------------------------------------------------
// MessagePack: the subset the protocol uses (nil, bool, int up to 64 bits, float, str,
// bin, array, map). Written here rather than taken as a dependency because cursors are
// MessagePack inside base64url: even a JSON client must read and write it.

/**
 * Encode a value as MessagePack. Maps come from plain objects (keys whose value is
 * `undefined` are skipped); `Uint8Array`/`ArrayBuffer` become `bin`; BigInt and
 * integers above 2^32 become 64-bit integers.
 * @returns {Uint8Array}
 */
export function encodeMsgpack(value) {
  const w = new Writer();
  writeValue(w, value, 0);
  return w.bytes();
}

/**
 * Decode exactly one MessagePack value. 64-bit integers beyond 2^53 decode as BigInt.
 * @param {Uint8Array} bytes
 */
export function decodeMsgpack(bytes) {
  const [value, end] = decodeMsgpackValue(bytes, 0, 0);
  if (end !== bytes.length) throw new Error(`${bytes.length - end} bytes after the MessagePack value`);
  return value;
}

class Writer {
  constructor() {
    this.buf = new Uint8Array(256);
    this.view = new DataView(this.buf.buffer);
    this.len = 0;
  }
  ensure(n) {
    if (this.len + n <= this.buf.length) return;
    let size = this.buf.length * 2;
    while (size < this.len + n) size *= 2;
    const next = new Uint8Array(size);
    next.set(this.buf.subarray(0, this.len));
    this.buf = next;
    this.view = new DataView(next.buffer);
  }
  u8(b) {
    this.ensure(1);
    this.buf[this.len++] = b;
  }
  u16(n) {
    this.ensure(2);
    this.view.setUint16(this.len, n);
    this.len += 2;
  }
  u32(n) {
    this.ensure(4);
    this.view.setUint32(this.len, n);
    this.len += 4;
  }
  u64(n) {
    this.ensure(8);
    this.view.setBigUint64(this.len, n);
    this.len += 8;
  }
  i64(n) {
    this.ensure(8);
    this.view.setBigInt64(this.len, n);
    this.len += 8;
  }
  f64(n) {
    this.ensure(8);
    this.view.setFloat64(this.len, n);
    this.len += 8;
  }
  raw(bytes) {
    this.ensure(bytes.length);
    this.buf.set(bytes, this.len);
    this.len += bytes.length;
  }
  bytes() {
    return this.buf.slice(0, this.len);
  }
}

function writeValue(w, v, depth) {
  if (depth > MAX_DEPTH) throw new Error("value nested too deeply for MessagePack");
  if (v === null || v === undefined) return w.u8(0xc0);
  switch (typeof v) {
    case "boolean":
      return w.u8(v ? 0xc3 : 0xc2);
    case "number":
      if (Number.isSafeInteger(v)) return writeInt(w, BigInt(v), v);
      w.u8(0xcb);
      return w.f64(v);
    case "bigint":
      return writeInt(w, v, Number(v));
    case "string":
      return writeStr(w, v);
    case "object":
      break;
    default:
      throw new Error(`cannot encode ${typeof v} as MessagePack`);
  }
  if (v instanceof Uint8Array || v instanceof ArrayBuffer) {
    const b = v instanceof Uint8Array ? v : new Uint8Array(v);
    if (b.length < 0x100) {
      w.u8(0xc4);
      w.u8(b.length);
    } else if (b.length < 0x10000) {
      w.u8(0xc5);
      w.u16(b.length);
    } else {
      w.u8(0xc6);
      w.u32(b.length);
    }
    return w.raw(b);
  }
  if (Array.isArray(v)) {
    writeLen(w, v.length, 0x90, 0xdc, 0xdd);
    for (const x of v) writeValue(w, x, depth + 1);
    return undefined;
  }
  const keys = Object.keys(v).filter((k) => v[k] !== undefined);
  writeLen(w, keys.length, 0x80, 0xde, 0xdf);
  for (const k of keys) {
    writeStr(w, k);
    writeValue(w, v[k], depth + 1);
  }
  return undefined;
}

function writeLen(w, n, fix, tag16, tag32) {
  if (n < 16) w.u8(fix | n);
  else if (n < 0x10000) {
    w.u8(tag16);
    w.u16(n);
  } else {
    w.u8(tag32);
    w.u32(n);
  }
}

function writeInt(w, big, num) {
  if (big >= 0n) {
    if (big < 128n) return w.u8(num);
    if (big < 0x100n) {
      w.u8(0xcc);
      return w.u8(num);
    }
    if (big < 0x10000n) {
      w.u8(0xcd);
      return w.u16(num);
    }
    if (big < 0x100000000n) {
      w.u8(0xce);
      return w.u32(num);
    }
    if (big >= 1n << 64n) throw new Error(`integer ${big} does not fit in 64 bits`);
    w.u8(0xcf);
    return w.u64(big);
  }
  if (big >= -32n) return w.u8(0x100 + num);
  if (big >= -0x80n) {
    w.u8(0xd0);
    return w.u8(0x100 + num);
  }
  if (big >= -0x8000n) {
    w.u8(0xd1);
    return w.u16(0x10000 + num);
  }
  if (big >= -0x80000000n) {
    w.u8(0xd2);
    return w.u32(0x100000000 + num);
  }
  if (big < -(1n << 63n)) throw new Error(`integer ${big} does not fit in 64 bits`);
  w.u8(0xd3);
  return w.i64(big);
}

function writeStr(w, s) {
  const b = utf8Encoder.encode(s);
  if (b.length < 32) w.u8(0xa0 | b.length);
  else if (b.length < 0x100) {
    w.u8(0xd9);
    w.u8(b.length);
  } else if (b.length < 0x10000) {
    w.u8(0xda);
    w.u16(b.length);
  } else {
    w.u8(0xdb);
    w.u32(b.length);
  }
  w.raw(b);
}

/** Decode the value at `pos`; returns `[value, nextPos]`. Every length is checked against the input. */
function decodeMsgpackValue(bytes, pos, depth) {
  if (depth > MAX_DEPTH) throw new Error("MessagePack nested too deeply");
  const view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  const need = (n) => {
    if (pos + n > bytes.length) throw new Error("truncated MessagePack value");
  };
  need(1);
  const tag = bytes[pos++];
  if (tag < 0x80) return [tag, pos];
  if (tag >= 0xe0) return [tag - 0x100, pos];
  if ((tag & 0xf0) === 0x80) return decodeMap(bytes, pos, tag & 0x0f, depth);
  if ((tag & 0xf0) === 0x90) return decodeArray(bytes, pos, tag & 0x0f, depth);
  if ((tag & 0xe0) === 0xa0) return decodeStr(bytes, pos, tag & 0x1f);
  switch (tag) {
    case 0xc0:
      return [null, pos];
    case 0xc2:
      return [false, pos];
    case 0xc3:
      return [true, pos];
    case 0xc4:
      need(1);
      return decodeBin(bytes, pos + 1, bytes[pos]);
    case 0xc5:
      need(2);
      return decodeBin(bytes, pos + 2, view.getUint16(pos));
    case 0xc6:
      need(4);
      return decodeBin(bytes, pos + 4, view.getUint32(pos));
    case 0xca:
      need(4);
      return [view.getFloat32(pos), pos + 4];
    case 0xcb:
      need(8);
      return [view.getFloat64(pos), pos + 8];
    case 0xcc:
      need(1);
      return [bytes[pos], pos + 1];
    case 0xcd:
      need(2);
      return [view.getUint16(pos), pos + 2];
    case 0xce:
      need(4);
      return [view.getUint32(pos), pos + 4];
    case 0xcf:
      need(8);
      return [exact(view.getBigUint64(pos)), pos + 8];
    case 0xd0:
      need(1);
      return [view.getInt8(pos), pos + 1];
    case 0xd1:
      need(2);
      return [view.getInt16(pos), pos + 2];
    case 0xd2:
      need(4);
      return [view.getInt32(pos), pos + 4];
    case 0xd3:
      need(8);
      return [exact(view.getBigInt64(pos)), pos + 8];
    case 0xd9:
      need(1);
      return decodeStr(bytes, pos + 1, bytes[pos]);
    case 0xda:
      need(2);
      return decodeStr(bytes, pos + 2, view.getUint16(pos));
    case 0xdb:
      need(4);
      return decodeStr(bytes, pos + 4, view.getUint32(pos));
    case 0xdc:
      need(2);
      return decodeArray(bytes, pos + 2, view.getUint16(pos), depth);
    case 0xdd:
      need(4);
      return decodeArray(bytes, pos + 4, view.getUint32(pos), depth);
    case 0xde:
      need(2);
      return decodeMap(bytes, pos + 2, view.getUint16(pos), depth);
    case 0xdf:
      need(4);
      return decodeMap(bytes, pos + 4, view.getUint32(pos), depth);
    default:
      throw new Error(`unsupported MessagePack type 0x${tag.toString(16)}`);
  }
}

function exact(big) {
  return big <= BigInt(Number.MAX_SAFE_INTEGER) && big >= BigInt(Number.MIN_SAFE_INTEGER) ? Number(big) : big;
}

function decodeStr(bytes, pos, len) {
  if (pos + len > bytes.length) throw new Error("truncated MessagePack string");
  return [utf8Decoder.decode(bytes.subarray(pos, pos + len)), pos + len];
}

function decodeBin(bytes, pos, len) {
  if (pos + len > bytes.length) throw new Error("truncated MessagePack bin");
  return [bytes.slice(pos, pos + len), pos + len];
}

function decodeArray(bytes, pos, n, depth) {
  // Every element takes at least one byte: a count beyond the input is malformed,
  // and checking it first bounds the allocation by the frame's size.
  if (n > bytes.length - pos) throw new Error("MessagePack array longer than its frame");
  const out = new Array(n);
  for (let i = 0; i < n; i++) [out[i], pos] = decodeMsgpackValue(bytes, pos, depth + 1);
  return [out, pos];
}

function decodeMap(bytes, pos, n, depth) {
  if (2 * n > bytes.length - pos) throw new Error("MessagePack map longer than its frame");
  const out = {};
  for (let i = 0; i < n; i++) {
    let key;
    [key, pos] = decodeMsgpackValue(bytes, pos, depth + 1);
    if (typeof key !== "string") throw new Error("MessagePack map key is not a string");
    let value;
    [value, pos] = decodeMsgpackValue(bytes, pos, depth + 1);
    // defineProperty: a key named __proto__ is data, never the object's prototype.
    Object.defineProperty(out, key, { value, enumerable: true, writable: true, configurable: true });
  }
  return [out, pos];
}

// ---------------------------------------------------------------------------------------
// base64 (standard with padding for JSON payloads; base64url without padding for cursors)

const STD_ALPHABET = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
const URL_ALPHABET = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
const DECODE = (() => {
  const t = new Int16Array(128).fill(-1);
  for (let i = 0; i < 64; i++) {
    t[STD_ALPHABET.charCodeAt(i)] = i;
    t[URL_ALPHABET.charCodeAt(i)] = i;
  }
  return t;
})();

function base64Encode(bytes, alphabet, pad) {
  let out = "";
  let i = 0;
  for (; i + 2 < bytes.length; i += 3) {
    const n = (bytes[i] << 16) | (bytes[i + 1] << 8) | bytes[i + 2];
    out += alphabet[n >> 18] + alphabet[(n >> 12) & 63] + alphabet[(n >> 6) & 63] + alphabet[n & 63];
  }
  const rest = bytes.length - i;
  if (rest === 1) {
    const n = bytes[i] << 16;
    out += alphabet[n >> 18] + alphabet[(n >> 12) & 63] + (pad ? "==" : "");
  } else if (rest === 2) {
    const n = (bytes[i] << 16) | (bytes[i + 1] << 8);
    out += alphabet[n >> 18] + alphabet[(n >> 12) & 63] + alphabet[(n >> 6) & 63] + (pad ? "=" : "");
  }
  return out;
}

function base64Decode(text) {
  const s = text.replace(/=+$/, "");
  if (s.length % 4 === 1) throw new Error("bad base64 length");
  const out = new Uint8Array(Math.floor((s.length * 3) / 4));
  let o = 0;
  let acc = 0;
  let bits = 0;
  for (let i = 0; i < s.length; i++) {
    const c = s.charCodeAt(i);
    const v = c < 128 ? DECODE[c] : -1;
    if (v < 0) throw new Error(`bad base64 character ${JSON.stringify(s[i])}`);
    acc = (acc << 6) | v;
    bits += 6;
    if (bits >= 8) {
      bits -= 8;
      out[o++] = (acc >> bits) & 0xff;
    }
  }
  return out.subarray(0, o);
}

// ---------------------------------------------------------------------------------------
// Cursors (PROTOCOL.md §5): per topic, the highest seq seen per origin (node, epoch).
// Text form: base64url (no padding) of 0x01 + MessagePack [[topic, [[node, epoch, seq], …]], …].

const CURSOR_VERSION = 1;

/** A cursor being maintained: observe messages, merge cursors, encode. */
export class CursorState {
  constructor() {
    /** topic → Map(originKey → [node, epoch, seq]) */
    this.topics = new Map();
  }

  /**
   * Parse a cursor's text form.
   * @throws {EdgesyncError} `cursor_invalid`
   */
  static decode(text) {
    const c = new CursorState();
    let body;
    try {
      const bytes = base64Decode(text);
      if (bytes.length === 0 || bytes[0] !== CURSOR_VERSION) throw new Error(`cursor version ${bytes[0]}`);
      body = decodeMsgpack(bytes.subarray(1));
      if (!Array.isArray(body)) throw new Error("cursor body is not an array");
      for (const entry of body) {
        if (!Array.isArray(entry) || entry.length !== 2 || typeof entry[0] !== "string" || !Array.isArray(entry[1])) {
          throw new Error("cursor entry is not [topic, origins]");
        }
        for (const o of entry[1]) {
          if (!Array.isArray(o) || o.length !== 3 || typeof o[0] !== "string" || !isUint(o[1]) || !isUint(o[2])) {
            throw new Error("cursor origin is not [node, epoch, seq]");
          }
          c.observe(entry[0], o[0], o[1], o[2]);
        }
      }
    } catch (e) {
      throw new EdgesyncError("cursor_invalid", `the cursor could not be decoded: ${e.message}`, false);
    }
    return c;
  }

  /** Highest seq seen for (topic, node, epoch); 0 when none. */
  position(topic, node, epoch) {
    return this.topics.get(topic)?.get(originKey(node, epoch))?.[2] ?? 0;
  }

  /** Record that `seq` of (topic, node, epoch) was seen (keeps the maximum). */
  observe(topic, node, epoch, seq) {
    let vv = this.topics.get(topic);
    if (!vv) {
      vv = new Map();
      this.topics.set(topic, vv);
    }
    const key = originKey(node, epoch);
    const cur = vv.get(key);
    if (!cur) vv.set(key, [node, epoch, seq]);
    else if (seq > cur[2]) cur[2] = seq;
  }

  /** Pointwise maximum with `other`. */
  merge(other) {
    for (const [topic, vv] of other.topics)
      for (const [node, epoch, seq] of vv.values()) this.observe(topic, node, epoch, seq);
  }

  /** The opaque text form (topics and origins sorted, like the gateway's). */
  encode() {
    const topics = [...this.topics.keys()].sort();
    const body = topics.map((t) => [
      t,
      [...this.topics.get(t).values()].sort((a, b) =>
        a[0] < b[0] ? -1 : a[0] > b[0] ? 1 : Number(a[1]) - Number(b[1]),
      ),
    ]);
    const packed = encodeMsgpack(body);
    const bytes = new Uint8Array(packed.length + 1);
    bytes[0] = CURSOR_VERSION;
    bytes.set(packed, 1);
    return base64Encode(bytes, URL_ALPHABET, false);
  }
}

function isUint(v) {
  return (typeof v === "number" && Number.isSafeInteger(v) && v >= 0) || (typeof v === "bigint" && v >= 0n);
}

function originKey(node, epoch) {
  return `${node}\u0000${epoch}`;
}

// ---------------------------------------------------------------------------------------
// Topics (PROTOCOL.md §3)

/**
 * Does `topic` match subscription `pattern`? `*` is one segment, a final `>` one or
 * more; a wildcard in the first position never matches a reserved `$` topic.
 */
export function topicMatches(pattern, topic) {
  const p = pattern.split(".");
  const t = topic.split(".");
  for (let i = 0; ; i++) {
    const ps = p[i];
    const ts = t[i];
    if (ps === undefined && ts === undefined) return true;
    if (ps === undefined || ts === undefined) return false;
    if (ps === ">") return !(i === 0 && ts.startsWith("$"));
    if (ps === "*") {
      if (i === 0 && ts.startsWith("$")) return false;
    } else if (ps !== ts) return false;
  }
}
