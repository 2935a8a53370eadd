// /client.js without a gateway: positions, dedup, URLs, backoff, and the subscription's
// reconnect/resume logic against a scripted socket. Run: node --test tests/node/
import assert from "node:assert/strict";
import { test } from "node:test";

import {
  NON_RESUMABLE,
  Tracker,
  backoffDelay,
  buildUrl,
  checkRoom,
  formatPosition,
  isResumable,
  parsePosition,
  subscribe,
} from "../../services/gateway/src/roomcast/gateway/static/client.js";

const EPOCH = 1764117000123456;

function blob(room, seq, prev, offsets, { epoch = EPOCH, partition = 0 } = {}) {
  const b = { type: "blob", room, partition, offsets, events: offsets.map((o) => ({ o })) };
  return seq === null ? b : { type: "blob", epoch, seq, prev, ...b };
}

async function waitFor(what, cond, ms = 3000) {
  const deadline = Date.now() + ms;
  while (!cond()) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 5));
  }
}

// A socket the test plays the gateway on: open(), receive(msg), serverClose(code).
class ScriptedSocket {
  static all = [];

  constructor(url) {
    this.url = new URL(url);
    this.readyState = 0;
    this.sent = [];
    ScriptedSocket.all.push(this);
  }

  send(data) {
    assert.equal(this.readyState, 1, "send on a socket that is not open");
    this.sent.push(JSON.parse(data));
  }

  close(code = 1005) {
    if (this.readyState === 3) return;
    this.readyState = 3;
    queueMicrotask(() => this.onclose?.({ code, reason: "" }));
  }

  open() {
    this.readyState = 1;
    this.onopen?.({});
  }

  receive(msg) {
    this.onmessage?.({ data: typeof msg === "string" ? msg : JSON.stringify(msg) });
  }

  serverClose(code, reason = "") {
    this.readyState = 3;
    this.onclose?.({ code, reason });
  }

  static last() {
    return ScriptedSocket.all[ScriptedSocket.all.length - 1];
  }
}

function scripted(rooms, options = {}) {
  ScriptedSocket.all = [];
  const states = [];
  const sub = subscribe("ws://127.0.0.1:1/ws", rooms, {
    WebSocket: ScriptedSocket,
    backoffInitialMs: 1,
    backoffMaxMs: 4,
    pingIntervalMs: 0,
    onState: (s) => states.push(s),
    ...options,
  });
  return { sub, states };
}

async function take(iterator, n) {
  const out = [];
  while (out.length < n) {
    const { value, done } = await iterator.next();
    if (done) break;
    out.push(value);
  }
  return out;
}

// ---- pure helpers -----------------------------------------------------------------------------

test("positions are EPOCH:SEQ both ways, and anything else is refused", () => {
  assert.deepEqual(parsePosition(`${EPOCH}:1234`), { epoch: EPOCH, seq: 1234 });
  assert.equal(formatPosition(parsePosition(`${EPOCH}:0`)), `${EPOCH}:0`);
  for (const bad of ["", "1", "1:", ":1", "a:1", "1:2:3", "-1:2", " 1:2", "1:99999999999999999999"]) {
    assert.throws(() => parsePosition(bad), TypeError, bad);
  }
  assert.throws(() => parsePosition(null), TypeError);
});

test("room names are checked as the gateway checks them", () => {
  for (const ok of ["lobby", "a:b", "x@y=z+w~v_-", "r".repeat(128)]) assert.equal(checkRoom(ok), ok);
  for (const bad of ["", "a.b", "a b", "a*", "r".repeat(129), 7]) {
    assert.throws(() => checkRoom(bad), TypeError, String(bad));
  }
  assert.throws(() => subscribe("ws://h/ws", ["bad room"], { WebSocket: ScriptedSocket }), TypeError);
  assert.throws(() => subscribe("not a url", ["a"], { WebSocket: ScriptedSocket }), TypeError);
  const one = subscribe("ws://h/ws", "lobby", { WebSocket: ScriptedSocket });
  assert.deepEqual(one.rooms, ["lobby"], "one room as a string is one room, not its letters");
  one.close();
});

