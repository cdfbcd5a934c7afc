// Collaboration sessions on a real embedded gateway: two participants, shared text with versions and
// conflicts, chat, cursors, presence, shared executions.
import WebSocket from 'ws';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { CollaborationSession, RowStore, type WebSocketConstructor } from '../src/index.js';
import { FrameGate } from './helpers/gate.js';
import { startEmbedded, type Gateway } from './helpers/processes.js';
import { rowsQuery, sleep, until } from './helpers/wait.js';

let gw: Gateway;
beforeAll(async () => {
  gw = await startEmbedded({ args: ['--cursor-interval-ms', '10'] });
});
afterAll(async () => {
  await gw?.kill();
});

const join = (sessionId: string, user: string, ws: WebSocketConstructor = WebSocket) =>
  new CollaborationSession({ url: gw.url, sessionId, user, name: user.toUpperCase(), WebSocket: ws });

/** Ann, then Bob (through `bobSocket`), both joined and seeing each other. */
async function pair(prefix: string, bobSocket: WebSocketConstructor = WebSocket) {
  const sid = `${prefix}-${Date.now()}-${Math.random().toString(36).slice(2, 6)}`;
  const ann = join(sid, 'ann');
  await until(() => ann.state.joined, 5000, 'ann joined');
  const bob = join(sid, 'bob', bobSocket);
  await until(() => bob.state.joined && ann.state.participants.length === 2, 5000, 'bob joined');
  return { ann, bob };
}

describe('collaboration', () => {
  it('two participants see each other, the shared query, chat and cursors', async () => {
    const sid = `s-${Date.now()}`;
    const ann = join(sid, 'ann');
    await until(() => ann.state.joined, 5000, 'ann joined');
    const bob = join(sid, 'bob');
    await until(() => bob.state.joined && ann.state.participants.length === 2, 5000, 'bob joined');
    expect(bob.state.participants.map((p) => p.userId).sort()).toEqual(['ann', 'bob']);

    expect(await ann.updateQuery('SELECT * FROM orders')).toEqual({ status: 'applied' });
    await until(() => bob.state.query === 'SELECT * FROM orders', 5000, 'bob sees the query');
    expect(bob.state.queryVersion).toBe(1);
    expect(bob.state.queryAuthor).toBe(ann.state.participantId);

    // Both edit version 1 at once: one wins, the other gets a conflict with the winner's text.
    const [a, b] = await Promise.all([ann.updateQuery('SELECT 1'), bob.updateQuery('SELECT 2')]);
    const results = [a.status, b.status].sort();
    expect(results).toEqual(['applied', 'conflict']);
    const conflict = a.status === 'conflict' ? a : b;
    const winner = a.status === 'applied' ? 'SELECT 1' : 'SELECT 2';
    if (conflict.status === 'conflict') expect(conflict).toMatchObject({ currentVersion: 2, currentQuery: winner });
    await until(() => ann.state.queryVersion === 2 && bob.state.queryVersion === 2, 5000, 'version 2');
    expect(ann.state.query).toBe(winner);
    // After a conflict, the loser's next update is based on the version it learnt: it applies.
    const loser = a.status === 'conflict' ? ann : bob;
    expect(await loser.updateQuery(`${winner} -- rebased`)).toEqual({ status: 'applied' });
    await until(() => ann.state.queryVersion === 3 && bob.state.queryVersion === 3, 5000, 'version 3');

    // Rapid typing: updates are serialized, intermediate ones superseded, the last one wins.
    const typed = await Promise.all(['S', 'SE', 'SEL', 'SELE'].map((t) => ann.updateQuery(t)));
    expect(typed[0]).toEqual({ status: 'applied' });
    expect(typed.at(-1)).toEqual({ status: 'applied' });
    await until(() => bob.state.query === 'SELE', 5000, 'bob sees the last keystroke');

    const sent = await bob.sendChat('hello ann');
    expect(sent.duplicate).toBe(false);
    await until(() => ann.state.chat.some((m) => m.id === sent.id), 5000, 'ann sees the chat');
    const msg = ann.state.chat.find((m) => m.id === sent.id)!;
    expect(msg).toMatchObject({ content: 'hello ann', authorId: bob.state.participantId, authorName: 'BOB' });
    await until(() => bob.state.chat.some((m) => m.id === sent.id), 5000, 'bob sees his own chat');
    expect(bob.state.chat.filter((m) => m.id === sent.id)).toHaveLength(1);

    bob.moveCursor({ line: 3, ch: 7 });
    await until(() => ann.state.cursors[bob.state.participantId!], 5000, 'ann sees the cursor');
    expect(ann.state.cursors[bob.state.participantId!]).toEqual({ line: 3, ch: 7 });
    expect(bob.state.cursors[bob.state.participantId!]).toBeUndefined(); // own cursor not echoed

    // A query run in the session reaches every participant.
    const run = ann.executeQuery('SELECT count(*) AS n FROM customers');
    const executionId = await run.accepted;
    await until(() => bob.state.executions.some((e) => e.executionId === executionId), 5000, 'shared_execution');
    expect((await run.done).status).toBe('completed');
    // Bob's socket (another gateway) gets the terminal event on its own schedule, not before Ann's.
    await until(() => bob.client.isStreamDone(executionId), 5000, "bob's stream of the shared execution ends");

    const bobId = bob.state.participantId;
    await bob.close();
    await until(() => ann.state.participants.length === 1, 5000, 'bob left');
    expect(ann.state.participants.some((p) => p.id === bobId)).toBe(false);
    await ann.close();
  });

  it('a late joiner gets the current state from the snapshot', async () => {
    const sid = `late-${Date.now()}`;
    const ann = join(sid, 'ann');
    await until(() => ann.state.joined, 5000, 'joined');
    await ann.updateQuery('SELECT 7');
    await ann.sendChat('first');
    const cat = join(sid, 'cat');
    await until(() => cat.state.joined, 5000, 'cat joined');
    expect(cat.state).toMatchObject({ query: 'SELECT 7', queryVersion: 1 });
    expect(cat.state.chat.map((m) => m.content)).toEqual(['first']);
    expect(cat.client.sessionSeq).toBeGreaterThan(0);
    await Promise.all([ann.close(), cat.close()]);
  });
});

