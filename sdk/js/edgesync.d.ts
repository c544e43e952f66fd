// Types for edgesync.js, the edgesync client for browsers and Node >= 20.

/** Where a subscription or history read starts (PROTOCOL.md §2.1). */
export type Start = "latest" | "earliest" | { last: number } | { cursor: string };

export interface ConnectOptions {
  /** `"json"` (default) or `"msgpack"`: the WebSocket subprotocol. */
  encoding?: "json" | "msgpack";
  /** Handed to the gateway's auth plugins; a function is called on every (re)connect. */
  token?: string | (() => string | Promise<string>);
  /** Stable identity that scopes idempotent publish; assigned by the gateway when absent and kept across reconnects. */
  clientId?: string;
  /** Resume cursor: the default start of subscriptions made without `from`, and the seed of `cursor()`. */
  cursor?: string;
  /** Reconnect and resume after a lost connection (default true). */
  reconnect?: boolean;
  /** Exponential backoff with jitter between reconnect attempts (default 100 ms doubling to 5 s). */
  backoff?: { initialMs?: number; maxMs?: number };
  /** Bound on opening a socket and getting `connected` (default 10 s). */
  connectTimeoutMs?: number;
  /** Bound on waiting for a reply, reconnects included (default 30 s; 0 = none). Subscriptions never time out. */
  requestTimeoutMs?: number;
  /** A ping after this long without traffic; no traffic for twice as long drops the connection (default 15 s; 0 = off). */
  pingIntervalMs?: number;
  /** Items buffered per subscription before it is paused at the gateway (default 10 000). */
  bufferSize?: number;
  /** A WebSocket class to use instead of the platform's (or the `ws` package on Node 20). */
  WebSocket?: unknown;
}

export interface PublishOptions {
  /** Client message id (1–128 bytes): a repeat within the gateway's dedupe window is stored once. Generated when absent. */
  mid?: string;
  headers?: Record<string, string>;
  /** `false`: fire and forget (resolves with `undefined` once queued). Default true. */
  ack?: boolean;
}

/** A durable publish acknowledgement. */
export interface PubAck {
  topic: string;
  origin: string;
  epoch: number;
  seq: number;
  hlc: bigint;
  /** The topic's position just after this message. */
  cursor: string;
  /** True when this repeats the ack of an earlier publish with the same `mid`. */
  dup: boolean;
}

/** A delivered message. */
export interface Message {
  kind: "msg";
  topic: string;
  /** The payload's bytes, whatever the encoding. */
  data: Uint8Array;
  seq: number;
  origin: string;
  epoch: number;
  /** Hybrid logical clock, exact: milliseconds since the Unix epoch << 16 | counter. */
  hlc: bigint;
  /** Publisher's client id. */
  client: string;
  mid?: string;
  headers: Record<string, string>;
  /** Pattern of the subscription that delivered it (absent in history pages). */
  subscription?: string;
  /** `seq` 0: best-effort, never stored. */
  readonly ephemeral: boolean;
  text(): string;
  json(): unknown;
  /** Queue deliveries only (`joinQueue`): the group. */
  queue?: string;
  /** Queue deliveries only: how many times this message was handed out, this one included. */
  delivery?: number;
  /** Queue deliveries only: `client.ack(this)` etc.; `invalid_argument` on other messages. */
  ack(): Promise<void>;
  nak(options?: { delayMs?: number }): Promise<void>;
  progress(): Promise<void>;
  term(reason?: string): Promise<void>;
}

/** A client became present on a topic (subscriptions made with `presence: true`). */
export interface Join {
  kind: "join";
  topic: string;
  client: string;
  principal?: string;
  node: string;
  /** Unix ms. */
  since: number;
}

/** A client left a topic (its last connection there went). */
export interface Leave {
  kind: "leave";
  topic: string;
  client: string;
  principal?: string;
  node: string;
}

/** Who is present on a topic (`client.presence`). */
export interface PresenceList {
  topic: string;
  count: number;
  /** More members than the gateway lists (`limits.max_presence_members`). */
  truncated: boolean;
  members: Array<{ client: string; principal?: string; connections: number; node: string; since: number }>;
}

/** Queue group membership (PROTOCOL.md §2.5); unset fields take the gateway's defaults. */
export interface QueueOptions {
  /** The group name: one topic segment, 1–64 bytes. */
  group: string;
  /** Where a new group starts (default `latest`); an existing group goes on from its progress. */
  from?: Start;
  /** Unanswered deliveries this member holds at most (1–10 000, default 64). */
  maxUnacked?: number;
  /** Group: no answer in this time → delivered again (default 30 000). */
  ackWaitMs?: number;
  /** Group: deliveries before a message is dead-lettered to `$dlq.queue.<group>` (default 5). */
  maxDeliveries?: number;
  /** Group: `"strict"` keeps one message per topic in flight. */
  ordering?: "parallel" | "strict";
  bufferSize?: number;
}

export type Item = Message | Gap | Join | Leave;

/** Messages `from`..`to` of (topic, origin) will not arrive live: re-read them with `history` from `cursor`. */
export interface Gap {
  kind: "gap";
  topic: string;
  origin: string;
  epoch: number;
  from: number;
  to: number;
  reason: "slow_consumer" | "retention" | "corrupt";
  cursor: string;
  subscription: string;
}

