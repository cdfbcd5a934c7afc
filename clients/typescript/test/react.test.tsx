// @vitest-environment jsdom
// The React hooks against a real embedded gateway (jsdom + @testing-library/react).
import { StrictMode, type ReactNode } from 'react';
import { renderHook, waitFor } from '@testing-library/react';
import WebSocket from 'ws';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { ServerFrame } from '../src/index.js';
import {
  useCollaborativeSession,
  useConnectionQuality,
  useQueryExecution,
  useQueryState,
  useSharedExecutions,
  useStreamingData,
  useWebSocket,
} from '../src/react/index.js';
import { FrameGate } from './helpers/gate.js';
import { startEmbedded, type Gateway } from './helpers/processes.js';
import { rowsQuery } from './helpers/wait.js';

// Updates come from sockets, not from act(): let React schedule them as in a browser.
(globalThis as { IS_REACT_ACT_ENVIRONMENT?: boolean }).IS_REACT_ACT_ENVIRONMENT = false;

let gw: Gateway;
beforeAll(async () => {
  gw = await startEmbedded({ args: ['--cursor-interval-ms', '10'] });
});
afterAll(async () => {
  await gw?.kill();
});

let constructed = 0;
class CountingWebSocket extends WebSocket {
  constructor(url: string) {
    super(url);
    constructed++;
  }
}

const user = () => `r-${Math.random().toString(36).slice(2)}`;

describe('useWebSocket', () => {
  it('creates the client once across re-renders and delivers every frame, even several per render', async () => {
    constructed = 0;
    let renders = 0;
    let received = 0;
    const u = user();
    const { result, rerender, unmount } = renderHook(
      ({ tick }: { tick: number }) => {
        renders++;
        // A new options object and a new callback on every render.
        return useWebSocket({
          url: gw.url,
          path: '/ws/query',
          user: u,
          WebSocket: CountingWebSocket,
          keepMessages: 100_000,
          onMessage: () => void (received += tick >= 0 ? 1 : 0),
        });
      },
      { initialProps: { tick: 0 } },
    );
    const client = result.current.client;
    await waitFor(() => expect(result.current.connectionState.connected).toBe(true));
    for (let tick = 1; tick <= 5; tick++) rerender({ tick });
    expect(result.current.client).toBe(client);

    const rendersBefore = renders;
    await result.current.request('execute_query', { query: rowsQuery(3000), options: { chunkSize: 10 } });
    await waitFor(() => expect(result.current.messages.some((m) => m.type === 'query_completed')).toBe(true), { timeout: 20_000 });
    const events = result.current.messages.filter((m): m is ServerFrame & { seq: number } => typeof m.seq === 'number');
    expect(events.map((e) => e.seq)).toEqual(events.map((_, i) => i + 1));
    const rows = events.reduce((n, e) => n + (e.type === 'data_chunk' ? e.payload.data.length : 0), 0);
    expect(rows).toBe(3000);
    expect(received).toBe(result.current.messages.length);
    // Many frames per render (React batches); none lost — a `lastMessage` state would have dropped them.
    expect(renders - rendersBefore).toBeLessThan(events.length);
    expect(constructed).toBe(1);
    unmount();
    await waitFor(() => expect(client.status.state).toBe('closed'));
    expect(client.activeTimerCount).toBe(0);
  });

  it('works under StrictMode (mount, unmount, mount): reconnects the same client', async () => {
    const wrapper = ({ children }: { children: ReactNode }) => <StrictMode>{children}</StrictMode>;
    const u = user();
    const { result, unmount } = renderHook(
      () => useQueryExecution({ url: gw.url, user: u, WebSocket }),
      { wrapper },
    );
    await waitFor(() => expect(result.current.connectionState.connected).toBe(true));
    const handle = result.current.executeQuery('SELECT count(*) AS n FROM orders');
    await waitFor(() => expect(result.current.queryState?.status).toBe('completed'));
    expect(handle.state.rowsReceived).toBe(1);
    unmount();
  });
});

describe('useQueryExecution + useStreamingData', () => {
  it('streams 100k rows into the row store without per-chunk copies; renders are throttled', async () => {
    let renders = 0;
    const u = user();
    const { result, unmount } = renderHook(() => {
      renders++;
      const exec = useQueryExecution({ url: gw.url, user: u, WebSocket });
      const data = useStreamingData<{ i: number }>(exec.handle, { notifyIntervalMs: 50 });
      return { exec, data };
    });
    await waitFor(() => expect(result.current.exec.connectionState.connected).toBe(true));
    const started = performance.now();
    result.current.exec.executeQuery(rowsQuery(100_000), { chunkSize: 500 });
    await waitFor(() => expect(result.current.data.streamingData.completed).toBe(true), { timeout: 30_000 });
    const ms = performance.now() - started;
    const { data, exec } = result.current;
    expect(exec.queryState?.status).toBe('completed');
    expect(data.streamingData.receivedRows).toBe(100_000);
    expect(data.rows.length).toBe(100_000);
    expect(data.getAllData()[99_999]).toEqual({ i: 100_000 });
    expect(data.getRows(10, 12)).toEqual([{ i: 11 }, { i: 12 }]);
    expect(data.getProgress()).toBe(100);
    expect(data.streamingData.chunkCount).toBe(200);
    expect(renders).toBeLessThan(200); // not one render per chunk
    console.info(`100k rows streamed through the hooks in ${ms.toFixed(0)} ms with ${renders} renders`);
    unmount();
  });
});

