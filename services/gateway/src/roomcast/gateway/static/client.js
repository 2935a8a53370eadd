// roomcast client: watch rooms on a roomcast gateway from a browser (or Node with `ws`).
//
//   import { subscribe } from "/client.js";
//   const sub = subscribe("/ws", ["lobby"], { onCount: ({ room, viewers }) => show(viewers) });
//   for await (const blob of sub) for (const event of blob.events) render(event);
//
// The subscription reconnects on its own (exponential backoff, full jitter) when the connection
// drops or the gateway closes it with a code that says "come back", and resumes each room from
// the last blob it has (`since=ROOM:EPOCH:SEQ`), so nothing is missed. It drops what it has
// already seen: whole blobs by their history position (epoch, seq) and single events by their
// Kafka position (room, partition, offset). Each blob it hands on holds only events not seen
// before, in order. No dependencies; the protocol is in the gateway's docs/protocol.md.

const ROOM = /^[A-Za-z0-9_\-:@=+~]{1,128}$/;
const POSITION = /^(\d{1,19}):(\d{1,19})$/;
const CONNECTING = 0;
const OPEN = 1;
const CLOSED = 3;

/** Close codes after which reconnecting as the same client cannot help (docs: Close codes). */
export const NON_RESUMABLE = Object.freeze([1002, 1007, 1008, 1009, 4001, 4003]);
/** The token expired unrefreshed: come back only with a fresh token. */
const TOKEN_EXPIRED = 4002;

/** Throw a TypeError unless `room` is a valid room name. */
export function checkRoom(room) {
  if (typeof room !== "string" || !ROOM.test(room)) {
    throw new TypeError(
      `not a room name: ${JSON.stringify(room)} (1-128 of A-Z a-z 0-9 _ - : @ = + ~)`,
    );
  }
  return room;
}

/** "EPOCH:SEQ" -> {epoch, seq}; a TypeError if it is not one. */
export function parsePosition(text) {
  const m = typeof text === "string" ? POSITION.exec(text) : null;
  if (m === null) throw new TypeError(`a position is EPOCH:SEQ, got ${JSON.stringify(text)}`);
  return { epoch: Number(m[1]), seq: Number(m[2]) };
}

/** {epoch, seq} -> "EPOCH:SEQ". */
export function formatPosition(position) {
  return `${position.epoch}:${position.seq}`;
}

/** Whether a close with `code` means "reconnect and resume" (1006: lost without a close). */
export function isResumable(code, { canRefreshToken = false } = {}) {
  if (code === TOKEN_EXPIRED) return canRefreshToken;
  return !NON_RESUMABLE.includes(code);
}

/** How long to wait before reconnect attempt `attempt` (0, 1, ...): full jitter, a uniform
 * draw in [0, min(maxMs, initialMs * 2^attempt)), so a restarted gateway's viewers do not all
 * come back in the same instant. */
export function backoffDelay(attempt, initialMs = 250, maxMs = 15000, random = Math.random) {
  const cap = Math.min(maxMs, initialMs * 2 ** Math.min(attempt, 30));
  return random() * cap;
}

/** The viewer URL: `base` (ws:, wss:, http:, https:, or a path on this page's host) with one
 * `room=` per room and one `since=ROOM:EPOCH:SEQ` per room with a position (a Map room ->
 * {epoch, seq}), and `token=` when given. */
export function buildUrl(base, rooms, positions = new Map(), token = "") {
  const page = globalThis.location?.href;
  const url = page === undefined ? new URL(base) : new URL(base, page);
  if (url.protocol === "http:") url.protocol = "ws:";
  if (url.protocol === "https:") url.protocol = "wss:";
  for (const room of rooms) url.searchParams.append("room", room);
  for (const room of rooms) {
    const position = positions.get(room);
    if (position) url.searchParams.append("since", `${room}:${formatPosition(position)}`);
  }
  if (token) url.searchParams.set("token", token);
  return url.href;
}