describe('shared executions', () => {
  it('the session attaches a RowStore when shared_execution arrives: events in the same tick are all in the rows', async () => {
    const gate = new FrameGate();
    const { ann, bob } = await pair('burst', gate.WebSocket);
    // Bob's socket delivers shared_execution and every event of the execution in one synchronous burst.
    gate.burst(
      (f) => f.type === 'shared_execution',
      (f) => f.type === 'query_completed' || f.type === 'query_error',
    );
    // What attaching after the current tick (e.g. when React renders next) would get: nothing.
    let late: RowStore | undefined;
    bob.client.on('shared_execution', (p) =>
      queueMicrotask(() => {
        late = new RowStore();
        late.attach(bob.watchExecution(p.executionId, { buffer: false }));
      }),
    );

    const run = ann.executeQuery(rowsQuery(3000), { chunkSize: 100 });
    expect((await run.done).status).toBe('completed');
    const entry = await until(() => bob.latestSharedExecution?.handle.state.outcome && bob.latestSharedExecution, 5000, 'bob saw the end');
    expect(gate.lastBurst).toBeGreaterThan(30); // shared_execution + started + progress + 30 chunks + … in one tick
    expect(entry.executionId).toBe(run.executionId);
    expect(entry.execution).toMatchObject({ authorId: ann.state.participantId, query: rowsQuery(3000) });
    expect(entry.handle.state).toMatchObject({ status: 'completed', rowsReceived: 3000, chunksReceived: 30 });
    expect(entry.rows!.rows).toHaveLength(3000);
    expect(entry.rows!.rows[2999]).toEqual({ i: 3000 });
    expect(entry.rows!.getSnapshot()).toMatchObject({ completed: true, receivedRows: 3000, progress: 100 });
    expect(late?.rows).toHaveLength(0);
    // The author's session has the same entry.
    await until(() => ann.latestSharedExecution?.rows?.getSnapshot().completed, 5000, 'ann saw the end');
    expect(ann.latestSharedExecution!.rows!.rows).toHaveLength(3000);

    // A second run: only the latest keeps a store by default (sharedRows: 1); the older one's is released.
    gate.decide = () => 'pass';
    const second = ann.executeQuery('SELECT id FROM customers ORDER BY id LIMIT 3');
    await second.done;
    await until(() => bob.sharedExecutions.length === 2 && bob.latestSharedExecution!.rows!.getSnapshot().completed, 5000, 'second run');
    expect(bob.sharedExecutions[0]!.rows).toBeNull();
    expect(bob.sharedExecutions[0]!.handle.state.status).toBe('completed');
    expect(bob.latestSharedExecution!.rows!.rows).toEqual([{ id: 1 }, { id: 2 }, { id: 3 }]);
    expect(bob.state.executions.map((e) => e.executionId)).toEqual(bob.sharedExecutions.map((e) => e.executionId));
    await Promise.all([ann.close(), bob.close()]);
  });
});

