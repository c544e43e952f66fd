// Test support: a real edgesync gateway in a child process, a TCP fault proxy, and
// bounded waits. Everything listens on 127.0.0.1 only.

import { spawn } from "node:child_process";
import { mkdtemp, rm, writeFile } from "node:fs/promises";
import net from "node:net";
import { tmpdir } from "node:os";
import path from "node:path";
import { fileURLToPath } from "node:url";

const here = path.dirname(fileURLToPath(import.meta.url));
export const repoRoot = path.resolve(here, "../../..");

/** Gateway processes still running; killed if this process exits first (a failed or cancelled test). */
const running = new Set();
process.on("exit", () => {
  for (const child of running) child.kill("SIGKILL");
});

/** The gateway binary: `EDGESYNC_BIN`, else the workspace's debug build. */
export const gatewayBin = process.env.EDGESYNC_BIN ?? path.join(repoRoot, "target/debug/edgesync");

/**
 * A gateway process with its own data directory. `config` is extra TOML; `ws` the
 * listener address (`127.0.0.1:0` picks a free port, kept across `restart`).
 */
export class Gateway {
  constructor({ config = "", nodeId, dataDir } = {}) {
    this.config = config;
    this.nodeId = nodeId;
    this.dataDir = dataDir;
    this.ownsDataDir = !dataDir;
    this.child = null;
    this.wsAddr = "127.0.0.1:0";
    this.adminAddr = "127.0.0.1:0";
    this.log = [];
  }

  static async start(opts) {
    const g = new Gateway(opts);
    await g.start();
    return g;
  }

  get url() {
    return `ws://${this.wsAddr}`;
  }

  async start() {
    if (!this.dataDir) this.dataDir = await mkdtemp(path.join(tmpdir(), "edgesync-js-"));
    const configPath = path.join(this.dataDir, "..", `${path.basename(this.dataDir)}.toml`);
    await writeFile(configPath, `[log]\nformat = "text"\nlevel = "info"\n\n${this.config}\n`);
    const args = ["serve", "--config", configPath, "--data-dir", this.dataDir];
    args.push("--ws", this.wsAddr, "--wss", "off", "--quic", "off", "--admin", this.adminAddr);
    if (this.nodeId) args.push("--node-id", this.nodeId);
    // The ready line is read from the log at info level: no RUST_LOG may change that.
    const env = { ...process.env };
    delete env.RUST_LOG;
    const child = spawn(gatewayBin, args, { stdio: ["ignore", "ignore", "pipe"], env });
    this.child = child;
    running.add(child);
    this.exited = new Promise((resolve) =>
      child.once("exit", (code, signal) => {
        running.delete(child);
        resolve({ code, signal });
      }),
    );
    const ready = await new Promise((resolve, reject) => {
      let buf = "";
      let admin = null;
      const onData = (chunk) => {
        buf += chunk.toString();
        let nl;
        while ((nl = buf.indexOf("\n")) >= 0) {
          const line = buf.slice(0, nl);
          buf = buf.slice(nl + 1);
          if (this.log.length < 2000) this.log.push(line);
          const a = /admin listening.*addr=Some\(([\d.]+:\d+)\)/.exec(line);
          if (a) admin = a[1];
          const r = /edgesync ready.*ws=Some\(([\d.]+:\d+)\)/.exec(line);
          if (r) resolve({ ws: r[1], admin });
        }
      };
      child.stderr.on("data", onData);
      child.once("exit", (code) => reject(new Error(`gateway exited (${code}) before ready:\n${this.log.join("\n")}`)));
      // Bounded: a gateway that never says ready fails the test instead of hanging it.
      const timer = setTimeout(() => {
        child.kill("SIGKILL");
        reject(new Error(`gateway not ready after 60 s:\n${this.log.join("\n")}`));
      }, 60_000);
      timer.unref();
      child.once("error", reject);
    });
    this.wsAddr = ready.ws;
    this.adminAddr = ready.admin ?? this.adminAddr;
    // Keep draining stderr so the child never blocks on a full pipe.
    child.stderr.on("data", () => undefined);
    await waitFor(async () => {
      try {
        const r = await fetch(`http://${this.adminAddr}/readyz`);
        return r.status === 200;
      } catch {
        return false;
      }
    }, "gateway /readyz");
  }