/** Positions and duplicates (docs: Positions and duplicates), without any I/O.
 *
 * `accept(blob)` returns the blob to hand on (only the events not seen before; the blob itself
 * when all are new) or null when it holds nothing new. */
export class Tracker {
  constructor() {
    /** room -> {epoch, seq}: the last blob of the room. */
    this.positions = new Map();
    /** room -> Map(partition -> highest offset delivered). */
    this.offsets = new Map();
    /** Rooms whose next blob starts a new chain (after `reset` or `recovered:false`). */
    this.unchained = new Set();
    this.stats = { blobs: 0, duplicateBlobs: 0, duplicateEvents: 0, gaps: 0 };
  }

  accept(blob) {
    const room = blob.room;
    const { epoch, seq, prev } = blob;
    let position = "";
    if (typeof seq === "number" && seq > 0) {
      const last = this.positions.get(room);
      if (last !== undefined && last.epoch === epoch) {
        if (seq <= last.seq) {
          this.stats.duplicateBlobs += 1;
          return null;
        }
        if (prev !== last.seq && !this.unchained.has(room)) this.stats.gaps += 1;
      }
      this.unchained.delete(room);
      this.positions.set(room, { epoch, seq });
      position = `${epoch}:${seq}`;
    }
    const offsets = Array.isArray(blob.offsets) ? blob.offsets : [];
    const events = Array.isArray(blob.events) ? blob.events : [];
    let partitions = this.offsets.get(room);
    if (partitions === undefined) {
      partitions = new Map();
      this.offsets.set(room, partitions);
    }
    const seen = partitions.get(blob.partition) ?? -1;
    let first = 0; // events of a room come in offset order: the new ones are a suffix
    while (first < offsets.length && offsets[first] <= seen) first += 1;
    this.stats.duplicateEvents += first;
    if (first === offsets.length) {
      if (offsets.length > 0) this.stats.duplicateBlobs += 1;
      return null;
    }
    partitions.set(blob.partition, offsets[offsets.length - 1]);
    this.stats.blobs += 1;
    if (first === 0) {
      blob.position = position;
      return blob;
    }
    return { ...blob, offsets: offsets.slice(first), events: events.slice(first), position };
  }

  /** The room's history could not be carried on (reset, recovered:false): the next blob
   * starts a new chain, which is not a gap. */
  unchain(room) {
    this.unchained.add(room);
  }

  forget(room) {
    this.positions.delete(room);
    this.unchained.delete(room);
  }
}

function call(callback, ...args) {
  if (typeof callback !== "function") return;
  try {
    callback(...args);
  } catch (err) {
    // An app's handler must not break the connection; its error is still reported.
    queueMicrotask(() => {
      throw err;
    });
  }
}

const decoder = new TextDecoder();

/** A subscription to rooms: see `subscribe`. */
export class Subscription {
  constructor(url, rooms = [], options = {}) {
    const WS = options.WebSocket ?? globalThis.WebSocket;
    if (typeof WS !== "function") {
      throw new TypeError("no WebSocket here: pass one as options.WebSocket (Node: the ws package)");
    }
    buildUrl(url, []); // a URL it cannot use fails here, not on the first connection
    this.url = url;
    this.options = options;
    this._WebSocket = WS;
    this._rooms = new Set();
    this._tracker = new Tracker();
    for (const room of typeof rooms === "string" ? [rooms] : rooms) this._rooms.add(checkRoom(room));
    for (const [room, text] of Object.entries(options.positions ?? {})) {
      this._tracker.positions.set(checkRoom(room), parsePosition(text));
    }
    this._counts = new Map();
    this._recovered = new Map();
    this._initialMs = options.backoffInitialMs ?? 250;
    this._maxMs = options.backoffMaxMs ?? 15000;
    this._openTimeoutMs = options.openTimeoutMs ?? 10000;
    this._pingMs = options.pingIntervalMs ?? 20000;
    this.state = "connecting";
    this.connects = 0; // connections opened
    this.closeCode = null; // why the gateway ended it (state "closed" by a non-resumable close)
    this.closeReason = "";
    this._attempt = 0;
    this._ws = null;
    this._retry = null;
    this._opening = null;
    this._heartbeat = null;
    this._queue = [];
    this._waiters = [];
    this._iterating = false;
    this._error = null;
    this._closing = null;
    this._open();
  }

