// The chat page: log in (a demo JWT from the server), then one subscription to the room
// made with presence (its messages, and join/leave of everyone there), the online list
// from those items, direct messages through the owner-only inbox of the principal, and
// the ticker plugin's time.
//
// The room resumes from a saved cursor: after the messages it shows, the page stores the
// room subscription's cursor in localStorage together with what it shows (one item per
// name and room, so the two always agree). A reload shows that again and subscribes from
// the cursor, so the gateway sends exactly what was said since: nothing lost, nothing
// twice. A first visit starts from the room's last 50 messages instead.
import { connect, CursorState } from "/edgesync.js";

const $ = (id) => document.getElementById(id);
const online = new Map(); // client id → principal
/** Room lines kept with the cursor: enough to fill the page after a reload, bounded for localStorage. */
const KEPT_LINES_MAX = 200;
/** The first visit's history on join. */
const HISTORY_ON_JOIN = 50;

function add(list, from, text, cls) {
  const li = document.createElement("li");
  if (cls) li.className = cls;
  const b = document.createElement("span");
  b.className = "from";
  b.textContent = from;
  li.append(b, document.createTextNode(text));
  $(list).append(li);
  li.scrollIntoView();
  return li;
}

/** A room line: a message (`seq`/`origin` say which, for whoever inspects the page) or a gap notice. */
function addLine(line) {
  const li = add("messages", line.from, line.text, line.gap ? "gap" : undefined);
  if (line.seq !== undefined) Object.assign(li.dataset, { seq: line.seq, origin: line.origin });
}

function renderOnline() {
  const names = [...new Set(online.values())].sort();
  $("online").replaceChildren(...names.map((n) => Object.assign(document.createElement("li"), { textContent: n })));
}

/**
 * What this page showed of a room and the room subscription's cursor just after it,
 * stored as one localStorage item so a reload never finds one without the other.
 */
class SavedRoom {
  constructor(name, room) {
    this.key = `chat:${name}:${room}`;
    /** The cursor to resume from; null on a first visit. */
    this.cursor = null;
    this.lines = [];
    try {
      const v = JSON.parse(localStorage.getItem(this.key) ?? "null");
      if (v && typeof v.cursor === "string" && Array.isArray(v.lines)) Object.assign(this, v);
    } catch {
      // Unreadable: a first visit.
    }
  }

  push(line) {
    this.lines.push(line);
    if (this.lines.length > KEPT_LINES_MAX) this.lines.splice(0, this.lines.length - KEPT_LINES_MAX);
  }

  save(cursor) {
    this.cursor = cursor;
    try {
      localStorage.setItem(this.key, JSON.stringify({ cursor, lines: this.lines }));
    } catch {
      // Storage full or denied: the next reload starts from an older save and shows the rest again once.
    }
  }

  forget() {
    localStorage.removeItem(this.key);
    this.cursor = null;
    this.lines = [];
  }
}

/** The room's subscription: from the saved cursor when there is one, else its recent history. */
async function joinRoom(c, topic, saved) {
  if (saved.cursor !== null) {
    const sub = c.subscribe(topic, { presence: true, from: { cursor: saved.cursor } });
    try {
      await sub.ready;
      return sub;
    } catch (e) {
      if (e.code !== "cursor_invalid") throw e;
      // A cursor the gateway cannot read (edited storage): start over as on a first visit.
      saved.forget();
      $("messages").replaceChildren();
    }
  }
  const sub = c.subscribe(topic, { presence: true, from: { last: HISTORY_ON_JOIN } });
  await sub.ready;
  return sub;
}

