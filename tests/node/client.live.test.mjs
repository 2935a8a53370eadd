// /client.js against a live gateway (two workers), run by tests/e2e/test_clientjs.py, which
// passes ROOMCAST_WS_URL and ROOMCAST_CONTROL: an HTTP endpoint that produces events to Kafka
// (POST /produce), publishes raw blobs to NATS (POST /publish) and SIGKILLs a gateway worker
// (POST /kill). Node 20 has no global WebSocket: the tests pass the `ws` package's class.
import assert from "node:assert/strict";
import { randomBytes } from "node:crypto";
import { afterEach, test } from "node:test";

import WebSocket from "ws";

import { subscribe } from "../../services/gateway/src/roomcast/gateway/static/client.js";

const WS_URL = process.env.ROOMCAST_WS_URL;
const CONTROL = process.env.ROOMCAST_CONTROL;
assert.ok(WS_URL && CONTROL, "run by tests/e2e/test_clientjs.py (ROOMCAST_WS_URL, ROOMCAST_CONTROL)");
const POSITION = /^\d+:\d+$/;

// `ws` as a browser would use it, remembering which gateway worker answered each socket.
class Spy extends WebSocket {
  static sockets = [];

  constructor(url, ...rest) {
    super(url, ...rest);
    this.worker = null;
    this.on("upgrade", (res) => {
      this.worker = res.headers["x-roomcast-worker"];
    });
    Spy.sockets.push(this);
  }
}

// Every subscription a test opens is closed after it, passed or failed, so Node can exit.
const opened = [];
afterEach(async () => {
  await Promise.all(opened.splice(0).map((sub) => sub.close()));
});
const TIMEOUT = { timeout: 60000 };

const unique = (prefix) => `${prefix}-${randomBytes(4).toString("hex")}`;
const range = (from, to) => Array.from({ length: to - from }, (_, i) => from + i);

async function control(path, body) {
  const res = await fetch(new URL(path, CONTROL), { method: "POST", body: JSON.stringify(body) });
  const answer = await res.json();
  assert.equal(res.status, 200, `${path}: ${JSON.stringify(answer)}`);
  return answer;
}

const produce = (room, from, to, intervalMs = 0) =>
  control("/produce", { room, events: range(from, to).map((n) => ({ n })), interval_ms: intervalMs });

