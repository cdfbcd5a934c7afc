// A JWT-enabled networked gateway (Redis): no token → `error unauthorized` + close 4001 → no reconnect.
import WebSocket from 'ws';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { RealtimeClient, type ConnectionStatus, type ServerFrame } from '../src/index.js';
import { signHs256 } from './helpers/jwt.js';
import { dropPrefix, keyPrefix, startNetworked, type Gateway } from './helpers/processes.js';
import { nextStatus, sleep } from './helpers/wait.js';

const SECRET = 's3cret';
const prefix = keyPrefix();
let gw: Gateway;
beforeAll(async () => {
  gw = await startNetworked(prefix, ['--jwt-secret', SECRET]);
});
afterAll(async () => {
  await gw?.kill();
  dropPrefix(prefix);
});

describe('authentication', () => {
  it('closes with 4001 without a token, and the client does not reconnect', async () => {
    let sockets = 0;
    const Counting = class extends WebSocket {
      constructor(url: string) {
        super(url);
        sockets++;
      }
    };
    const c = new RealtimeClient({ url: gw.url, path: '/ws/query', WebSocket: Counting, reconnect: { baseMs: 10, maxMs: 20 } });
    const statuses: ConnectionStatus[] = [];
    const errors: ServerFrame[] = [];
    c.on('status', (s) => statuses.push(s));
    c.on('error', (_p, f) => errors.push(f));
    const closed = await nextStatus(c, 'closed');
    expect(closed.code).toBe(4001);
    expect(errors[0]?.payload).toMatchObject({ code: 'unauthorized' });
    await sleep(300); // far beyond the backoff: any retry would have happened
    expect(sockets).toBe(1);
    // The gateway completes the upgrade (so a browser sees the close code), then closes: no 'reconnecting'.
    expect(statuses.map((s) => s.state)).toEqual(['open', 'closed']);
    expect(c.activeTimerCount).toBe(0);
    const handle = c.executeQuery('SELECT 1'); // queued: would go out on an explicit connect()
    expect(handle.state.status).toBe('pending');
    await c.close();
    expect((await handle.done).status).toBe('lost');
  });

  it('getToken supplies a JWT (as access_token) on every connection attempt', async () => {
    let calls = 0;
    const c = new RealtimeClient({
      url: gw.url,
      path: '/ws/monitoring',
      WebSocket,
      getToken: async () => {
        calls++;
        return signHs256({ sub: 'alice', name: 'Alice' }, SECRET);
      },
    });
    await nextStatus(c, 'open');
    const rtt = await c.ping();
    expect(rtt).toBeGreaterThanOrEqual(0);
    expect(calls).toBe(1);
    await c.close();
  });
});
