// A viewer on Node's `ws` (permessage-deflate on, as by default): joins the URL's rooms, prints
// each "joined" as a line, then collects COUNT blobs and prints them as one JSON line.
import WebSocket from "ws";

const [url, count] = process.argv.slice(2);
const ws = new WebSocket(url);
const messages = [];
const timer = setTimeout(() => {
  console.error(`timed out with ${messages.length}/${count} blobs`);
  process.exit(2);
}, 15000);
ws.on("message", (data, isBinary) => {
  const text = data.toString("utf8");
  const type = JSON.parse(text).type;
  if (type === "joined") {
    console.log(text);
    return;
  }
  messages.push(text);
  if (messages.length === Number(count)) {
    clearTimeout(timer);
    console.log(JSON.stringify({ extensions: ws.extensions, messages }));
    ws.close(1000);
  }
});
ws.on("error", (err) => {
  console.error(String(err));
  process.exit(1);
});