test("the URL has one room= per room and since=ROOM:EPOCH:SEQ for each room with a position", () => {
  const positions = new Map([
    ["a:b", { epoch: EPOCH, seq: 7 }],
    ["c+d", { epoch: EPOCH, seq: 9 }],
  ]);
  const href = buildUrl("http://127.0.0.1:8080/ws?x=1", ["a:b", "c+d", "e"], positions, "tok");
  const url = new URL(href);
  assert.equal(url.protocol, "ws:");
  assert.equal(url.pathname, "/ws");
  assert.deepEqual(url.searchParams.getAll("room"), ["a:b", "c+d", "e"]);
  assert.deepEqual(url.searchParams.getAll("since"), [`a:b:${EPOCH}:7`, `c+d:${EPOCH}:9`]);
  assert.equal(url.searchParams.get("token"), "tok");
  assert.equal(url.searchParams.get("x"), "1");
  assert.ok(!href.includes("c+d"), "a + in a room name is escaped (else it reads as a space)");
  assert.equal(new URL(buildUrl("https://h/ws", ["r"])).protocol, "wss:");
  assert.equal(new URL(buildUrl("wss://h/ws", [])).search, "");
});

test("backoff is full jitter under an exponential cap", () => {
  assert.equal(backoffDelay(0, 250, 15000, () => 0), 0);
  const caps = [250, 500, 1000, 2000, 4000, 8000, 15000, 15000];
  caps.forEach((cap, attempt) => {
    const top = backoffDelay(attempt, 250, 15000, () => 0.999999);
    assert.ok(top < cap && top > cap * 0.99, `attempt ${attempt}: ${top} vs ${cap}`);
  });
  assert.ok(backoffDelay(1e6, 250, 15000, () => 0.5) <= 15000); // no overflow to Infinity/NaN
  let low = Infinity;
  let high = 0;
  for (let i = 0; i < 2000; i++) {
    const d = backoffDelay(3);
    low = Math.min(low, d);
    high = Math.max(high, d);
  }
  assert.ok(low >= 0 && low < 200, `spread reaches down: ${low}`);
  assert.ok(high < 2000 && high > 1800, `spread reaches up: ${high}`);
});

test("close codes that say 'fix the client' end the subscription, the others resume", () => {
  assert.deepEqual([...NON_RESUMABLE].sort(), [1002, 1007, 1008, 1009, 4001, 4003]);
  for (const code of NON_RESUMABLE) assert.equal(isResumable(code), false, String(code));
  for (const code of [1000, 1001, 1005, 1006, 1011, 1012, 4008, 4013]) {
    assert.equal(isResumable(code), true, String(code));
  }
  assert.equal(isResumable(4002), false, "an expired token is not coming back as it is");
  assert.equal(isResumable(4002, { canRefreshToken: true }), true);
});

// ---- Tracker: positions and duplicates --------------------------------------------------------

test("the tracker keeps each room's last position and drops a blob it already has", () => {
  const t = new Tracker();
  assert.equal(t.accept(blob("a", 10, 0, [0, 1])).position, `${EPOCH}:10`);
  assert.equal(t.accept(blob("b", 11, 0, [0])).position, `${EPOCH}:11`);
  assert.equal(t.accept(blob("a", 15, 10, [2])).events.length, 1);
  assert.equal(t.accept(blob("a", 15, 10, [2])), null, "the same seq again");
  assert.equal(t.accept(blob("a", 12, 10, [9])), null, "an older seq");
  assert.deepEqual(Object.fromEntries(t.positions), {
    a: { epoch: EPOCH, seq: 15 },
    b: { epoch: EPOCH, seq: 11 },
  });
  assert.equal(t.stats.duplicateBlobs, 2);
  assert.equal(t.stats.gaps, 0);
});

