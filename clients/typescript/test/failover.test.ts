// A networked cluster: Redis + PostgreSQL, two gateways sharing a key prefix, one worker. Killing the gateway
// a client is on mid-stream: the client moves to the other gateway and resumes from its last seq, getting
// every row exactly once; a collaboration participant rejoins with afterSeq and gets what it missed; a
// message id re-sent on the other node is deduplicated cluster-wide.
import WebSocket from 'ws';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { CollaborationSession, RealtimeClient, type ExecutionEvent, type ServerFrame } from '../src/index.js';
import { dropPrefix, keyPrefix, startNetworked, startWorker, type Gateway, type Proc } from './helpers/processes.js';
import { nextStatus, sleep, until } from './helpers/wait.js';

const prefix = keyPrefix();
let a: Gateway;
let b: Gateway;
let worker: Proc;

beforeAll(async () => {
  [a, b, worker] = await Promise.all([
    startNetworked(prefix, ['--insecure-no-auth', '--node-id', 'gw-a']),
    startNetworked(prefix, ['--insecure-no-auth', '--node-id', 'gw-b']),
    startWorker(prefix),
  ]);
});
afterAll(async () => {
  await Promise.all([a?.kill(), b?.kill(), worker?.kill()]);
  dropPrefix(prefix);
});

const reconnect = { baseMs: 50, maxMs: 300 };

/** A session of two: Ann on a fresh gateway A (to be killed; she reconnects to B), Bob on B. */
async function annOnAOfTwoAndBobOnB(tag: string) {
  const gwA = await startNetworked(prefix, ['--insecure-no-auth']);
  const sid = `${tag}-${Date.now()}`;
  const ann = new CollaborationSession({ url: [gwA.url, b.url], sessionId: sid, user: 'ann', name: 'Ann', WebSocket, reconnect });
  const bob = new CollaborationSession({ url: b.url, sessionId: sid, user: 'bob', name: 'Bob', WebSocket });
  await until(() => ann.state.participants.length === 2 && bob.state.participants.length === 2, 10_000, 'both joined');
  return { gwA, ann, bob };
}