describe('updateQuery baseVersion', () => {
  it('an explicit baseVersion that someone else replaced conflicts; own later versions do not', async () => {
    const { ann, bob } = await pair('base');
    expect(await ann.updateQuery('A1')).toEqual({ status: 'applied' });
    await until(() => bob.state.queryVersion === 1, 5000, 'bob v1');
    const bobEditedOn = bob.state.queryVersion; // Bob starts typing on v1…
    expect(await ann.updateQuery('A2')).toEqual({ status: 'applied' });
    await until(() => bob.state.queryVersion === 2, 5000, 'bob v2');
    // …and his edit goes out after Ann's v2 arrived: a conflict with her text, not an overwrite.
    expect(await bob.updateQuery('B on v1', { baseVersion: bobEditedOn })).toEqual({
      status: 'conflict',
      currentVersion: 2,
      currentQuery: 'A2',
    });
    await sleep(100);
    expect(ann.state).toMatchObject({ query: 'A2', queryVersion: 2 });
    // Rebased on v2 it applies (v3); a further edit still based on v2 applies too: v3 is Bob's own.
    expect(await bob.updateQuery('B on v2', { baseVersion: 2 })).toEqual({ status: 'applied' });
    expect(await bob.updateQuery('B on v2, more', { baseVersion: 2 })).toEqual({ status: 'applied' });
    await until(() => ann.state.queryVersion === 4, 5000, 'ann v4');
    // For Ann, v3 and v4 are someone else's: her edit on v2 conflicts.
    expect(await ann.updateQuery('A on v2', { baseVersion: 2 })).toEqual({
      status: 'conflict',
      currentVersion: 4,
      currentQuery: 'B on v2, more',
    });
    // `force` still overwrites.
    expect(await ann.updateQuery('A forced', { force: true })).toEqual({ status: 'applied' });
    await until(() => bob.state.query === 'A forced', 5000, 'forced');
    await Promise.all([ann.close(), bob.close()]);
  });

  it('by default the base is the version known when updateQuery was called, not when the update is sent', async () => {
    const gate = new FrameGate();
    const { ann, bob } = await pair('default-base', gate.WebSocket);
    expect(await ann.updateQuery('A1')).toEqual({ status: 'applied' });
    await until(() => bob.state.queryVersion === 1, 5000, 'bob v1');
    // Acks and broadcasts take separate paths through the gateway: let Ann's broadcast overtake Bob's ack.
    gate.decide = (f) => (f.type === 'ack' ? 'hold' : 'pass');
    const first = bob.updateQuery('B1'); // base 1 → applied as v2; its ack is held back
    await until(() => bob.state.queryVersion === 2 && ann.state.queryVersion === 2, 5000, 'v2 everywhere');
    expect(gate.heldCount).toBe(1);
    // Bob edits on v2 (his own text) while `first` is still unacknowledged: this one waits behind it.
    const second = bob.updateQuery('B1 and more');
    expect(await ann.updateQuery('A3')).toEqual({ status: 'applied' }); // v3
    await until(() => bob.state.query === 'A3', 5000, 'bob sees v3');
    gate.decide = () => 'pass';
    gate.release();
    expect(await first).toEqual({ status: 'applied' });
    // `second` was made on v2. Sent with the latest version known at send time (3), it would silently
    // overwrite Ann's v3; sent with the version known when it was made, it conflicts.
    expect(await second).toEqual({ status: 'conflict', currentVersion: 3, currentQuery: 'A3' });
    await sleep(100);
    expect(ann.state).toMatchObject({ query: 'A3', queryVersion: 3 });
    expect(bob.state).toMatchObject({ query: 'A3', queryVersion: 3 });
    await Promise.all([ann.close(), bob.close()]);
  });

  it('after a conflict, a waiting update made on the current version is still sent', async () => {
    const gate = new FrameGate();
    const { ann, bob } = await pair('after-conflict', gate.WebSocket);
    await ann.updateQuery('A1');
    await ann.updateQuery('A2');
    await until(() => bob.state.queryVersion === 2, 5000, 'bob v2');
    gate.decide = (f) => (f.type === 'error' ? 'hold' : 'pass');
    const stale = bob.updateQuery('B on v1', { baseVersion: 1 });
    const fresh = bob.updateQuery('B on v2', { baseVersion: 2 }); // waits behind `stale`
    const dropped = bob.updateQuery('B typed on', {}); // default base (2) … supersedes `fresh`
    expect(await fresh).toEqual({ status: 'superseded' });
    const fresher = bob.updateQuery('B on v2 again', { baseVersion: 2 }); // … and is superseded in turn
    expect(await dropped).toEqual({ status: 'superseded' });
    await until(() => gate.heldCount === 1, 5000, 'the conflict is held');
    gate.decide = () => 'pass';
    gate.release();
    expect(await stale).toMatchObject({ status: 'conflict', currentVersion: 2 });
    expect(await fresher).toEqual({ status: 'applied' });
    await until(() => ann.state.query === 'B on v2 again' && ann.state.queryVersion === 3, 5000, 'ann sees it');
    await Promise.all([ann.close(), bob.close()]);
  });
});
