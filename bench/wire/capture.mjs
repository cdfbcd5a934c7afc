// Connects to a running gateway's collaboration endpoint, sends one chat_message and writes the
// chat_message frame it gets back, byte for byte, to the file given as argv[3] (stdout if none).
// usage: node capture.mjs ws://127.0.0.1:18950/ws/collaboration/s1?user=u1&name=Ann [out.json]
import { writeFileSync } from "node:fs";
import WebSocket from "ws";

const url = process.argv[2] ?? "ws://127.0.0.1:18950/ws/collaboration/s1?user=u1&name=Ann";
const out = process.argv[3];
const ws = new WebSocket(url);
const timer = setTimeout(() => { console.error("timeout"); process.exit(2); }, 5000);
ws.on("message", (data, isBinary) => {
  const text = data.toString("utf8");
  const msg = JSON.parse(text);
  console.error(`<- ${msg.type} (${Buffer.byteLength(text)} B)`);
  if (msg.type === "session_state") {
    ws.send(JSON.stringify({ type: "chat_message", id: "m1", payload: { message: { id: "m1", content: "t=123456789" } } }));
  } else if (msg.type === "error") {
    console.error(text); process.exit(1);
  } else if (msg.type === "chat_message") {
    if (out) writeFileSync(out, data); else process.stdout.write(text + "\n");
    clearTimeout(timer); ws.close(); 
  }
});
ws.on("error", (e) => { console.error(e.message); process.exit(1); });