  /** SIGKILL: no drain, no flush beyond what was acknowledged. */
  async kill() {
    if (!this.child) return;
    this.child.kill("SIGKILL");
    await this.exited;
    this.child = null;
  }

  /** SIGTERM: the gateway tells clients `shutting_down` and drains. */
  async stop() {
    if (!this.child) return;
    this.child.kill("SIGTERM");
    await this.exited;
    this.child = null;
  }

  /** Start again on the same ports and data directory. */
  async restart() {
    await this.start();
  }

  async dispose() {
    await this.kill();
    if (this.ownsDataDir && this.dataDir) {
      await rm(this.dataDir, { recursive: true, force: true });
      await rm(`${this.dataDir}.toml`, { force: true });
    }
  }
}

/** A port that nothing listens on (bound, then closed). */
export async function deadUrl() {
  const srv = net.createServer();
  await new Promise((r) => srv.listen(0, "127.0.0.1", r));
  const { port } = srv.address();
  await new Promise((r) => srv.close(r));
  return `ws://127.0.0.1:${port}`;
}

/**
 * A TCP proxy in front of a gateway that can swallow what the gateway sends
 * (`blackhole = true`) and cut every connection (`cut()`): a lost ack, a lost push,
 * a dead path.
 */
export class FaultProxy {
  constructor(target) {
    this.target = target; // "host:port"
    this.blackhole = false;
    this.refuse = false;
    this.pairs = new Set();
    this.server = net.createServer((client) => this.#accept(client));
  }

  static async start(target) {
    const p = new FaultProxy(target);
    await new Promise((r) => p.server.listen(0, "127.0.0.1", r));
    return p;
  }

  get url() {
    return `ws://127.0.0.1:${this.server.address().port}`;
  }

  #accept(client) {
    if (this.refuse) {
      client.destroy();
      return;
    }
    const [host, port] = this.target.split(":");
    const upstream = net.connect(Number(port), host);
    const pair = { client, upstream };
    this.pairs.add(pair);
    client.on("data", (d) => upstream.write(d));
    upstream.on("data", (d) => {
      if (!this.blackhole) client.write(d);
    });
    const end = () => {
      this.pairs.delete(pair);
      client.destroy();
      upstream.destroy();
    };
    client.on("error", end);
    upstream.on("error", end);
    client.on("close", end);
    upstream.on("close", end);
  }

  /** Drop every connection at once. */
  cut() {
    for (const { client, upstream } of this.pairs) {
      client.destroy();
      upstream.destroy();
    }
    this.pairs.clear();
  }

  async close() {
    this.cut();
    await new Promise((r) => this.server.close(r));
  }
}

/** Poll `cond` every 20 ms, at most `tries` times (a bounded loop, no wall-clock threshold). */
export async function waitFor(cond, what, tries = 1500) {
  for (let i = 0; i < tries; i++) {
    if (await cond()) return;
    await sleep(20);
  }
  throw new Error(`gave up waiting for ${what}`);
}

export function sleep(ms) {
  return new Promise((r) => setTimeout(r, ms));
}

/** Take `n` items without ending the subscription (no `return()`). */
export async function takeKeep(sub, n) {
  const out = [];
  while (out.length < n) {
    const r = await sub.next();
    if (r.done) throw new Error(`subscription ended after ${out.length} of ${n}`);
    out.push(r.value);
  }
  return out;
}

/** Every message of `topic` in the store, paging through history. */
export async function stored(client, topic) {
  const all = [];
  let page = await client.history(topic, { from: "earliest", limit: 100 });
  while (page) {
    all.push(...page.messages);
    page = await page.next();
  }
  return all;
}