test("events are deduplicated per room and partition by offset, even merged differently", () => {
  const t = new Tracker();
  const got = [];
  const take = (b) => {
    const fresh = t.accept(b);
    if (fresh) got.push(...fresh.offsets.map((o, i) => [b.room, b.partition, o, fresh.events[i].o]));
  };
  take(blob("r", null, null, [0, 1, 2]));
  take(blob("r", null, null, [1, 2, 3, 4])); // a Kafka replay, merged into a different blob
  take(blob("r", null, null, [4, 5]));
  take(blob("r", null, null, [2, 3]));
  take(blob("r", null, null, [0], { partition: 1 })); // another partition counts on its own
  take(blob("s", null, null, [0])); // another room too
  assert.deepEqual(got, [
    ["r", 0, 0, 0], ["r", 0, 1, 1], ["r", 0, 2, 2], ["r", 0, 3, 3], ["r", 0, 4, 4],
    ["r", 0, 5, 5], ["r", 1, 0, 0], ["s", 0, 0, 0],
  ]); // prettier-ignore
  assert.equal(t.stats.duplicateEvents, 2 + 1 + 2);
  assert.equal(t.stats.duplicateBlobs, 1);
  assert.equal(t.positions.size, 0, "blobs outside the history have no position");
});

test("a blob that does not follow the last one is a gap, unless the chain was reset", () => {
  const t = new Tracker();
  t.accept(blob("a", 10, 0, [0]));
  t.accept(blob("a", 20, 10, [1]));
  assert.equal(t.stats.gaps, 0);
  t.accept(blob("a", 30, 25, [2]));
  assert.equal(t.stats.gaps, 1);
  t.unchain("a");
  t.accept(blob("a", 90, 80, [3]));
  assert.equal(t.stats.gaps, 1);
  t.accept(blob("a", 5, 0, [4], { epoch: EPOCH + 1 })); // a new history: not comparable
  assert.deepEqual(t.positions.get("a"), { epoch: EPOCH + 1, seq: 5 });
  assert.equal(t.stats.gaps, 1);
});

// ---- the subscription, against a scripted gateway ---------------------------------------------

test("blobs come out of the iterator in order; a resumable close reconnects with since", async () => {
  const { sub, states } = scripted(["a", "b"]);
  const it = sub[Symbol.asyncIterator]();
  const first = ScriptedSocket.last();
  assert.deepEqual(first.url.searchParams.getAll("room"), ["a", "b"]);
  assert.deepEqual(first.url.searchParams.getAll("since"), []);
  assert.equal(sub.state, "connecting");
  first.open();
  assert.equal(sub.state, "live");
  first.receive({ type: "joined", room: "a" });
  first.receive({ type: "joined", room: "b" });
  first.receive(blob("a", 10, 0, [0, 1]));
  first.receive(blob("b", 11, 0, [0]));
  first.receive(blob("a", 12, 10, [2]));
  const got = await take(it, 3);
  assert.deepEqual(got.map((b) => [b.room, b.seq, b.position]), [
    ["a", 10, `${EPOCH}:10`], ["b", 11, `${EPOCH}:11`], ["a", 12, `${EPOCH}:12`],
  ]); // prettier-ignore
  assert.deepEqual(sub.recovered, { a: null, b: null });

  first.serverClose(1012, "gateway restarting");
  assert.equal(sub.state, "recovering");
  await waitFor("a second connection", () => ScriptedSocket.all.length === 2);
  const second = ScriptedSocket.last();
  assert.deepEqual(second.url.searchParams.getAll("room"), ["a", "b"]);
  assert.deepEqual(second.url.searchParams.getAll("since"), [`a:${EPOCH}:12`, `b:${EPOCH}:11`]);
  second.open();
  second.receive({ type: "joined", room: "a", recovered: true });
  second.receive({ type: "joined", room: "b", recovered: true });
  second.receive(blob("a", 12, 10, [2])); // already had it
  second.receive(blob("a", 14, 12, [1, 2, 3])); // overlaps by events (a replay)
  const [next] = await take(it, 1);
  assert.deepEqual([next.seq, next.offsets, next.events], [14, [3], [{ o: 3 }]]);
  assert.deepEqual(sub.recovered, { a: true, b: true });
  assert.deepEqual(sub.positions, { a: `${EPOCH}:14`, b: `${EPOCH}:11` });
  assert.equal(sub.stats.connects, 2);
  assert.equal(sub.stats.duplicateBlobs, 1);
  assert.equal(sub.stats.duplicateEvents, 2);
  assert.deepEqual(states, ["live", "recovering", "live"]);

  await sub.close();
  assert.equal(sub.state, "closed");
  assert.deepEqual(await it.next(), { value: undefined, done: true });
  assert.equal(second.readyState, 3);
  assert.equal(ScriptedSocket.all.length, 2, "no reconnect after close()");
});

