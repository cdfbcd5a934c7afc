// Collaboration sessions on a real embedded gateway: two participants, shared text with versions and
// conflicts, chat, cursors, presence, shared executions.
import WebSocket from 'ws';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { CollaborationSession } from '../src/index.js';
import { startEmbedded, type Gateway } from './helpers/processes.js';
import { until } from './helpers/wait.js';

let gw: Gateway;
beforeAll(async () => {
  gw = await startEmbedded({ args: ['--cursor-interval-ms', '10'] });
});
afterAll(async () => {
  await gw?.kill();
});

const join = (sessionId: string, user: string) =>
  new CollaborationSession({ url: gw.url, sessionId, user, name: user.toUpperCase(), WebSocket });

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
    expect(bob.client.isStreamDone(executionId)).toBe(true);

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
