// Failure handling against real embedded gateways: SIGKILL + restart on the same port, offline queue,
// resume of a stream the restarted gateway no longer knows, heartbeat timeouts (SIGSTOP), timers after close().
import WebSocket from 'ws';
import { join } from 'node:path';
import { afterAll, afterEach, beforeAll, describe, expect, it, vi } from 'vitest';
import { RealtimeClient, type ConnectionStatus, type ServerFrame } from '../src/index.js';
import { startEmbedded, tempDir, type Gateway } from './helpers/processes.js';
import { nextStatus, rowsQuery, sleep, until } from './helpers/wait.js';

const dir = tempDir();
let gw: Gateway;
let port = 0;
const clients: RealtimeClient[] = [];

async function restart(): Promise<void> {
  gw = await startEmbedded({ port, sqlitePath: join(dir.path, 'demo.db') });
}

beforeAll(async () => {
  gw = await startEmbedded({ sqlitePath: join(dir.path, 'demo.db') });
  port = gw.port;
});
afterEach(async () => {
  await Promise.all(clients.splice(0).map((c) => c.close()));
  if (gw.proc.exitCode !== null || gw.proc.signalCode !== null) await restart();
});
afterAll(async () => {
  await gw?.kill();
  dir.remove();
});

function client(extra: Partial<ConstructorParameters<typeof RealtimeClient>[0]> = {}): RealtimeClient {
  const c = new RealtimeClient({
    url: gw.url,
    path: '/ws/query',
    user: `u-${Math.random().toString(36).slice(2)}`,
    WebSocket,
    reconnect: { baseMs: 100, maxMs: 800 },
    ...extra,
  });
  clients.push(c);
  return c;
}

describe('reconnect', () => {
  it('after SIGKILL: reconnecting with growing, capped backoff, then open again on the restarted gateway', async () => {
    const c = client();
    await nextStatus(c, 'open');
    const statuses: ConnectionStatus[] = [];
    c.on('status', (s) => statuses.push(s));
    await gw.kill('SIGKILL');
    await until(() => statuses.filter((s) => s.state === 'reconnecting').length >= 4, 15_000, '4 retries');
    await restart();
    await nextStatus(c, 'open');
    const retries = statuses.filter((s): s is Extract<ConnectionStatus, { state: 'reconnecting' }> => s.state === 'reconnecting');
    expect(retries[0]!.code).toBe(1006);
    expect(retries.map((r) => r.attempt).slice(0, 4)).toEqual([1, 2, 3, 4]);
    for (const r of retries) expect(r.delayMs).toBeLessThanOrEqual(Math.min(800, 100 * 2 ** (r.attempt - 1)));
    expect(statuses.at(-1)!.state).toBe('open');
    expect(c.stats.reconnects).toBe(1);
    // and it works
    expect((await c.executeQuery('SELECT 1 AS one').done).status).toBe('completed');
  });

  it('offline queue: a query sent while the gateway is down runs exactly once after it is back', async () => {
    const c = client();
    await nextStatus(c, 'open');
    const frames: ServerFrame[] = [];
    c.on('message', (f) => frames.push(f));
    await gw.kill('SIGKILL');
    await nextStatus(c, 'reconnecting');
    const handle = c.executeQuery('SELECT count(*) AS n FROM orders');
    const other = c.executeQuery('SELECT count(*) AS n FROM products');
    expect(c.queuedCount).toBe(2);
    expect(handle.state.status).toBe('pending');
    await restart();
    const [a, b] = await Promise.all([handle.done, other.done]);
    expect(a.status).toBe('completed');
    expect(b.status).toBe('completed');
    expect(c.queuedCount).toBe(0);
    await sleep(200);
    expect(frames.filter((f) => f.type === 'ack')).toHaveLength(2);
    expect(frames.filter((f) => f.type === 'query_started')).toHaveLength(2);
    const rows = frames.flatMap((f) => (f.type === 'data_chunk' ? f.payload.data : []));
    expect(rows).toHaveLength(2); // both ran concurrently: any order
    expect(rows).toEqual(expect.arrayContaining([{ n: 1000 }, { n: 20 }]));
  });

  it('the offline queue is bounded; a query cancelled before it was sent never goes out', async () => {
    const c = client({ offlineQueueLimit: 2, autoConnect: false });
    const a = c.executeQuery('SELECT 1');
    c.executeQuery('SELECT 2');
    const third = c.executeQuery('SELECT 3');
    const out = await third.done;
    expect(out.status).toBe('rejected');
    if (out.status === 'rejected') expect(out.error.code).toBe('queue_full');
    await a.cancel();
    expect((await a.done).status).toBe('cancelled');
    expect(c.queuedCount).toBe(1);
  });

  it('resume after a restart that lost the execution surfaces not_found cleanly (outcome lost)', async () => {
    const c = client();
    const handle = c.executeQuery(rowsQuery(3_000_000), { chunkSize: 50, buffer: false });
    await until(() => handle.state.rowsReceived > 0, 10_000, 'first rows');
    const lost: string[] = [];
    c.on('stream_lost', ({ executionId, error }) => lost.push(`${executionId}:${error.code}`));
    await gw.kill('SIGKILL');
    await restart();
    const outcome = await handle.done;
    expect(outcome.status).toBe('lost');
    if (outcome.status === 'lost') expect(outcome.error.code).toBe('not_found');
    expect(lost).toEqual([`${handle.executionId}:not_found`]);
    expect(c.isOpen).toBe(true);
  });

  it('gives up after maxAttempts and reports closed', async () => {
    const c = client({ reconnect: { baseMs: 20, maxMs: 40, maxAttempts: 3 } });
    await nextStatus(c, 'open');
    await gw.kill('SIGKILL');
    const closed = await nextStatus(c, 'closed');
    expect(closed.reason).toMatch(/gave up after 3/);
    expect(c.activeTimerCount).toBe(0);
  });
});