test("a close that says 'fix the client' ends the iteration with its code, no reconnect", async () => {
  const { sub, states } = scripted(["a"]);
  const it = sub[Symbol.asyncIterator]();
  const ws = ScriptedSocket.last();
  ws.open();
  ws.receive(blob("a", 1, 0, [0]));
  const pending = it.next();
  ws.serverClose(1008, "bad_message");
  const { value } = await pending;
  assert.equal(value.seq, 1, "what came before the close is delivered first");
  await assert.rejects(it.next(), (err) => err.code === 1008 && err.reason === "bad_message");
  assert.deepEqual(await it.next(), { value: undefined, done: true });
  assert.equal(sub.state, "closed");
  assert.equal(sub.closeCode, 1008);
  assert.equal(states.at(-1), "closed");
  await new Promise((r) => setTimeout(r, 20));
  assert.equal(ScriptedSocket.all.length, 1);
});

test("a connection that never opens is retried with backoff, and the backoff restarts", async () => {
  const { sub, states } = scripted(["a"], { openTimeoutMs: 20 });
  await waitFor("two attempts", () => ScriptedSocket.all.length >= 3);
  assert.ok(ScriptedSocket.all.slice(0, -1).every((ws) => ws.readyState === 3));
  assert.equal(sub.connects, 0);
  assert.ok(states.includes("recovering"));
  const ws = ScriptedSocket.last();
  ws.open();
  ws.receive({ type: "joined", room: "a" });
  assert.equal(sub.state, "live");
  assert.equal(sub._attempt, 0);
  await sub.close();
});

test("join and leave go out on the socket; those made while it opens go out once open", async () => {
  const { sub } = scripted(["a"]);
  const ws = ScriptedSocket.last();
  sub.join("b", `${EPOCH}:40`);
  sub.join("c");
  sub.leave("a");
  ws.open();
  assert.deepEqual(ws.sent, [
    { type: "join", room: "b", since: `${EPOCH}:40` },
    { type: "join", room: "c" },
    { type: "leave", room: "a" },
  ]);
  ws.receive(blob("c", 50, 0, [0]));
  sub.leave("c");
  ws.receive(blob("c", 51, 50, [1])); // on its way before the leave arrived: not handed on
  ws.receive(blob("_all", 52, 0, [0])); // push-to-all reaches everyone
  sub.join("d");
  assert.deepEqual(ws.sent.slice(3), [{ type: "leave", room: "c" }, { type: "join", room: "d" }]);
  assert.deepEqual(sub.rooms, ["b", "d"]);
  assert.deepEqual(sub._queue.map((b) => b.room), ["c", "_all"]);
  assert.deepEqual(sub.positions, { b: `${EPOCH}:40`, _all: `${EPOCH}:52` }, "c is forgotten");
  assert.throws(() => sub.join("d", "nope"), TypeError);
  ws.serverClose(1006);
  await waitFor("a reconnect", () => ScriptedSocket.all.length === 2);
  const url = ScriptedSocket.last().url;
  assert.deepEqual(url.searchParams.getAll("room"), ["b", "d"]);
  assert.deepEqual(url.searchParams.getAll("since"), [`b:${EPOCH}:40`]);
  await sub.close();

  const later = scripted([], { positions: { e: `${EPOCH}:3` } });
  later.sub.join("e"); // resumes after the position it was given
  ScriptedSocket.last().open();
  assert.deepEqual(ScriptedSocket.last().sent, [{ type: "join", room: "e", since: `${EPOCH}:3` }]);
  await later.sub.close();
});

