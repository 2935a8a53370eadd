// roomcast viewer client for browsers (a minimal stand-in until the full /client.js lands):
// subscribe(url, rooms, handlers) -> {join, leave, close, positions, counts, state}.
// Reconnects with backoff, resumes each room from its last position (since=ROOM:EPOCH:SEQ) and
// drops events already delivered (per room and partition, the highest offset seen).

export function subscribe(url, rooms, handlers = {}) {
  const wanted = new Set(rooms);
  const positions = new Map(); // room -> "EPOCH:SEQ"
  const highest = new Map(); // "room/partition" -> highest offset delivered
  const counts = new Map(); // room -> viewers
  let state = "connecting";
  let ws = null;
  let closed = false;
  let attempt = 0;
  let timer = null;

  const setState = (s) => {
    if (s === state) return;
    state = s;
    handlers.onState?.(s);
  };

  const connect = () => {
    const u = new URL(url, location.href);
    if (handlers.token) u.searchParams.set("token", handlers.token);
    for (const room of wanted) {
      u.searchParams.append("room", room);
      if (positions.has(room)) u.searchParams.append("since", `${room}:${positions.get(room)}`);
    }
    ws = new WebSocket(u.toString());
    ws.onopen = () => {
      attempt = 0;
      setState("live");
    };
    ws.onmessage = (ev) => {
      let msg;
      try {
        msg = JSON.parse(ev.data);
      } catch {
        return;
      }
      if (msg.type === "blob") {
        if (msg.seq !== undefined) positions.set(msg.room, `${msg.epoch}:${msg.seq}`);
        const key = `${msg.room}/${msg.partition}`;
        const top = highest.get(key) ?? -1;
        const events = [];
        const offsets = [];
        msg.offsets.forEach((o, i) => {
          if (o > top) {
            events.push(msg.events[i]);
            offsets.push(o);
          }
        });
        if (!offsets.length) return;
        highest.set(key, offsets[offsets.length - 1]);
        handlers.onBlob?.({ ...msg, events, offsets });
      } else if (msg.type === "joined") {
        const recovered = typeof msg.recovered === "boolean" ? msg.recovered : null;
        handlers.onJoined?.({ room: msg.room, recovered, oldest: msg.oldest ?? null });
        if (recovered === false) handlers.onReset?.({ ...msg, reason: "not_recovered" });
      } else if (msg.type === "reset") {
        handlers.onReset?.({ ...msg, reason: "reset" });
      } else if (msg.type === "count") {
        counts.set(msg.room, msg.viewers);
        handlers.onCount?.(msg);
      } else if (msg.type === "error") {
        handlers.onError?.(msg);
      }
    };
    ws.onclose = () => {
      ws = null;
      if (closed) return;
      setState("recovering");
      const delay = Math.min(100 * 2 ** attempt, 5000) * (0.5 + Math.random() / 2);
      attempt += 1;
      timer = setTimeout(connect, delay);
    };
  };

  const send = (obj) => {
    if (ws && ws.readyState === WebSocket.OPEN) ws.send(JSON.stringify(obj));
  };

  handlers.onState?.(state);
  connect();
  return {
    join(room) {
      wanted.add(room);
      const msg = { type: "join", room };
      if (positions.has(room)) msg.since = positions.get(room);
      send(msg);
    },
    leave(room) {
      wanted.delete(room);
      send({ type: "leave", room });
    },
    close() {
      closed = true;
      clearTimeout(timer);
      ws?.close(1000);
      setState("closed");
    },
    get positions() {
      return Object.fromEntries(positions);
    },
    get counts() {
      return Object.fromEntries(counts);
    },
    get state() {
      return state;
    },
  };
}