  /** room -> "EPOCH:SEQ", the last blob of each room (what a resume starts after). */
  get positions() {
    const out = {};
    for (const [room, p] of this._tracker.positions) out[room] = formatPosition(p);
    return out;
  }

  /** room -> viewers, cluster-wide, as last pushed by the gateway. */
  get counts() {
    return Object.fromEntries(this._counts);
  }

  /** room -> the last join's answer: true (resumed with nothing missed), false (not resumed:
   * reload the room's state), null (joined without a position). */
  get recovered() {
    return Object.fromEntries(this._recovered);
  }

  get rooms() {
    return [...this._rooms];
  }

  /** Blobs handed on, duplicates dropped (whole blobs and single events), gaps seen. */
  get stats() {
    return { ...this._tracker.stats, connects: this.connects };
  }

  /** Join `room` after position `since` ("EPOCH:SEQ") if given, else after the position
   * `options.positions` gave for it, else from now on. */
  join(room, since) {
    checkRoom(room);
    const position = since === undefined || since === null ? null : parsePosition(since);
    if (this.state === "closed") throw new Error("subscription is closed");
    this._rooms.add(room);
    if (position !== null) this._tracker.positions.set(room, position);
    this._recovered.delete(room);
    const ws = this._ws;
    if (ws !== null && ws.readyState === OPEN) this._sendJoin(ws, room);
  }

  /** Leave `room`: no more of its blobs, and its position and count are forgotten. */
  leave(room) {
    checkRoom(room);
    this._rooms.delete(room);
    this._tracker.forget(room);
    this._counts.delete(room);
    this._recovered.delete(room);
    const ws = this._ws;
    if (ws !== null && ws.readyState === OPEN) this._send(ws, { type: "leave", room });
  }

  /** Close for good; resolves once the socket is closed (at most ~2 s). */
  close() {
    if (this._closing !== null) return this._closing;
    this._setState("closed");
    this._stopTimers();
    const ws = this._ws;
    this._ws = null;
    this._closing = new Promise((resolve) => {
      if (ws === null || ws.readyState === CLOSED) {
        resolve();
        return;
      }
      const timer = setTimeout(() => {
        ws.terminate?.();
        resolve();
      }, 2000);
      ws.onclose = () => {
        clearTimeout(timer);
        resolve();
      };
      ws.onmessage = null;
      try {
        ws.close(1000);
      } catch {
        clearTimeout(timer);
        resolve();
      }
    });
    this._wake();
    return this._closing;
  }

  /** Blobs as they come (only events not seen before). Leaving the loop closes the
   * subscription; a close the client may not come back from throws (err.code, err.reason). */
  [Symbol.asyncIterator]() {
    this._iterating = true;
    return {
      next: () => {
        if (this._queue.length > 0) return Promise.resolve({ value: this._queue.shift(), done: false });
        if (this.state === "closed") {
          const err = this._error;
          this._error = null;
          return err === null ? Promise.resolve({ value: undefined, done: true }) : Promise.reject(err);
        }
        return new Promise((resolve, reject) => this._waiters.push({ resolve, reject }));
      },
      return: async () => {
        await this.close();
        return { value: undefined, done: true };
      },
      [Symbol.asyncIterator]() {
        return this;
      },
    };
  }

  // ---- the connection -------------------------------------------------------------------------

