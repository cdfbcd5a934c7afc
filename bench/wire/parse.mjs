// How lean is our chat_message frame on the wire next to a Socket.IO event, in bytes and client parse time?
//
// usage: node parse.mjs [captured-frame.json] [--iters N] [--rounds R]
//
// A  ours, as the gateway sends it (the captured frame; content set to a 15-digit "t=…" like the load generator's)
// B  ours, with only the fields PROTOCOL.md requires (payload.sessionId and message.authorName dropped)
// C  Socket.IO: what socket.io-parser's Encoder makes of io.to(room).emit("chat_message", {id, content, authorId,
//    timestamp}) (type EVENT, nsp "/"), behind Engine.IO's 1-byte message prefix "4", as it goes in a WebSocket frame
//
// Client parse, as a browser / Node client does it: A and B `JSON.parse(text)`; C strips the Engine.IO prefix
// (engine.io-parser's decodePacket: charAt(0) then substring(1)) and feeds socket.io-parser's Decoder, which emits
// `decoded`. Each variant reads message.content into a sink so nothing is optimised away. Every iteration parses a
// different string from a pool (fresh text, as from a socket), the same contents for all three variants.
import { readFileSync } from "node:fs";
import { Encoder, Decoder, PacketType, protocol } from "socket.io-parser";

// The chat_message frame captured from /work/bin-direct/gateway (insecure mode, ?user=u1&name=Ann), byte for byte.
const CAPTURED =
  '{"type":"chat_message","payload":{"sessionId":"s1","message":{"id":"m1","content":"t=123456789","authorId":"u1#8a4dccf7","authorName":"Ann","timestamp":1796226911554}},"seq":2}';

const args = process.argv.slice(2);
let iters = 2_000_000, rounds = 5, file = null;
for (let i = 0; i < args.length; i++) {
  if (args[i] === "--iters") iters = Number(args[++i]);
  else if (args[i] === "--rounds") rounds = Number(args[++i]);
  else file = args[i];
}
const captured = file ? readFileSync(file, "utf8").replace(/\n$/, "") : CAPTURED;
const frame = JSON.parse(captured);
if (JSON.stringify(frame) !== captured) throw new Error("captured frame does not round-trip through JSON.stringify");
if (frame.type !== "chat_message") throw new Error(`not a chat_message frame: ${frame.type}`);
const m = frame.payload.message;

// Builders: the same message (id, content, authorId, timestamp, and what our frame carries) in each wire form.
const ours = (content) => {
  const f = structuredClone(frame);
  f.payload.message.content = content;
  return JSON.stringify(f);
};
const oursMinimal = (content) => {
  const f = structuredClone(frame);
  delete f.payload.sessionId;
  delete f.payload.message.authorName;
  f.payload.message.content = content;
  return JSON.stringify(f);
};
const encoder = new Encoder();
const sio = (content) => {
  const packets = encoder.encode({
    type: PacketType.EVENT,
    nsp: "/",
    data: ["chat_message", { id: m.id, content, authorId: m.authorId, timestamp: m.timestamp }],
  });
  if (packets.length !== 1) throw new Error("expected a single (non-binary) packet");
  return "4" + packets[0]; // Engine.IO MESSAGE prefix
};

const POOL = 4096;
const contentAt = (i) => "t=" + String(100000000000000 + i * 7919); // 15 digits
const variants = [
  { name: "A ours as sent", build: ours },
  { name: "B ours spec-minimal", build: oursMinimal },
  { name: "C socket.io 42[...]", build: sio },
].map((v) => ({ ...v, pool: Array.from({ length: POOL }, (_, i) => v.build(contentAt(i))) }));

// ---- bytes --------------------------------------------------------------------------------------------------
const bytes = (s) => Buffer.byteLength(s, "utf8");
// RFC 6455 header of an unmasked server -> client frame: 2 bytes up to 125 payload bytes, 4 up to 65535.
const wsHeader = (n) => (n <= 125 ? 2 : n <= 65535 ? 4 : 10);
console.log(`node ${process.version}, socket.io-parser protocol ${protocol}, ${iters} iters x ${rounds} rounds`);
console.log("\nbytes per WebSocket text frame payload:");
console.log(`  captured as sent (content ${JSON.stringify(m.content)}): ${bytes(captured)} B`);
console.log(`    ${captured}`);
for (const v of variants) console.log(`  ${v.name.padEnd(22)} ${String(bytes(v.pool[0])).padStart(4)} B  ${v.pool[0]}`);

// ---- parse --------------------------------------------------------------------------------------------------
let sink = 0;
const runJson = (pool, n) => {
  let s = 0;
  for (let i = 0; i < n; i++) s += JSON.parse(pool[i & (POOL - 1)]).payload.message.content.length;
  return s;
};
const decoder = new Decoder(); // one per connection, as socket.io-client's Manager keeps it
let got = 0;
decoder.on("decoded", (packet) => { got += packet.data[1].content.length; });
const runSio = (pool, n) => {
  got = 0;
  for (let i = 0; i < n; i++) {
    const data = pool[i & (POOL - 1)];
    if (data.charAt(0) !== "4") throw new Error("not an Engine.IO message");
    decoder.add(data.substring(1));
  }
  return got;
};
variants[0].run = runJson;
variants[1].run = runJson;
variants[2].run = runSio;

// Sanity: every variant decodes to the same message.
for (const v of variants) {
  const s = v.run(v.pool, POOL);
  if (s !== variants[0].run(variants[0].pool, POOL)) throw new Error(`${v.name} decodes differently`);
}

for (const v of variants) sink += v.run(v.pool, Math.min(iters, 300_000)); // warm-up
const times = variants.map(() => []);
console.log("\nns/op per round (interleaved A, B, C):");
for (let r = 0; r < rounds; r++) {
  const row = [];
  variants.forEach((v, k) => {
    const t0 = process.hrtime.bigint();
    sink += v.run(v.pool, iters);
    const ns = Number(process.hrtime.bigint() - t0) / iters;
    times[k].push(ns);
    row.push(`${v.name.slice(0, 1)} ${ns.toFixed(1)}`);
  });
  console.log(`  round ${r + 1}: ${row.join("  ")}`);
}
const median = (a) => { const s = [...a].sort((x, y) => x - y); const h = s.length >> 1; return s.length & 1 ? s[h] : (s[h - 1] + s[h]) / 2; };
const cMed = median(times[2]), cBytes = bytes(variants[2].pool[0]);
console.log("\nvariant                payload B  +ws hdr  median ns/op  bytes/C  time/C");
variants.forEach((v, k) => {
  const b = bytes(v.pool[0]), t = median(times[k]);
  console.log(`  ${v.name.padEnd(22)} ${String(b).padStart(6)} ${String(b + wsHeader(b)).padStart(8)} ${t.toFixed(1).padStart(13)} ${(b / cBytes).toFixed(2).padStart(8)} ${(t / cMed).toFixed(2).padStart(7)}`);
});
console.log(`(sink ${sink})`);