describe('useCollaborativeSession', () => {
  it('two participants: shared query, chat and cursor reach the other', async () => {
    const sid = `react-${Date.now()}`;
    const opts = (u: string) => ({ url: gw.url, user: u, name: u, WebSocket });
    const ann = renderHook(() => useCollaborativeSession(sid, opts('ann')));
    await waitFor(() => expect(ann.result.current.sessionState.joined).toBe(true));
    const bob = renderHook(() => useCollaborativeSession(sid, opts('bob')));
    await waitFor(() => expect(ann.result.current.sessionState.participants).toHaveLength(2));
    const session = ann.result.current.session;
    ann.rerender();
    expect(ann.result.current.session).toBe(session);

    await expect(ann.result.current.updateQuery('SELECT * FROM products')).resolves.toEqual({ status: 'applied' });
    await waitFor(() => expect(bob.result.current.sessionState.query).toBe('SELECT * FROM products'));
    // Three chat messages back to back: all of them end up in the state.
    await Promise.all(['a', 'b', 'c'].map((t) => bob.result.current.sendChatMessage(t)));
    await waitFor(() => expect(ann.result.current.sessionState.chat.map((m) => m.content).sort()).toEqual(['a', 'b', 'c']));
    bob.result.current.updateCursor({ line: 1 });
    const bobId = bob.result.current.sessionState.participantId!;
    await waitFor(() => expect(ann.result.current.sessionState.cursors[bobId]).toEqual({ line: 1 }));
    bob.unmount();
    await waitFor(() => expect(ann.result.current.sessionState.participants).toHaveLength(1));
    ann.unmount();
  });
});

describe('useSharedExecutions', () => {
  it("every participant's table gets every row of a shared run, even when its events arrive in the announcement's tick", async () => {
    const sid = `react-shared-${Date.now()}`;
    const gate = new FrameGate();
    let renders = 0;
    const view = (u: string, ws: typeof WebSocket | FrameGate['WebSocket']) => () => {
      renders++;
      const collab = useCollaborativeSession(sid, { url: gw.url, user: u, name: u, WebSocket: ws });
      const { latest, executions } = useSharedExecutions<{ i: number }>(collab.session);
      const data = useStreamingData(latest?.rows);
      const state = useQueryState(latest?.handle);
      return { collab, latest, executions, data, state };
    };
    const ann = renderHook(view('ann', WebSocket));
    await waitFor(() => expect(ann.result.current.collab.sessionState.joined).toBe(true));
    const bob = renderHook(view('bob', gate.WebSocket));
    await waitFor(() => expect(ann.result.current.collab.sessionState.participants).toHaveLength(2));
    await waitFor(() => expect(bob.result.current.collab.sessionState.joined).toBe(true));
    // Bob's socket hands shared_execution and all of the execution's events over in one synchronous burst:
    // no render can happen in between.
    gate.burst(
      (f) => f.type === 'shared_execution',
      (f) => f.type === 'query_completed',
    );
    renders = 0;
    const run = ann.result.current.collab.executeQuery(rowsQuery(5000), { chunkSize: 50 });
    for (const view of [ann, bob]) {
      await waitFor(() => expect(view.result.current.data.streamingData.completed).toBe(true), { timeout: 10_000 });
      const { latest, data, state, executions } = view.result.current;
      expect(latest?.executionId).toBe(run.executionId);
      expect(executions).toHaveLength(1);
      expect(data.rows).toHaveLength(5000);
      expect(data.rows[4999]).toEqual({ i: 5000 });
      expect(data.streamingData.chunkCount).toBe(100);
      expect(state?.status).toBe('completed');
      expect(state?.rowsReceived).toBe(5000);
    }
    expect(gate.lastBurst).toBeGreaterThan(100);
    expect(renders).toBeLessThan(100); // throttled: not one render per chunk
    ann.unmount();
    bob.unmount();
  });
});

describe('browser WebSocket', () => {
  it("uses globalThis.WebSocket by default (jsdom's implementation here)", async () => {
    expect(typeof globalThis.WebSocket).toBe('function');
    const u = user();
    const { result, unmount } = renderHook(() => useQueryExecution({ url: gw.url, user: u }));
    await waitFor(() => expect(result.current.connectionState.connected).toBe(true));
    const handle = result.current.executeQuery('SELECT name FROM products ORDER BY id LIMIT 3');
    const outcome = await handle.done;
    expect(outcome.status).toBe('completed');
    expect(handle.state.rowsReceived).toBe(3);
    unmount();
  });
});

describe('useConnectionQuality', () => {
  it('measures latency from heartbeat pings on /ws/monitoring', async () => {
    const { result, unmount } = renderHook(() =>
      useConnectionQuality({ url: gw.url, WebSocket, heartbeat: { intervalMs: 50, pongTimeoutMs: 2000 } }),
    );
    await waitFor(() => expect(result.current.lastRtt).not.toBeNull());
    await waitFor(() => expect(['excellent', 'good']).toContain(result.current.stability));
    expect(result.current.latency).toBeGreaterThanOrEqual(0);
    expect(result.current.packetsLost).toBe(0);
    expect(result.current.status.state).toBe('open');
    unmount();
  });
});