describe('failover between gateway nodes', () => {
  it('SIGKILL of the gateway mid-stream: resumed on the other node, every row exactly once', async () => {
    const gwA = await startNetworked(prefix, ['--insecure-no-auth', '--node-id', 'gw-a2']);
    const c = new RealtimeClient({ url: [gwA.url, b.url], path: '/ws/query', user: 'failover', WebSocket, reconnect });
    const n = 200_000;
    const events: ExecutionEvent[] = [];
    const handle = c.executeQuery(`SELECT g AS i FROM generate_series(1, ${n}) g`, {
      chunkSize: 200,
      rowFormat: 'arrays',
      onEvent: (e) => events.push(e),
    });
    await until(() => handle.state.rowsReceived >= 2_000, 20_000, 'the first rows');
    const down = nextStatus(c, 'reconnecting');
    await gwA.kill('SIGKILL');
    expect(handle.state.rowsReceived).toBeLessThan(n); // killed mid-stream
    await down;
    const reopened = await nextStatus(c, 'open');
    expect(reopened.url).toBe(b.url);
    const outcome = await handle.done;
    expect(outcome.status).toBe('completed');
    expect(handle.state.rowsReceived).toBeLessThanOrEqual(n);
    const seqs = events.map((e) => e.seq);
    expect(seqs).toEqual(seqs.map((_, i) => i + 1)); // contiguous, no repeats, across the failover
    const values = events.flatMap((e) => (e.type === 'data_chunk' ? (e.payload.data as number[][]).map((r) => r[0]) : []));
    expect(values.length).toBe(n);
    expect(values.every((v, i) => v === i + 1)).toBe(true);
    expect(c.stats.reconnects).toBe(1);
    await c.close();
  });

  it('a consumer that freezes for 7 s (a throttled background tab) slows the stream, then gets every row once', async () => {
    const c = new RealtimeClient({ url: [a.url, b.url], path: '/ws/query', user: 'frozen', WebSocket, reconnect });
    const n = 300_000;
    const events: ExecutionEvent[] = [];
    let frozen = false;
    const handle = c.executeQuery(`SELECT g AS i, md5(g::text) AS h FROM generate_series(1, ${n}) g`, {
      chunkSize: 500,
      rowFormat: 'arrays',
      timeoutMs: 120_000,
      onEvent: (e) => {
        events.push(e);
        if (!frozen && e.type === 'data_chunk' && handle.state.rowsReceived >= 20_000) {
          frozen = true;
          // Nothing runs on this thread for 7 s: no socket read, no timer (the gateway's send timeout is 5 s).
          const until = Date.now() + 7_000;
          while (Date.now() < until) {
            /* frozen */
          }
        }
      },
    });
    const outcome = await handle.done;
    expect(frozen).toBe(true);
    expect(outcome.status).toBe('completed');
    const seqs = events.map((e) => e.seq);
    expect(seqs).toEqual(seqs.map((_, i) => i + 1)); // every event once, in order, across any reconnect
    const values = events.flatMap((e) => (e.type === 'data_chunk' ? (e.payload.data as unknown[][]).map((r) => r[0]) : []));
    expect(values.length).toBe(n);
    expect(values.every((v, i) => v === i + 1)).toBe(true);
    await c.close();
  });

  it('a message id re-sent on the other node is acknowledged duplicate and not run again', async () => {
    const gwA = await startNetworked(prefix, ['--insecure-no-auth']);
    const c = new RealtimeClient({ url: [gwA.url, b.url], path: '/ws/query', user: 'dedup', WebSocket, reconnect });
    const frames: ServerFrame[] = [];
    c.on('message', (f) => frames.push(f));
    const id = `once-${Date.now()}`;
    const first = await c.request('execute_query', { query: 'SELECT 1 AS x' }, { id });
    await until(() => frames.some((f) => f.type === 'query_completed'), 10_000, 'completion');
    const down = nextStatus(c, 'reconnecting');
    await gwA.kill('SIGKILL');
    await down;
    await nextStatus(c, 'open');
    const again = await c.request('execute_query', { query: 'SELECT 1 AS x' }, { id });
    expect(again).toMatchObject({ id, executionId: first.executionId, duplicate: true });
    await new Promise((r) => setTimeout(r, 300));
    expect(frames.filter((f) => f.type === 'query_started')).toHaveLength(1);
    await c.close();
  });

  it('a collaboration participant rejoins on the other node with afterSeq and gets what it missed, once', async () => {
    const { gwA, ann, bob } = await annOnAOfTwoAndBobOnB('fo');
    const chats: string[] = [];
    ann.client.on('chat_message', (p) => chats.push(p.message.id));
    await bob.sendChat('before');
    await until(() => ann.state.chat.length === 1, 5_000, 'first chat');
    const seqBefore = ann.client.sessionSeq!;

    const down = nextStatus(ann.client, 'reconnecting');
    await gwA.kill('SIGKILL');
    await down;
    // While Ann is away (and possibly before she is back):
    const missed = await bob.sendChat('while you were away');
    await bob.updateQuery('SELECT 99');

    // The snapshot of the rejoin has the state; the replay after afterSeq delivers the missed events themselves.
    await until(() => ann.state.joined && ann.state.chat.some((m) => m.id === missed.id), 15_000, 'ann caught up');
    await until(() => chats.includes(missed.id), 5_000, 'the missed chat event replayed');
    expect(ann.client.sessionSeq!).toBeGreaterThan(seqBefore);
    await until(() => ann.state.query === 'SELECT 99', 5_000, 'the query update'); // in the snapshot, or live after it
    expect(ann.state.chat.map((m) => m.content)).toEqual(['before', 'while you were away']);
    expect(new Set(chats).size).toBe(chats.length); // every chat event once
    await Promise.all([ann.close(), bob.close()]);
  });

  it('a rejoin on the other node takes over its own ghost at once: one participant_left (replaced), one participant_joined', async () => {
    // The rejoin presents its previous participantId: its entry is taken over at once (`replaced`), before
    // the dead node is reaped (`node_lost`, 2 s), and the reaper later finds nothing left to say.
    const { gwA, ann, bob } = await annOnAOfTwoAndBobOnB('ghost');
    const oldId = ann.state.participantId!;
    const left: { participantId: string; reason: string }[] = [];
    const joined: string[] = [];
    bob.client.on('participant_left', (p) => left.push({ participantId: p.participantId, reason: p.reason }));
    bob.client.on('participant_joined', (p) => joined.push(p.participant.id));

    await gwA.kill('SIGKILL');
    await until(() => ann.state.joined && ann.state.participantId !== oldId, 15_000, 'ann rejoined on B');
    const newId = ann.state.participantId!;
    await until(() => joined.includes(newId), 5_000, 'bob saw the rejoin');
    expect(left).toEqual([{ participantId: oldId, reason: 'replaced' }]);
    expect(joined).toEqual([newId]);
    await until(() => bob.state.participants.length === 2, 2_000, 'two participants at bob');
    expect(bob.state.participants.map((p) => p.id).sort()).toEqual([newId, bob.state.participantId!].sort());
    expect(ann.state.participants.map((p) => p.id)).not.toContain(oldId);
    // Once the dead node is reaped (presence TTL 2 s): still exactly one participant_left for the ghost.
    await sleep(3_000);
    expect(left).toEqual([{ participantId: oldId, reason: 'replaced' }]);
    expect(bob.state.participants).toHaveLength(2);
    await Promise.all([ann.close(), bob.close()]);
  });
});