export interface HistoryPage {
  topic: string;
  messages: Message[];
  /** Position after the last message returned. */
  cursor: string;
  more: boolean;
  /** The next page, or `null` when `more` is false. */
  next(): Promise<HistoryPage | null>;
}

export interface Session {
  client_id: string;
  conn_id: number;
  node: string;
  epoch: number;
  version: number;
  limits: {
    max_frame_bytes: number;
    max_topic_bytes: number;
    max_headers: number;
    max_subscriptions: number;
    publish_rate_per_sec: number;
    idle_timeout_ms: number;
  };
}

export class EdgesyncError extends Error {
  /** The gateway's error code (PROTOCOL.md §6) or a client code: `timeout`, `closed`, `connection_lost`, `connect_failed`, `bad_url`, `protocol`, `invalid_argument`. */
  code: string;
  /** Whether the same thing can succeed later. */
  retry: boolean;
  constructor(code: string, message: string, retry?: boolean, options?: { cause?: unknown });
}

export class Subscription implements AsyncIterableIterator<Item> {
  readonly pattern: string;
  /** Made with `presence: true`: yields `join`/`leave` items too. */
  readonly presence: boolean;
  /** The wire options of a queue membership (`joinQueue`), else null. */
  readonly queue: Record<string, unknown> | null;
  /** Resolves with the start cursor once the gateway confirmed; rejects when it refused. */
  readonly ready: Promise<string>;
  /** Items buffered and not yet taken. */
  readonly buffered: number;
  /** What the application consumed from this subscription. */
  cursor(): string;
  next(): Promise<IteratorResult<Item, undefined>>;
  return(): Promise<IteratorResult<Item, undefined>>;
  /** Unsubscribe and end the iteration. */
  close(): Promise<void>;
  [Symbol.asyncIterator](): Subscription;
}

/**
 * Events: `connected` (detail `{ url, session }`), `disconnected` (`{ url, code, reason }`),
 * `reconnecting` (`{ attempt, delayMs, url }`), `error` (an `EdgesyncError`: a gateway error
 * push, or why the client gave up), `push` (a push of a type this version does not know).
 */
export class Client extends EventTarget {
  readonly session: Session;
  readonly url: string;
  readonly state: "connecting" | "open" | "reconnecting" | "closed";
  readonly encoding: "json" | "msgpack";
  publish(
    topic: string,
    data: string | Uint8Array | ArrayBuffer | ArrayBufferView,
    options?: PublishOptions & { ack?: true },
  ): Promise<PubAck>;
  publish(
    topic: string,
    data: string | Uint8Array | ArrayBuffer | ArrayBufferView,
    options: PublishOptions & { ack: false },
  ): Promise<undefined>;
  /** `presence: true`: be present on `pattern` (an exact topic) while subscribed and get its `join`/`leave` items. */
  subscribe(pattern: string, options?: { from?: Start; bufferSize?: number; presence?: boolean }): Subscription;
  /** Join a queue group: each message goes to one member; answer every delivery. */
  joinQueue(pattern: string, options: QueueOptions): Subscription;
  ack(m: Message): Promise<void>;
  nak(m: Message, options?: { delayMs?: number }): Promise<void>;
  progress(m: Message): Promise<void>;
  term(m: Message, reason?: string): Promise<void>;
  /** Who is present on `topic`. */
  presence(topic: string): Promise<PresenceList>;
  /** A direct message into `$inbox.<clientId>`; acked, idempotent by `mid`, resent after a reconnect. */
  sendToClient(clientId: string, data: string | Uint8Array | ArrayBuffer | ArrayBufferView, options?: Omit<PublishOptions, "ack">): Promise<PubAck>;
  /** A direct message into `$inbox.@<principal>`. */
  sendToPrincipal(principal: string, data: string | Uint8Array | ArrayBuffer | ArrayBufferView, options?: Omit<PublishOptions, "ack">): Promise<PubAck>;
  /** This client's inbox `$inbox.<client id>` (owner only), from `from` (default `latest`). */
  inbox(options?: { from?: Start; bufferSize?: number }): Subscription;
  history(topic: string, options?: { from?: Start; limit?: number }): Promise<HistoryPage>;
  ping(): Promise<void>;
  /** Everything the application consumed, merged with the connect cursor: resume from it. */
  cursor(): string;
  /** Resolves when every publish made so far is acknowledged or has failed. */
  flush(): Promise<void>;
  /** A command this version does not wrap; not resent after a reconnect. */
  command(type: string, fields?: Record<string, unknown>): Promise<Record<string, unknown>>;
  close(): Promise<void>;
}

export function connect(urls: string | string[], options?: ConnectOptions): Promise<Client>;

/** Cursor maintenance (PROTOCOL.md §5), for tools and tests. */
export class CursorState {
  static decode(text: string): CursorState;
  position(topic: string, node: string, epoch: number): number | bigint;
  observe(topic: string, node: string, epoch: number, seq: number | bigint): void;
  merge(other: CursorState): void;
  encode(): string;
}

export function topicMatches(pattern: string, topic: string): boolean;
export function decodeFrame(data: string | ArrayBuffer | Uint8Array): Array<Record<string, unknown>>;
export function encodeJson(value: unknown): string;
export function encodeMsgpack(value: unknown): Uint8Array;
export function decodeMsgpack(bytes: Uint8Array): unknown;
