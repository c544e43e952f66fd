// The chat's tiny web server: the page, the client module, and a demo login that signs
// a JWT (HS256, one hour) for any name. A real deployment signs tokens in its own login
// service with its own secret; the gateway only verifies them (plugins/jwt-auth).
//
//   node server.js --port 8000 --gateway ws://127.0.0.1:7400

import { createHmac } from "node:crypto";
import { readFile } from "node:fs/promises";
import http from "node:http";
import path from "node:path";
import { fileURLToPath } from "node:url";

const here = path.dirname(fileURLToPath(import.meta.url));
const SECRET = process.env.CHAT_JWT_SECRET ?? "demo-secret-change-me";

export function sign(claims, secret = SECRET) {
  const b64 = (v) => Buffer.from(JSON.stringify(v)).toString("base64url");
  const body = `${b64({ alg: "HS256", typ: "JWT" })}.${b64(claims)}`;
  return `${body}.${createHmac("sha256", secret).update(body).digest("base64url")}`;
}

const FILES = {
  "/": ["public/index.html", "text/html; charset=utf-8"],
  "/chat.js": ["public/chat.js", "text/javascript"],
  "/edgesync.js": ["../../sdk/js/edgesync.js", "text/javascript"],
};

/** Start the server; resolves with its base URL. */
export async function serve({ port = 8000, gateway = "ws://127.0.0.1:7400" } = {}) {
  const server = http.createServer(async (req, res) => {
    const url = new URL(req.url, "http://x");
    if (url.pathname === "/login") {
      const name = url.searchParams.get("name") ?? "";
      if (!/^[a-z0-9_-]{1,32}$/i.test(name)) {
        res.writeHead(400, { "content-type": "application/json" });
        res.end(JSON.stringify({ error: "a name is 1-32 letters, digits, - or _" }));
        return;
      }
      const now = Math.floor(Date.now() / 1000);
      const token = sign({ sub: name, iat: now, exp: now + 3600 });
      res.writeHead(200, { "content-type": "application/json" });
      res.end(JSON.stringify({ token, gateway }));
      return;
    }
    const file = FILES[url.pathname];
    if (!file) {
      res.writeHead(404);
      res.end();
      return;
    }
    res.writeHead(200, { "content-type": file[1], "cache-control": "no-store" });
    res.end(await readFile(path.join(here, file[0])));
  });
  await new Promise((r) => server.listen(port, "127.0.0.1", r));
  return { server, url: `http://127.0.0.1:${server.address().port}/` };
}

if (process.argv[1] === fileURLToPath(import.meta.url)) {
  const arg = (k, d) => {
    const i = process.argv.indexOf(k);
    return i > 0 ? process.argv[i + 1] : d;
  };
  const { url } = await serve({ port: Number(arg("--port", 8000)), gateway: arg("--gateway", "ws://127.0.0.1:7400") });
  console.log(`chat on ${url}`);
}