async function waitFor(what, cond, ms = 20000) {
  const deadline = Date.now() + ms;
  while (!cond()) {
    if (Date.now() > deadline) throw new Error(`timed out after ${ms} ms waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 10));
  }
}

// A subscription with everything it reports written down.
function watch(rooms, options = {}) {
  const seen = { events: {}, blobs: [], joined: [], resets: [], states: [], counts: [] };
  const mark = Spy.sockets.length;
  const sub = subscribe(WS_URL, rooms, {
    WebSocket: Spy,
    onBlob: (b) => {
      seen.blobs.push(b);
      (seen.events[b.room] ??= []).push(...b.events.map((e) => e.n));
    },
    onJoined: (j) => seen.joined.push(j),
    onReset: (r) => seen.resets.push(r),
    onState: (s) => seen.states.push(s),
    onCount: (c) => seen.counts.push(c),
    ...options,
  });
  opened.push(sub);
  // Its sockets, oldest first (a token function runs before each is made).
  const sockets = () => Spy.sockets.slice(mark);
  const joined = (room) => waitFor(`joined ${room}`, () => seen.joined.some((j) => j.room === room));
  return { sub, seen, sockets, joined };
}

test("blobs arrive in order through the async iterator, each with its position", TIMEOUT, async () => {
  const room = unique("order");
  let producing = null;
  const sub = subscribe(WS_URL, [room], {
    WebSocket: Spy,
    onJoined: () => {
      producing ??= produce(room, 0, 40, 5);
    },
  });
  opened.push(sub);
  const events = [];
  const positions = [];
  for await (const blob of sub) {
    assert.equal(blob.room, room);
    events.push(...blob.events.map((e) => e.n));
    positions.push(blob.position);
    if (events.at(-1) === 39) break; // leaving the loop closes the subscription
  }
  await producing;
  assert.deepEqual(events, range(0, 40));
  assert.ok(positions.length < 40, "merged: fewer blobs than events");
  assert.ok(positions.every((p) => POSITION.test(p)), `positions: ${positions}`);
  const seqs = positions.map((p) => Number(p.split(":")[1]));
  assert.deepEqual(seqs, [...seqs].sort((a, b) => a - b));
  assert.equal(sub.positions[room], positions.at(-1));
  assert.equal(sub.state, "closed");
  assert.equal(Spy.sockets.at(-1).readyState, WebSocket.CLOSED);
});

test("kill -9 of the serving worker: reconnects to the other, every event exactly once", TIMEOUT, async () => {
  const room = unique("kill");
  // The token function runs before every connection: holding it keeps the client away until
  // what it missed is surely in the history (so only a resume can bring it), a few hundred ms,
  // well before the supervisor has the killed worker back (0.5 s, then a Python start).
  let gate = Promise.resolve("");
  let release = null;
  const { sub, seen, sockets, joined } = watch([room], { token: () => gate });
  await joined(room);
  const [socket] = sockets();
  const first = socket.worker;
  assert.ok(first === "0" || first === "1", `worker ${first}`);
  await produce(room, 0, 30);
  await waitFor("30 events", () => (seen.events[room] ?? []).includes(29));
  gate = new Promise((resolve) => {
    release = () => resolve("");
  });
  const producing = produce(room, 30, 100, 2); // events in flight while the worker dies
  await control("/kill", { worker: first });
  // The kernel closes a killed process's sockets; the client hears it a moment later.
  await waitFor("the loss noticed", () => sub.state === "recovering");
  const { offsets } = await producing;
  await control("/stored", { room, offset: offsets.at(-1) });
  assert.equal(sub.state, "recovering", "held back by the token function");
  assert.ok(seen.events[room].length < 100, "the kill came before the last events");
  release();
  await waitFor("live again", () => sub.state === "live");
  await produce(room, 100, 110);
  await waitFor("the last event", () => (seen.events[room] ?? []).includes(109), 30000);
  assert.deepEqual(seen.events[room], range(0, 110), "every event once, in order");
  assert.equal(sockets().length, 2);
  const again = sockets()[1];
  assert.notEqual(again.worker, first, "resumed on the other worker");
  const since = new URL(again.url).searchParams.getAll("since");
  assert.equal(since.length, 1);
  assert.match(since[0], new RegExp(`^${room}:\\d+:\\d+$`));
  assert.equal(sub.recovered[room], true);
  assert.deepEqual(seen.states.filter((s, i) => s !== seen.states[i - 1]), [
    "live",
    "recovering",
    "live",
  ]);
  assert.equal(sub.stats.connects, 2);
  assert.equal(sub.stats.gaps, 0);
  assert.deepEqual(seen.resets, []);
  await sub.close();
  assert.equal(again.readyState, WebSocket.CLOSED);
});

test("repeated events and repeated blobs are dropped", TIMEOUT, async () => {
  const room = unique("dup");
  const { sub, seen, joined } = watch([room]);
  await joined(room);
  const raw = (offsets, extra = "") =>
    `{"type":"blob",${extra}"room":"${room}","partition":0,"offsets":${JSON.stringify(offsets)},` +
    `"events":[${offsets.map((o) => `{"n":${o}}`).join(",")}]}`;
  // A Kafka replay delivers events again, merged into other blobs.
  await control("/publish", {
    room,
    blobs: [raw([0, 1, 2]), raw([1, 2, 3, 4]), raw([4, 5]), raw([2, 3]), raw([6])],
  });
  await waitFor("the last event", () => (seen.events[room] ?? []).includes(6));
  assert.deepEqual(seen.events[room], range(0, 7));
  assert.equal(sub.stats.duplicateEvents, 2 + 1 + 2);
  // A blob delivered twice at the same history position.
  const other = unique("dupseq");
  sub.join(other);
  await joined(other);
  const at = (seq, prev, offset) =>
    `{"type":"blob","epoch":7,"seq":${seq},"prev":${prev},"room":"${other}","partition":0,` +
    `"offsets":[${offset}],"events":[{"n":${offset}}]}`;
  await control("/publish", { room: other, blobs: [at(10, 0, 0), at(10, 0, 0), at(12, 10, 1)] });
  await waitFor("the second blob", () => (seen.events[other] ?? []).includes(1));
  assert.deepEqual(seen.events[other], [0, 1]);
  assert.deepEqual(
    seen.blobs.filter((b) => b.room === other).map((b) => b.position),
    ["7:10", "7:12"],
  );
  assert.equal(sub.positions[other], "7:12");
  await sub.close();
});

test("a new subscription resumes after the positions of a closed one", TIMEOUT, async () => {
  const room = unique("resume");
  const one = watch([room]);
  await one.joined(room);
  await produce(room, 0, 10);
  await waitFor("event 9", () => (one.seen.events[room] ?? []).includes(9));
  const positions = one.sub.positions;
  assert.match(positions[room], POSITION);
  await one.sub.close();
  const { offsets } = await produce(room, 10, 25); // while nobody watches
  await control("/stored", { room, offset: offsets.at(-1) });
  const two = watch([room], { positions });
  await two.joined(room);
  await produce(room, 25, 30);
  await waitFor("event 29", () => (two.seen.events[room] ?? []).includes(29));
  assert.deepEqual(two.seen.events[room], range(10, 30), "the missed events, then live ones");
  assert.deepEqual(two.seen.joined, [{ room, recovered: true, oldest: null }]);
  assert.equal(two.sub.recovered[room], true);
  await two.sub.close();
});

test("a position the history cannot serve says recovered:false and resets the room", TIMEOUT, async () => {
  const room = unique("lost");
  const { sub, seen, joined } = watch([room], { positions: { [room]: "1:1" } });
  await joined(room);
  assert.equal(sub.recovered[room], false);
  assert.deepEqual(seen.resets.map((r) => [r.room, r.reason]), [[room, "not_recovered"]]);
  await produce(room, 0, 3);
  await waitFor("event 2", () => (seen.events[room] ?? []).includes(2));
  assert.deepEqual(seen.events[room], [0, 1, 2], "live from there on");
  await sub.close();
});

test("viewer counts are pushed and kept per room", TIMEOUT, async () => {
  const room = unique("count");
  const one = watch([room]);
  const two = watch([room]);
  await waitFor("both counting 2", () => one.sub.counts[room] === 2 && two.sub.counts[room] === 2);
  await two.sub.close();
  await waitFor("one counting 1", () => one.sub.counts[room] === 1);
  assert.deepEqual(one.seen.counts.at(-1), { room, viewers: 1 });
  await one.sub.close();
});