  async _open() {
    this._retry = null;
    if (this.state === "closed") return;
    let token = this.options.token ?? "";
    if (typeof token === "function") {
      try {
        token = await token();
      } catch (err) {
        this._lost(null, 1006, `no token: ${err}`);
        return;
      }
      if (this.state === "closed") return;
    }
    const rooms = [...this._rooms];
    let ws;
    try {
      ws = new this._WebSocket(buildUrl(this.url, rooms, this._tracker.positions, token));
    } catch (err) {
      this._finish(1006, String(err?.message ?? err));
      return;
    }
    this._ws = ws;
    ws.binaryType = "arraybuffer";
    this._opening = setTimeout(() => {
      if (ws.readyState === CONNECTING) this._drop(ws, "no answer in time");
    }, this._openTimeoutMs);
    ws.onopen = () => {
      if (this._ws !== ws) return;
      clearTimeout(this._opening);
      this.connects += 1;
      this._lastHeard = Date.now();
      this._startHeartbeat(ws);
      // Rooms joined or left while the socket was opening: the URL did not have them.
      for (const room of this._rooms) if (!rooms.includes(room)) this._sendJoin(ws, room);
      for (const room of rooms) if (!this._rooms.has(room)) this._send(ws, { type: "leave", room });
      this._setState("live");
    };
    ws.onmessage = (event) => this._message(ws, event.data);
    ws.onerror = () => {}; // a close event follows, with the code
    ws.onclose = (event) => this._lost(ws, event.code, event.reason ?? "");
  }

  _sendJoin(ws, room) {
    const position = this._tracker.positions.get(room);
    const msg = { type: "join", room };
    if (position !== undefined) msg.since = formatPosition(position);
    this._send(ws, msg);
  }

  _send(ws, msg) {
    try {
      ws.send(JSON.stringify(msg));
    } catch {
      // the socket is going away; its close event reconnects
    }
  }

  /** Give up on a socket that does not answer, and treat it as lost (1006). */
  _drop(ws, why) {
    ws.onclose = null;
    ws.onmessage = null;
    try {
      if (typeof ws.terminate === "function") ws.terminate();
      else ws.close(4000, why);
    } catch {
      // closing a dead socket may throw; it is abandoned either way
    }
    this._lost(ws, 1006, why);
  }

  _lost(ws, code, reason) {
    if (ws !== this._ws) return; // an older socket, or closed by us
    this._ws = null;
    this._stopTimers();
    if (this.state === "closed") return;
    const canRefreshToken = typeof this.options.token === "function";
    if (!isResumable(code, { canRefreshToken })) {
      this._finish(code, reason);
      return;
    }
    const delay = backoffDelay(this._attempt, this._initialMs, this._maxMs);
    this._attempt += 1;
    this._setState("recovering", { code, reason, retryInMs: delay });
    this._retry = setTimeout(() => this._open(), delay);
  }

  _finish(code, reason) {
    this.closeCode = code;
    this.closeReason = reason;
    const err = new Error(`the gateway closed the connection: ${code} ${reason}`.trim());
    err.code = code;
    err.reason = reason;
    this._error = err;
    this._setState("closed", { code, reason });
    this._stopTimers();
    this._closing = Promise.resolve();
    this._wake();
  }

  _startHeartbeat(ws) {
    if (!(this._pingMs > 0)) return;
    // The gateway pings at the WebSocket level, which browsers cannot see: an app-level ping
    // after a quiet interval, and a dead connection (nothing at all for two) is dropped.
    this._heartbeat = setInterval(() => {
      const quiet = Date.now() - this._lastHeard;
      if (quiet >= 2 * this._pingMs) this._drop(ws, "no answer to ping");
      else if (quiet >= this._pingMs) this._send(ws, { type: "ping" });
    }, this._pingMs / 2);
  }

  _stopTimers() {
    clearTimeout(this._retry);
    clearTimeout(this._opening);
    clearInterval(this._heartbeat);
    this._retry = null;
    this._opening = null;
    this._heartbeat = null;
  }

