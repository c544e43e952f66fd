// The chat page: log in (a demo JWT from the server), then one subscription to the room
// made with presence (its messages, the last 50 as history, and join/leave of everyone
// there), the online list from those items, direct messages through the owner-only
// inbox of the principal, and the ticker plugin's time.
import { connect } from "/edgesync.js";

const $ = (id) => document.getElementById(id);
const online = new Map(); // client id → principal

function add(list, from, text, cls) {
  const li = document.createElement("li");
  if (cls) li.className = cls;
  const b = document.createElement("span");
  b.className = "from";
  b.textContent = from;
  li.append(b, document.createTextNode(text));
  $(list).append(li);
  li.scrollIntoView();
}

function renderOnline() {
  const names = [...new Set(online.values())].sort();
  $("online").replaceChildren(...names.map((n) => Object.assign(document.createElement("li"), { textContent: n })));
}

async function start(name, room) {
  sessionStorage.setItem("chat", JSON.stringify({ name, room }));
  $("login").hidden = true;
  $("room").textContent = room;
  $("me").textContent = `as ${name}`;
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
  window.chat = { client: c, ready: false };
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
  const roomSub = c.subscribe(topic, { presence: true, from: { last: 50 } });
  await roomSub.ready;
  for (const m of (await c.presence(topic)).members) online.set(m.client, m.principal ?? m.client);
  renderOnline();
  window.chat.ready = true;
  for await (const item of roomSub) {
    if (item.kind === "join") online.set(item.client, item.principal ?? item.client);
    else if (item.kind === "leave") online.delete(item.client);
    else if (item.kind === "msg") {
      const m = item.json();
      add("messages", m.from, m.text);
    }
    renderOnline();
  }
}

const saved = JSON.parse(sessionStorage.getItem("chat") ?? "null");
if (saved) start(saved.name, saved.room);
$("login").onsubmit = (e) => {
  e.preventDefault();
  start($("login-name").value.trim(), $("login-room").value.trim() || "lobby");
};
