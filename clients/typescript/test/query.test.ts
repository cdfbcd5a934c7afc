// Queries against a real embedded gateway: streaming, seq, iterator, cancel, idempotent ids, errors.
import WebSocket from 'ws';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { DEFAULT_BUFFER_LIMIT, RealtimeClient, RowStore, type ExecutionEvent, type ServerFrame } from '../src/index.js';
import { startEmbedded, type Gateway } from './helpers/processes.js';
import { nextStatus, rowsQuery } from './helpers/wait.js';

let gw: Gateway;
beforeAll(async () => {
  gw = await startEmbedded();
});
afterAll(async () => {
  await gw?.kill();
});

function client(path = '/ws/query', user = `u-${Math.random().toString(36).slice(2)}`): RealtimeClient {
  return new RealtimeClient({ url: gw.url, path, user, WebSocket });
}

describe('queries', () => {
  it('streams every row of a large result with contiguous seq, through the async iterator', async () => {
    const c = client();
    const n = 20_000;
    const handle = c.executeQuery(rowsQuery(n), { chunkSize: 500 });
    const events: ExecutionEvent[] = [];
    for await (const event of handle) events.push(event);
    const outcome = await handle.done;
    expect(outcome.status).toBe('completed');
    expect(events.map((e) => e.seq)).toEqual(events.map((_, i) => i + 1));
    expect(events[0]!.type).toBe('query_started');
    expect(events.at(-1)!.type).toBe('query_completed');
    const rows = events.flatMap((e) => (e.type === 'data_chunk' ? e.payload.data : [])) as Array<{ i: number }>;
    expect(rows).toHaveLength(n);
    expect(rows[0]).toEqual({ i: 1 });
    expect(rows.every((r, idx) => r.i === idx + 1)).toBe(true);
    expect(handle.state.rowsReceived).toBe(n);
    expect(handle.state.progress).toBe(100);
    if (outcome.status === 'completed') expect(outcome.result.rowCount).toBe(n);
    await c.close();
  });

  it('delivers events by callbacks and into a RowStore; typed handlers on the client', async () => {
    const c = client();
    const chunks: number[] = [];
    const started: string[] = [];
    c.on('query_started', (payload) => started.push(payload.executionId));
    const handle = c.executeQuery('SELECT id, name FROM customers ORDER BY id', {
      chunkSize: 7,
      rowFormat: 'arrays',
      onChunk: (rows) => chunks.push(rows.length),
    });
    const store = new RowStore<[number, string]>();
    store.attach(handle);
    const outcome = await handle.done;
    expect(outcome.status).toBe('completed');
    expect(chunks.reduce((a, b) => a + b, 0)).toBe(50);
    expect(store.rows).toHaveLength(50);
    expect(store.rows[0]![0]).toBe(1);
    expect(store.getSnapshot()).toMatchObject({ completed: true, receivedRows: 50, progress: 100 });
    expect(store.getSnapshot().columns.map((col) => col.name)).toEqual(['id', 'name']);
    expect(started).toEqual([handle.executionId]);
    await c.close();
  });

  it('totalRows is a number from data_stream_start: exact for a small result, an estimate (progress < 100) for a large one', async () => {
    const c = client();
    const small = c.executeQuery(rowsQuery(37), { chunkSize: 500 });
    const smallStore = new RowStore();
    smallStore.attach(small);
    const atStart: Array<{ total: number | null; exact: boolean }> = [];
    small.on('data_stream_start', () => atStart.push({ total: small.state.totalRows, exact: small.state.totalRowsExact }));
    await small.done;
    expect(atStart).toEqual([{ total: 37, exact: true }]);

    const large = c.executeQuery(rowsQuery(5_000), { chunkSize: 500 });
    const store = new RowStore();
    store.attach(large);
    const seen: Array<{ total: number | null; exact: boolean; progress: number }> = [];
    store.subscribe(() => {
      const s = store.getSnapshot();
      if (!s.completed) seen.push({ total: s.totalRows, exact: s.totalRowsExact, progress: s.progress });
    });
    await large.done;
    const streaming = seen.filter((s) => s.total !== null);
    expect(streaming.length).toBeGreaterThan(0);
    // Never null from the start on, above the 500 rows read ahead, and never 100 before the end.
    expect(streaming.every((s) => s.exact === false && (s.total ?? 0) > 500 && s.progress < 100)).toBe(true);
    expect(store.getSnapshot()).toMatchObject({ completed: true, totalRows: 5_000, totalRowsExact: true, progress: 100 });
    await c.close();
  });

  it('cancel stops a running query: outcome cancelled', async () => {
    const c = client();
    // Slow enough to still be running when cancelled.
    const handle = c.executeQuery(rowsQuery(5_000_000) + ' ORDER BY i DESC', { chunkSize: 100, buffer: false });
    await handle.accepted;
    await handle.cancel();
    const outcome = await handle.done;
    expect(outcome.status).toBe('cancelled');
    expect(handle.state.status).toBe('cancelled');
    await c.close();
  });

  it('a repeated client id on one live connection is acknowledged with duplicate:true and runs once', async () => {
    const c = client();
    await nextStatus(c, 'open');
    const frames: ServerFrame[] = [];
    c.on('message', (f) => frames.push(f));
    const id = `dup-${Date.now()}`;
    const first = await c.request('execute_query', { query: 'SELECT 42 AS answer' }, { id });
    const second = await c.request('execute_query', { query: 'SELECT 42 AS answer' }, { id });
    expect(first.duplicate ?? false).toBe(false);
    expect(second).toMatchObject({ id, executionId: first.executionId, duplicate: true });
    await new Promise<void>((resolve) => {
      const check = () => frames.some((f) => f.type === 'query_completed') && resolve();
      c.on('message', check);
      check();
    });
    await new Promise((r) => setTimeout(r, 300));
    const started = frames.filter((f) => f.type === 'query_started');
    const completed = frames.filter((f) => f.type === 'query_completed');
    expect(started).toHaveLength(1); // executed once, and its events delivered once despite the resume
    expect(completed).toHaveLength(1);
    await c.close();
  });

  it('a SQL error ends with outcome error; a refused request with outcome rejected', async () => {
    const c = client();
    const bad = c.executeQuery('SELEC nonsense');
    const outcome = await bad.done;
    expect(outcome.status).toBe('error');
    if (outcome.status === 'error') expect(outcome.error.code).toBeTypeOf('string');
    const empty = c.executeQuery('   ');
    const refused = await empty.done;
    expect(refused.status).toBe('rejected');
    if (refused.status === 'rejected') expect(refused.error.code).toBe('bad_request');
    await expect(empty.accepted).rejects.toMatchObject({ code: 'bad_request' });
    await c.close();
  });

  it('/ws/data: subscribe to an execution from another socket; an unknown one is lost (not_found)', async () => {
    const user = `u-${Math.random().toString(36).slice(2)}`;
    const q = client('/ws/query', user);
    const d = client('/ws/data', user);
    const handle = q.executeQuery(rowsQuery(3000), { chunkSize: 100 });
    const executionId = await handle.accepted;
    const follower = d.subscribe(executionId);
    const store = new RowStore();
    store.attach(follower);
    expect((await follower.done).status).toBe('completed');
    expect(store.rows).toHaveLength(3000);
    const unknown = d.subscribe('00000000-0000-0000-0000-000000000000');
    const lost = await unknown.done;
    expect(lost.status).toBe('lost');
    if (lost.status === 'lost') expect(lost.error.code).toBe('not_found');
    await Promise.all([q.close(), d.close()]);
  });

  it('on/off/once return and honour unsubscribe', async () => {
    const c = client();
    let a = 0;
    let b = 0;
    const offA = c.on('pong', () => a++);
    c.once('pong', () => b++);
    await nextStatus(c, 'open');
    await c.ping();
    await c.ping();
    offA();
    await c.ping();
    expect(a).toBeGreaterThanOrEqual(2);
    expect(a).toBeLessThan(4);
    expect(b).toBe(1);
    expect(c.latency.received).toBeGreaterThanOrEqual(3);
    expect(c.latency.avgRttMs).toBeGreaterThanOrEqual(0);
    await c.close();
  });

  it('the default event buffer is bounded and released when a RowStore or on() consumes the events', async () => {
    const c = client();
    const drain = async (h: ReturnType<RealtimeClient['executeQuery']>) => {
      const seen: ExecutionEvent[] = [];
      for await (const e of h) seen.push(e);
      return seen;
    };
    // A RowStore attached (it listens with on()): the handle keeps no copy of the events for an iterator.
    const stored = c.executeQuery(rowsQuery(5000), { chunkSize: 100 });
    const store = new RowStore();
    store.attach(stored);
    expect((await stored.done).status).toBe('completed');
    expect(store.rows).toHaveLength(5000);
    expect(await drain(stored)).toEqual([]); // nothing was buffered: an iterator starts from now (the end)
    // The same with on().
    const listened = c.executeQuery(rowsQuery(500), { chunkSize: 100 });
    let chunks = 0;
    listened.on('data_chunk', () => chunks++);
    await listened.done;
    expect(chunks).toBe(5);
    expect(await drain(listened)).toEqual([]);

    // Nobody consumes: up to DEFAULT_BUFFER_LIMIT rows are kept for a late iterator…
    expect(DEFAULT_BUFFER_LIMIT).toBe(100_000);
    const small = c.executeQuery(rowsQuery(3000), { chunkSize: 100 });
    await small.done;
    const replayed = await drain(small);
    expect(replayed[0]!.type).toBe('query_started');
    expect(replayed.at(-1)!.type).toBe('query_completed');
    expect(replayed.reduce((n, e) => n + (e.type === 'data_chunk' ? e.payload.data.length : 0), 0)).toBe(3000);
    // …beyond, the buffer is released and a late iterator fails loudly instead of skipping rows.
    const big = c.executeQuery(rowsQuery(DEFAULT_BUFFER_LIMIT + 5000), { chunkSize: 1000 });
    const outcome = await big.done;
    expect(outcome.status).toBe('completed');
    expect(big.state.rowsReceived).toBe(DEFAULT_BUFFER_LIMIT + 5000);
    await expect(drain(big)).rejects.toMatchObject({ name: 'RealtimeError', code: 'buffer_overflow' });

    // An explicit limit is kept even with other consumers; `true` is unbounded.
    const limited = c.executeQuery(rowsQuery(2000), { chunkSize: 100, buffer: 500 });
    limited.on('data_chunk', () => {});
    await limited.done;
    await expect(drain(limited)).rejects.toMatchObject({ code: 'buffer_overflow' });
    const kept = c.executeQuery(rowsQuery(2000), { chunkSize: 100, buffer: true });
    new RowStore().attach(kept);
    await kept.done;
    expect((await drain(kept)).filter((e) => e.type === 'data_chunk')).toHaveLength(20);
    // An iterator started at once gets everything, whatever the buffer.
    const live = c.executeQuery(rowsQuery(2000), { chunkSize: 100, buffer: false });
    expect((await drain(live)).filter((e) => e.type === 'data_chunk')).toHaveLength(20);
    await c.close();
  });
});