describe('heartbeat', () => {
  it('a missed pong (gateway frozen with SIGSTOP) drops the socket and reconnects; back after SIGCONT', async () => {
    const c = client({ heartbeat: { intervalMs: 200, pongTimeoutMs: 400 }, connectTimeoutMs: 500 });
    await nextStatus(c, 'open');
    await until(() => c.latency.received > 0, 5_000, 'a pong');
    gw.proc.kill('SIGSTOP');
    try {
      const retry = await nextStatus(c, 'reconnecting', 5_000);
      expect(retry.reason).toMatch(/no pong/);
      expect(c.latency.lost).toBeGreaterThan(0);
    } finally {
      gw.proc.kill('SIGCONT');
    }
    await nextStatus(c, 'open', 10_000);
    expect(c.stats.reconnects).toBeGreaterThanOrEqual(1);
  });
});

describe('timers', () => {
  it('close() clears every timer, also in the middle of reconnecting', async () => {
    const c = client({ heartbeat: { intervalMs: 100, pongTimeoutMs: 1000 } });
    await nextStatus(c, 'open');
    expect(c.activeTimerCount).toBeGreaterThan(0); // heartbeat
    await gw.kill('SIGKILL');
    await nextStatus(c, 'reconnecting');
    expect(c.activeTimerCount).toBeGreaterThan(0); // the reconnect timer
    await c.close();
    expect(c.activeTimerCount).toBe(0);
    expect(c.status.state).toBe('closed');
  });

  it('with fake timers: nothing is pending after close() of an open client (heartbeat, pong, ws internals)', async () => {
    vi.useFakeTimers({ toFake: ['setTimeout', 'clearTimeout', 'setInterval', 'clearInterval'] });
    try {
      const c = client({ heartbeat: { intervalMs: 1000, pongTimeoutMs: 500 } });
      await new Promise<void>((resolve) => c.on('status', (s) => s.state === 'open' && resolve()));
      expect(vi.getTimerCount()).toBeGreaterThan(0);
      const handle = c.executeQuery('SELECT 1 AS x');
      await handle.done;
      await c.close();
      expect(vi.getTimerCount()).toBe(0);
    } finally {
      vi.useRealTimers();
    }
  });
});