  _setState(state, detail = {}) {
    if (this.state === state && state !== "recovering") return;
    this.state = state;
    call(this.options.onState, state, detail);
  }

  // ---- messages -------------------------------------------------------------------------------

  _message(ws, data) {
    if (ws !== this._ws) return;
    this._lastHeard = Date.now();
    const text = typeof data === "string" ? data : decoder.decode(data);
    let msg;
    try {
      msg = JSON.parse(text);
    } catch {
      return; // the gateway sends only JSON; nothing to act on
    }
    if (msg === null || typeof msg !== "object") return;
    this._attempt = 0; // the connection works: the next loss starts the backoff afresh
    const o = this.options;
    switch (msg.type) {
      case "blob": {
        // Blobs of a room just left may still be on the way; _all reaches everyone unasked.
        if (!this._rooms.has(msg.room) && msg.room !== "_all") break;
        const blob = this._tracker.accept(msg);
        if (blob !== null) this._deliver(blob);
        break;
      }
      case "joined": {
        const recovered = typeof msg.recovered === "boolean" ? msg.recovered : null;
        this._recovered.set(msg.room, recovered);
        call(o.onJoined, { room: msg.room, recovered, oldest: msg.oldest ?? null });
        if (recovered === false) {
          this._tracker.unchain(msg.room);
          call(o.onReset, { room: msg.room, oldest: msg.oldest ?? null, reason: "not_recovered" });
        }
        break;
      }
      case "reset":
        this._tracker.unchain(msg.room);
        call(o.onReset, { room: msg.room, oldest: msg.oldest ?? null, reason: "reset" });
        break;
      case "count":
        if (this._rooms.has(msg.room)) {
          this._counts.set(msg.room, msg.viewers);
          call(o.onCount, { room: msg.room, viewers: msg.viewers });
        }
        break;
      case "error":
        call(o.onError, { code: msg.code, message: msg.message });
        break;
      default: // left, pong, authorized: nothing to do
    }
  }

  _deliver(blob) {
    call(this.options.onBlob, blob);
    if (this._waiters.length > 0) this._waiters.shift().resolve({ value: blob, done: false });
    else if (this._iterating || typeof this.options.onBlob !== "function") this._queue.push(blob);
  }

  _wake() {
    if (this._queue.length > 0) return;
    const waiters = this._waiters;
    this._waiters = [];
    const err = this._error;
    if (err !== null && waiters.length > 0) {
      this._error = null;
      waiters.shift().reject(err);
    }
    for (const w of waiters) w.resolve({ value: undefined, done: true });
  }
}

/** Watch `rooms` on the gateway at `url` ("wss://host/ws", or "/ws" on the page's host).
 *
 * options:
 *   WebSocket        the WebSocket class (default: the global one; Node: `ws`'s)
 *   positions        {room: "EPOCH:SEQ"}: resume these rooms after these positions
 *   token            a viewer token, or a function returning one (or a promise of one), called
 *                    for every connection (with --auth jwt)
 *   onBlob(blob)     each blob with only the events not seen before; `blob.position` is its
 *                    "EPOCH:SEQ" ("" for a blob outside the history)
 *   onJoined({room, recovered, oldest})
 *   onReset({room, oldest, reason})   blobs of the room were lost for good ("reset", or
 *                    "not_recovered" when a resume could not be served): reload the room's state
 *   onCount({room, viewers})
 *   onState(state, {code, reason, retryInMs})  "connecting" | "live" | "recovering" | "closed"
 *   onError({code, message})          an `error` the gateway sent (e.g. "forbidden")
 *   backoffInitialMs (250), backoffMaxMs (15000), openTimeoutMs (10000), pingIntervalMs (20000;
 *   0: off)
 */
export function subscribe(url, rooms = [], options = {}) {
  return new Subscription(url, rooms, options);
}