async function start(name, room) {
  sessionStorage.setItem("chat", JSON.stringify({ name, room }));
  $("login").hidden = true;
  $("room").textContent = room;
  $("me").textContent = `as ${name}`;
  const saved = new SavedRoom(name, room);
  for (const line of saved.lines) addLine(line);
  const login = await (await fetch(`/login?name=${encodeURIComponent(name)}`)).json();
  // One client id per tab (kept across reloads), so two tabs of a name are two connections of two clients.
  let clientId = sessionStorage.getItem("clientId");
  if (!clientId) {
    clientId = `${name}-${crypto.randomUUID().slice(0, 8)}`;
    sessionStorage.setItem("clientId", clientId);
  }
  const urls = login.gateway.split(",");
  // A function token: every reconnect logs in afresh, so an expired JWT never locks the tab out.
  const token = async () => (await (await fetch(`/login?name=${encodeURIComponent(name)}`)).json()).token;
  const c = await connect(urls, { token, clientId });
  // For tests and the curious: the client, where the room is saved and the cursor it resumed from.
  window.chat = { client: c, ready: false, savedKey: saved.key, resumedFrom: saved.cursor };
  c.addEventListener("disconnected", () => ($("status").textContent = "reconnecting…"));
  c.addEventListener("connected", () => ($("status").textContent = ""));
  const topic = `chat.${room}`;

  $("send").onclick = async () => {
    const text = $("text").value.trim();
    if (!text) return;
    $("text").value = "";
    await c.publish(topic, JSON.stringify({ from: name, text }));
  };
  $("text").onkeydown = (e) => e.key === "Enter" && $("send").click();
  $("dm-send").onclick = async () => {
    const to = $("dm-to").value.trim();
    const text = $("dm-text").value.trim();
    if (!to || !text) return;
    $("dm-text").value = "";
    await c.sendToPrincipal(to, JSON.stringify({ from: name, text }));
    add("dms", `→ ${to}`, text, "dm");
  };

  (async () => {
    for await (const m of c.subscribe("time.tick")) {
      $("time").textContent = new Date(m.json().ts).toLocaleTimeString();
    }
  })();
  (async () => {
    for await (const m of c.subscribe(`$inbox.@${name}`, { from: { last: 20 } })) {
      const dm = m.json();
      add("dms", dm.from, dm.text, "dm");
    }
  })();
  const roomSub = await joinRoom(c, topic, saved);
  window.chat.resumedFrom = saved.cursor;
  for (const m of (await c.presence(topic)).members) online.set(m.client, m.principal ?? m.client);
  renderOnline();
  window.chat.ready = true;
  // Gaps shown: a gap does not move the subscription's cursor (sdk/js/README.md), but once
  // the page has said so, a reload should not say it again.
  const skipped = new CursorState();
  const cursor = () => {
    const c = CursorState.decode(roomSub.cursor());
    c.merge(skipped);
    return c.encode();
  };
  for await (const item of roomSub) {
    if (item.kind === "join") online.set(item.client, item.principal ?? item.client);
    else if (item.kind === "leave") online.delete(item.client);
    else if (item.kind === "msg" || item.kind === "gap") {
      const line = item.kind === "msg" ? messageLine(item) : gapLine(item);
      if (item.kind === "gap") skipped.observe(item.topic, item.origin, item.epoch, item.to);
      addLine(line);
      saved.push(line);
      // Shown, so saved with the cursor that now includes it. In a burst (a resume's
      // catch-up) once at its end: a reload before that shows the rest again, once.
      if (roomSub.buffered === 0) saved.save(cursor());
    }
    renderOnline();
  }
}

function messageLine(m) {
  let body;
  try {
    body = m.json();
  } catch {
    body = { from: m.client, text: m.text() }; // not the page's JSON: show it as it is
  }
  return { from: String(body.from), text: String(body.text), seq: m.seq, origin: m.origin };
}

/** Messages the gateway no longer keeps (retention) or could not send: said, never silently skipped. */
function gapLine(g) {
  return { from: "…", text: `${g.to - g.from + 1} message(s) not available (${g.reason})`, gap: true };
}

const saved = JSON.parse(sessionStorage.getItem("chat") ?? "null");
if (saved) start(saved.name, saved.room);
$("login").onsubmit = (e) => {
  e.preventDefault();
  start($("login-name").value.trim(), $("login-room").value.trim() || "lobby");
};