test("counts, resets and not-recovered joins reach the callbacks and the getters", async () => {
  const seen = [];
  const { sub } = scripted(["a"], {
    positions: { a: `${EPOCH}:5` },
    onCount: (c) => seen.push(["count", c]),
    onReset: (r) => seen.push(["reset", r]),
    onJoined: (j) => seen.push(["joined", j]),
    onBlob: (b) => seen.push(["blob", b.seq]),
  });
  const ws = ScriptedSocket.last();
  assert.deepEqual(ws.url.searchParams.getAll("since"), [`a:${EPOCH}:5`]);
  ws.open();
  ws.receive({ type: "joined", room: "a", recovered: false, oldest: `${EPOCH}:90` });
  ws.receive({ type: "count", room: "a", viewers: 3 });
  ws.receive({ type: "count", room: "zz", viewers: 9 }); // not ours
  ws.receive(blob("a", 95, 94, [7]));
  ws.receive({ type: "reset", room: "a", oldest: null });
  ws.receive({ type: "count", room: "a", viewers: 2 });
  assert.deepEqual(seen, [
    ["joined", { room: "a", recovered: false, oldest: `${EPOCH}:90` }],
    ["reset", { room: "a", oldest: `${EPOCH}:90`, reason: "not_recovered" }],
    ["count", { room: "a", viewers: 3 }],
    ["blob", 95],
    ["reset", { room: "a", oldest: null, reason: "reset" }],
    ["count", { room: "a", viewers: 2 }],
  ]);
  assert.deepEqual(sub.counts, { a: 2 });
  assert.deepEqual(sub.recovered, { a: false });
  assert.equal(sub.stats.gaps, 0, "the blob after recovered:false starts a new chain");
  assert.equal(sub._queue.length, 0, "with onBlob and no iterator nothing piles up");
  sub.leave("a");
  assert.deepEqual(sub.counts, {});
  await sub.close();
});

test("a silent connection is pinged, then dropped and replaced", async () => {
  const { sub } = scripted(["a"], { pingIntervalMs: 100 });
  const ws = ScriptedSocket.last();
  ws.open();
  await waitFor("a ping", () => ws.sent.some((m) => m.type === "ping"));
  await waitFor("a new connection", () => ScriptedSocket.all.length === 2, 2000);
  assert.equal(ws.readyState, 3);
  const next = ScriptedSocket.last();
  next.open();
  for (let i = 0; i < 15; i++) { // 300 ms, past the 200 that drop a silent one
    await new Promise((r) => setTimeout(r, 20));
    next.receive({ type: "pong" }); // anything heard keeps it alive
  }
  assert.equal(ScriptedSocket.all.length, 2);
  await sub.close();
});

test("a token function is asked for every connection; 4002 then comes back with a new one", async () => {
  let n = 0;
  const { sub } = scripted(["a"], { token: async () => `t${++n}` });
  await waitFor("the first socket", () => ScriptedSocket.all.length === 1);
  assert.equal(ScriptedSocket.last().url.searchParams.get("token"), "t1");
  ScriptedSocket.last().open();
  ScriptedSocket.last().serverClose(4002, "token_expired");
  await waitFor("the second socket", () => ScriptedSocket.all.length === 2);
  assert.equal(ScriptedSocket.last().url.searchParams.get("token"), "t2");
  await sub.close();

  const fixed = scripted(["a"], { token: "t" });
  ScriptedSocket.last().open();
  ScriptedSocket.last().serverClose(4002, "token_expired");
  assert.equal(fixed.sub.state, "closed", "the same token would be refused again");
});

test("breaking out of the loop closes the subscription; without a WebSocket it says so", async () => {
  const { sub } = scripted(["a"]);
  const ws = ScriptedSocket.last();
  ws.open();
  queueMicrotask(() => ws.receive(blob("a", 1, 0, [0])));
  for await (const b of sub) {
    assert.equal(b.seq, 1);
    break;
  }
  assert.equal(sub.state, "closed");
  assert.equal(ws.readyState, 3);

  const saved = globalThis.WebSocket;
  globalThis.WebSocket = undefined;
  try {
    assert.throws(() => subscribe("ws://h/ws", ["a"]), /options\.WebSocket/);
  } finally {
    globalThis.WebSocket = saved;
  }
});
