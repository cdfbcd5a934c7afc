// Refreshes schema/protocol.schema.json from a gateway's `GET /schema`.
//   npm run fetch-schema                       # starts an embedded gateway ($C2S_GATEWAY_BIN or the default build)
//   C2S_SCHEMA_URL=http://host:8080/schema npm run fetch-schema
// Then `npm run gen` regenerates src/generated/protocol.ts.
import { spawn } from 'node:child_process';
import { writeFile } from 'node:fs/promises';
import { homedir } from 'node:os';
import { join } from 'node:path';
import { schemaPath } from './gen-types.mjs';

let url = process.env.C2S_SCHEMA_URL;
let child;
if (!url) {
  const bin = process.env.C2S_GATEWAY_BIN ?? join(homedir(), '.cache/chat2sql-realtime/target/debug/gateway');
  child = spawn(bin, ['--embedded', '--bind', '127.0.0.1:0'], { stdio: ['ignore', 'pipe', 'inherit'], env: { ...process.env, C2S_LOG: 'warn' } });
  const port = await new Promise((resolve, reject) => {
    let out = '';
    child.stdout.on('data', (d) => {
      out += d;
      const m = out.match(/LISTENING 127\.0\.0\.1:(\d+)/);
      if (m) resolve(m[1]);
    });
    child.once('exit', (code) => reject(new Error(`gateway exited with ${code}`)));
  });
  url = `http://127.0.0.1:${port}/schema`;
}
try {
  const res = await fetch(url);
  if (!res.ok) throw new Error(`GET ${url}: ${res.status}`);
  const doc = await res.json();
  await writeFile(schemaPath, JSON.stringify(doc, null, 2) + '\n');
  console.log(`wrote ${schemaPath} from ${url}`);
} finally {
  child?.kill('SIGKILL');
}
