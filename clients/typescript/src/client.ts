import { backoffDelay, DEFAULT_RECONNECT, type ReconnectOptions } from './backoff.js';
import type { ErrorBody, Pong, ServerFrame } from './generated/protocol.js';
import {
  CloseCode,
  isAckedType,
  isExecutionEvent,
  isRetryableClose,
  isSessionEvent,
  isTerminalEvent,
  RealtimeError,
  type AckPayload,
  type AckedClientType,
  type ClientMessageType,
  type ClientPayloads,
  type ExecutionEvent,
  type ServerFrameOf,
  type ServerMessageType,
  type ServerPayloads,
} from './protocol.js';
import { QueryHandle, type ExecuteOptions, type SubscribeOptions } from './query.js';
import type { ConnectionStatus, StreamHost, Waiter } from './stream-host.js';
import { Emitter, Timers, uuid, type HandlerErrorReporter } from './util.js';

// ---------------------------------------------------------------------------------------------------------
// Options and public types
// ---------------------------------------------------------------------------------------------------------

/**
 * The part of the WebSocket API the client uses: the browser's `WebSocket`, the `ws` package's, or a test double.
 */
export interface WebSocketLike {
  readonly readyState: number;
  /* eslint-disable @typescript-eslint/no-explicit-any -- handler types differ between WebSocket implementations */
  onopen: ((event: any) => unknown) | null;
  onmessage: ((event: any) => unknown) | null;
  onclose: ((event: any) => unknown) | null;
  onerror: ((event: any) => unknown) | null;
  /* eslint-enable @typescript-eslint/no-explicit-any */
  send(data: string): void;
  close(code?: number, reason?: string): void;
  /** `ws` only: drop the connection at once. */
  terminate?(): void;
}

/** A WebSocket class: `globalThis.WebSocket` in browsers, `import WebSocket from 'ws'` in Node. */
export type WebSocketConstructor = new (url: string, protocols?: string | string[]) => WebSocketLike;

/** App-level heartbeat: `ping {timestamp}` → `pong`. */
export interface HeartbeatOptions {
  /** Interval between pings (ms). Default 15 000. */
  intervalMs: number;
  /**
   * A ping not answered within this (ms) — with no other frame received meanwhile — closes the socket and
   * reconnects. Default 10 000.
   */
  pongTimeoutMs: number;
}

/** What a URL provider is told on each connection attempt. */
export interface UrlContext {
  /** 0 for the first connection, then the number of the retry. */
  attempt: number;
  /** How many connection attempts were made in total (0 for the first). */
  connectionCount: number;
  /** The URL of the previous attempt, if any. */
  previous: string | undefined;
}

/** Options of {@link RealtimeClient}. */
export interface RealtimeClientOptions {
  /**
   * The gateway: `ws://host:8080` (then `path` is appended), a list of them (each retry moves to the next one:
   * failover between gateway nodes), or a function choosing one per attempt.
   */
  url: string | readonly string[] | ((context: UrlContext) => string);
  /** The endpoint: `/ws/query` (default when the URL has no path), `/ws/data`, `/ws/monitoring`, `/ws/collaboration/{id}`. */
  path?: string;
  /** A JWT, sent as the `access_token` query parameter (browsers cannot set headers on a WebSocket). */
  token?: string;
  /** Called before every connection attempt for a fresh JWT (wins over `token`). */
  getToken?: () => string | null | undefined | Promise<string | null | undefined>;
  /** Development identity (`?user=`), honoured only by gateways running without authentication. */
  user?: string;
  /** Development display name (`?name=`), honoured only by gateways running without authentication. */
  name?: string;
  /** More query parameters for the upgrade request. */
  params?: Readonly<Record<string, string>>;
  /** Reconnect policy, or `false` to never reconnect. */
  reconnect?: Partial<ReconnectOptions> | false;
  /** Heartbeat policy, or `false` for none. */
  heartbeat?: Partial<HeartbeatOptions> | false;
  /** Most messages kept while disconnected; beyond it `send` throws `queue_full`. Default 1 000. */
  offlineQueueLimit?: number;
  /** An upgrade not completed within this (ms) counts as a failed attempt. Default 10 000. */
  connectTimeoutMs?: number;
  /** The WebSocket implementation. Default `globalThis.WebSocket`. */
  WebSocket?: WebSocketConstructor;
  /** Connect in the constructor. Default true. */
  autoConnect?: boolean;
  /** Where exceptions thrown by event handlers go. Default `console.error`. */
  onHandlerError?: HandlerErrorReporter;
}

export type { ConnectionStatus } from './stream-host.js';

/** Round-trip measurements of the heartbeat pings (for `useConnectionQuality`). */
export interface LatencyStats {
  /** The last ping's round trip (ms), or `null` before the first pong. */
  readonly lastRttMs: number | null;
  /** Exponentially weighted moving average of the round trip (ms), or `null`. */
  readonly avgRttMs: number | null;
  readonly minRttMs: number | null;
  readonly maxRttMs: number | null;
  /** Mean absolute difference between consecutive round trips (ms). */
  readonly jitterMs: number;
  /** Pings sent / pongs received / pings never answered. */
  readonly sent: number;
  readonly received: number;
  readonly lost: number;
}

/** Counters of the client's life. */
export interface ClientStats {
  /** Connections opened after the first one. */
  readonly reconnects: number;
  /** Frames received / sent. */
  readonly framesIn: number;
  readonly framesOut: number;
  /** Events dropped because their `seq` was already seen (replays after a resume). */
  readonly duplicatesDropped: number;
  /** When the current connection opened (ms since the epoch), or `null`. */
  readonly connectedSince: number | null;
}

/** Handlers of the server's messages: `(payload, frame)`. */
export type ServerMessageHandlers = {
  [K in ServerMessageType]: (payload: ServerPayloads[K], frame: ServerFrameOf<K>) => void;
};

/** Everything {@link RealtimeClient.on} can listen to. */
export type RealtimeClientEvents = ServerMessageHandlers & {
  /** Every frame delivered (after duplicates are dropped), whatever its type. */
  message: (frame: ServerFrame) => void;
  /** Connection state changes. */
  status: (status: ConnectionStatus) => void;
  /** A heartbeat round trip was measured. */
  latency: (stats: LatencyStats) => void;
  /** An execution this client followed cannot be followed any more (e.g. `resume` got `not_found`). */
  stream_lost: (info: { executionId: string; error: RealtimeError }) => void;
};

// ---------------------------------------------------------------------------------------------------------
// Internals
// ---------------------------------------------------------------------------------------------------------

/** Sync callbacks of a message waiting for its `ack` (or `error` with `ref`). */

interface OutgoingFrame {
  type: ClientMessageType;
  payload: unknown;
  id?: string;
  traceparent?: string;
}

interface Outgoing {
  frame: OutgoingFrame;
  /** Waits for an `ack`: kept after sending and re-sent (same id) after a reconnect until acknowledged. */
  acked: boolean;
  waiters: Waiter[];
}

interface StreamState {
  lastSeq: number;
  done: boolean;
}

type Endpoint = 'query' | 'data' | 'collaboration' | 'monitoring' | 'other';

const OPEN = 1;
const CLOSED = 3;
const MAX_TRACKED_STREAMS = 1000;
const EWMA_WEIGHT = 0.2;
const DEFAULT_HEARTBEAT: HeartbeatOptions = { intervalMs: 15_000, pongTimeoutMs: 10_000 };

const now = (): number => globalThis.performance?.now?.() ?? Date.now();
const noop = (): void => {};

function endpointOf(pathname: string): Endpoint {
  if (pathname.startsWith('/ws/collaboration/')) return 'collaboration';
  if (pathname === '/ws/query') return 'query';
  if (pathname === '/ws/data') return 'data';
  if (pathname === '/ws/monitoring') return 'monitoring';
  return 'other';
}

/**
 * A WebSocket connection to one gateway endpoint that survives failures.
 *
 * - Reconnects with exponential backoff, full jitter and a cap; never after close codes 4000–4999, 1007, 1008,
 *   1009 (see {@link isRetryableClose}); rotates through `url` when given several.
 * - Heartbeat: app-level `ping` every `intervalMs`; no `pong` (and no other frame) within `pongTimeoutMs`
 *   drops the socket and reconnects. Round trips feed {@link latency}.
 * - Messages sent while disconnected wait in a bounded queue and go out on reconnect. Every acknowledged kind
 *   of message carries a uuid `id`; one sent but not acknowledged when the socket dropped is sent again
 *   with the same `id`, which the gateway acknowledges without executing it twice (`duplicate: true`).
 * - Tracks the last `seq` of every execution stream it follows and of the collaboration session: after a
 *   reconnect it sends `resume {executionId, afterSeq}` for every unfinished execution and rejoins a session
 *   with `?afterSeq=` and `&participantId=` (its previous entry is replaced at once, not left to expire);
 *   events at or below a seen `seq` are dropped, so handlers see each event once.
 *
 * @example
 * ```ts
 * import WebSocket from 'ws'; // Node; browsers need no WebSocket option
 * const client = new RealtimeClient({ url: 'ws://127.0.0.1:8080', path: '/ws/query', WebSocket });
 * client.on('status', (s) => console.log(s.state));
 * const query = client.executeQuery('SELECT * FROM orders', { chunkSize: 500 });
 * for await (const event of query) if (event.type === 'data_chunk') console.log(event.payload.data.length);
 * await client.close();
 * ```
 */
export class RealtimeClient implements StreamHost {
  private readonly options: RealtimeClientOptions;
  private readonly reconnectPolicy: ReconnectOptions | false;
  private readonly heartbeatPolicy: HeartbeatOptions | false;
  private readonly queueLimit: number;
  private readonly emitter: Emitter<RealtimeClientEvents>;
  private readonly timers = new Timers();

  private ws: WebSocketLike | undefined;
  /** Bumped by every connection attempt and by close(): stale async steps and socket events are ignored. */
  private generation = 0;
  private currentStatus: ConnectionStatus = { state: 'idle' };
  private stopped = true;
  private attempt = 0;
  private connectionCount = 0;
  private urlIndex = 0;
  private lastUrl: string | undefined;
  private openedAt: number | undefined;

  private outbox: Outgoing[] = [];
  private inflight: Outgoing[] = [];

  private readonly streams = new Map<string, StreamState>();
  private readonly executionListeners = new Map<string, Set<(frame: ExecutionEvent) => void>>();
  private sessionSeqValue: number | undefined;
  /** This socket's participant id in its session: a rejoin presents it to take over its old entry at once. */
  private sessionParticipant: string | undefined;

  private heartbeatTimer: ReturnType<typeof setInterval> | undefined;
  private pongTimer: ReturnType<typeof setTimeout> | undefined;
  private connectTimer: ReturnType<typeof setTimeout> | undefined;
  private reconnectTimer: ReturnType<typeof setTimeout> | undefined;
  private readonly pings = new Map<number, { sentAt: number; waiters: Waiter[] }>();
  private pingSeq = 0;
  private lastFrameAt = 0;
  private latencyStats: LatencyStats = {
    lastRttMs: null,
    avgRttMs: null,
    minRttMs: null,
    maxRttMs: null,
    jitterMs: 0,
    sent: 0,
    received: 0,
    lost: 0,
  };
  private counters = { reconnects: 0, framesIn: 0, framesOut: 0, duplicatesDropped: 0 };
  private socketClosed: Array<() => void> = [];

  constructor(options: RealtimeClientOptions) {
    this.options = options;
    this.reconnectPolicy = options.reconnect === false ? false : { ...DEFAULT_RECONNECT, ...options.reconnect };
    this.heartbeatPolicy = options.heartbeat === false ? false : { ...DEFAULT_HEARTBEAT, ...options.heartbeat };
    this.queueLimit = options.offlineQueueLimit ?? 1000;
    this.emitter = new Emitter(options.onHandlerError);
    if (options.autoConnect !== false) this.connect();
  }

  // ---- public API ------------------------------------------------------------------------------------

  /** The connection's state now. */
  get status(): ConnectionStatus {
    return this.currentStatus;
  }

  /** True while the socket is open. */
  get isOpen(): boolean {
    return this.currentStatus.state === 'open';
  }

  /** Heartbeat round-trip measurements. */
  get latency(): LatencyStats {
    return this.latencyStats;
  }

  /** Counters: reconnects, frames, duplicates dropped. */
  get stats(): ClientStats {
    return {
      ...this.counters,
      connectedSince: this.currentStatus.state === 'open' ? this.currentStatus.since : null,
    };
  }

  /** Messages waiting for a connection (not yet written to a socket). */
  get queuedCount(): number {
    return this.outbox.length;
  }

  /** Timers this client holds (reconnect, heartbeat, pong and connect timeouts). 0 after {@link close}. */
  get activeTimerCount(): number {
    return this.timers.size;
  }

  /** The last `seq` seen of an execution's stream, or `undefined` if it is not followed. */
  lastSeq(executionId: string): number | undefined {
    return this.streams.get(executionId)?.lastSeq;
  }

  /** The last collaboration session `seq` seen (what a reconnect passes as `?afterSeq=`). */
  get sessionSeq(): number | undefined {
    return this.sessionSeqValue;
  }

  /** Listens to a server message type or a client event; returns the unsubscribe function. */
  on<E extends keyof RealtimeClientEvents>(event: E, handler: RealtimeClientEvents[E]): () => void {
    return this.emitter.on(event, handler);
  }

  /** Removes a handler added with {@link on} or {@link once}. */
  off<E extends keyof RealtimeClientEvents>(event: E, handler: RealtimeClientEvents[E]): void {
    this.emitter.off(event, handler);
  }

  /** Like {@link on}, for the next occurrence only. */
  once<E extends keyof RealtimeClientEvents>(event: E, handler: RealtimeClientEvents[E]): () => void {
    return this.emitter.once(event, handler);
  }

  /** Opens the connection (a no-op while it is open or being opened). Also restarts a closed client. */
  connect(): void {
    if (!this.stopped) return;
    this.stopped = false;
    this.attempt = 0;
    void this.open();
  }

  /**
   * Closes the connection for good (until {@link connect}): clears every timer, stops reconnecting, fails
   * messages still waiting with `closed`, forgets followed streams. Resolves once the socket has closed.
   */
  close(code: number = 1000, reason = 'client closed'): Promise<void> {
    const wasStopped = this.stopped && this.currentStatus.state === 'closed';
    this.stopped = true;
    this.generation++;
    this.timers.clearAll();
    this.heartbeatTimer = this.pongTimer = this.connectTimer = this.reconnectTimer = undefined;
    const error = new RealtimeError('closed', `the client was closed: ${reason}`);
    this.failPings(error);
    this.failPending(error);
    this.streams.clear();
    this.sessionSeqValue = undefined;
    this.sessionParticipant = undefined;
    const ws = this.ws;
    this.ws = undefined;
    const closed = this.waitSocketClosed(ws);
    if (ws) {
      ws.onopen = null;
      ws.onmessage = null;
      ws.onerror = noop;
      try {
        ws.close(code, reason);
      } catch {
        ws.close();
      }
    }
    if (!wasStopped) this.setStatus({ state: 'closed', code, reason });
    return closed;
  }

  /**
   * Sends a message now, or queues it until the connection is back. Acknowledged kinds get a uuid `id`
   * (unless given) and are re-sent with it after a reconnect until acknowledged. Returns the `id`.
   *
   * @throws {@link RealtimeError} `queue_full` when the offline queue is full.
   */
  send<K extends ClientMessageType>(
    type: K,
    payload: ClientPayloads[K],
    options: { id?: string; traceparent?: string } = {},
  ): string | undefined {
    const out = this.outgoing(type, payload, options);
    this.enqueue(out);
    return out.frame.id;
  }

  /**
   * Sends an acknowledged kind of message and resolves with its `ack` (`{id, executionId?, duplicate?}`);
   * rejects with a {@link RealtimeError} when the server answers with an `error` for it, or the client closes.
   */
  request<K extends AckedClientType>(
    type: K,
    payload: ClientPayloads[K],
    options: { id?: string; traceparent?: string } = {},
  ): Promise<AckPayload> {
    return new Promise((resolve, reject) => {
      this.sendWithWaiter(type, payload, { ack: resolve, fail: reject }, options);
    });
  }

  /**
   * Runs a query (`execute_query`) and follows its events. The handle is an async iterable of the events,
   * takes callbacks, resolves {@link QueryHandle.done} on the terminal event, and can {@link QueryHandle.cancel}.
   * Works offline too: the query goes out when the connection is back, exactly once.
   */
  executeQuery(query: string, options: ExecuteOptions = {}): QueryHandle {
    return QueryHandle.execute(this, query, options);
  }

  /**
   * Follows an existing execution (`subscribe {executionId, afterSeq}`): a second tab, a dashboard, another node.
   */
  subscribe(executionId: string, options: SubscribeOptions = {}): QueryHandle {
    return QueryHandle.subscribe(this, executionId, options);
  }

  /**
   * Follows an execution whose events already come to this socket without asking (a collaboration session's
   * shared executions). Sends nothing.
   */
  watch(executionId: string, options: SubscribeOptions = {}): QueryHandle {
    return QueryHandle.watch(this, executionId, options);
  }

  /** Measures one round trip with an app-level `ping` now. Rejects if no pong comes within `pongTimeoutMs`. */
  ping(): Promise<number> {
    return new Promise((resolve, reject) => {
      if (!this.isOpen) {
        reject(new RealtimeError('unavailable', 'not connected'));
        return;
      }
      const start = now();
      this.sendPing({ ack: () => resolve(now() - start), fail: reject });
    });
  }

  // ---- internals used by QueryHandle and CollaborationSession ------------------------------------------

  /** @internal Sends with sync ack/fail callbacks. */
  sendWithWaiter<K extends ClientMessageType>(
    type: K,
    payload: ClientPayloads[K],
    waiter: Waiter,
    options: { id?: string; traceparent?: string } = {},
  ): string | undefined {
    const out = this.outgoing(type, payload, options);
    out.waiters.push(waiter);
    try {
      this.enqueue(out);
    } catch (error) {
      waiter.fail(error as RealtimeError);
    }
    return out.frame.id;
  }

  /** @internal Removes a message that was never written to a socket; true if it was still queued. */
  unqueue(id: string, error: RealtimeError): boolean {
    const index = this.outbox.findIndex((o) => o.frame.id === id);
    if (index < 0) return false;
    const [out] = this.outbox.splice(index, 1);
    for (const w of out!.waiters) w.fail(error);
    return true;
  }

  /** @internal Starts tracking an execution's `seq` (its events are deduplicated and resumed). */
  track(executionId: string, afterSeq = 0): void {
    const s = this.streams.get(executionId);
    if (s) {
      s.lastSeq = Math.max(s.lastSeq, afterSeq);
      return;
    }
    this.streams.set(executionId, { lastSeq: afterSeq, done: false });
    if (this.streams.size > MAX_TRACKED_STREAMS) {
      for (const [id, state] of this.streams) {
        if (this.streams.size <= MAX_TRACKED_STREAMS) break;
        if (state.done) this.streams.delete(id);
      }
    }
  }

  /** @internal Routes an execution's events to a listener; returns the unsubscribe function. */
  onExecution(executionId: string, listener: (frame: ExecutionEvent) => void): () => void {
    let set = this.executionListeners.get(executionId);
    if (!set) {
      set = new Set();
      this.executionListeners.set(executionId, set);
    }
    set.add(listener);
    return () => {
      const s = this.executionListeners.get(executionId);
      if (!s) return;
      s.delete(listener);
      if (s.size === 0) this.executionListeners.delete(executionId);
    };
  }

  /** @internal Whether an execution's stream has ended (terminal event seen, or lost). */
  isStreamDone(executionId: string): boolean {
    return this.streams.get(executionId)?.done ?? false;
  }

  // ---- connecting ----------------------------------------------------------------------------------------

  private setStatus(status: ConnectionStatus): void {
    this.currentStatus = status;
    this.emitter.emit('status', status);
  }

  private nextUrl(): string {
    const { url } = this.options;
    if (typeof url === 'function') {
      return url({ attempt: this.attempt, connectionCount: this.connectionCount, previous: this.lastUrl });
    }
    if (typeof url === 'string') return url;
    if (url.length === 0) throw new Error('RealtimeClient: `url` is an empty list');
    return url[this.urlIndex % url.length]!;
  }

  private buildUrl(base: string, token: string | null | undefined): URL {
    const { path, user, name, params } = this.options;
    const u = new URL(base);
    if (path !== undefined) {
      u.pathname = u.pathname.replace(/\/+$/, '') + (path.startsWith('/') ? path : `/${path}`);
    } else if (u.pathname === '' || u.pathname === '/') {
      u.pathname = '/ws/query';
    }
    for (const [k, v] of Object.entries(params ?? {})) u.searchParams.set(k, v);
    if (user !== undefined) u.searchParams.set('user', user);
    if (name !== undefined) u.searchParams.set('name', name);
    if (token) u.searchParams.set('access_token', token);
    if (endpointOf(u.pathname) === 'collaboration' && this.sessionSeqValue !== undefined) {
      u.searchParams.set('afterSeq', String(this.sessionSeqValue));
      if (this.sessionParticipant !== undefined) u.searchParams.set('participantId', this.sessionParticipant);
    }
    return u;
  }

  private get endpoint(): Endpoint {
    const { path } = this.options;
    if (path !== undefined) return endpointOf(path.startsWith('/') ? path : `/${path}`);
    try {
      const url = typeof this.options.url === 'string' ? this.options.url : undefined;
      return url ? endpointOf(new URL(url).pathname) : 'query';
    } catch {
      return 'other';
    }
  }

  private async open(): Promise<void> {
    const generation = ++this.generation;
    let url: URL;
    let base: string;
    try {
      base = this.nextUrl();
      this.setStatus({ state: 'connecting', attempt: this.attempt, url: base });
      const token = this.options.getToken ? await this.options.getToken() : this.options.token;
      if (generation !== this.generation) return;
      url = this.buildUrl(base, token);
    } catch (error) {
      if (generation !== this.generation) return;
      this.onSocketGone(CloseCode.ABNORMAL, `connection setup failed: ${String(error)}`);
      return;
    }
    this.lastUrl = base;
    this.connectionCount++;
    const Ctor = this.options.WebSocket ?? (globalThis as { WebSocket?: WebSocketConstructor }).WebSocket;
    if (!Ctor) {
      this.stopped = true;
      this.setStatus({ state: 'closed', code: CloseCode.ABNORMAL, reason: 'no WebSocket implementation: pass `WebSocket`' });
      return;
    }
    let ws: WebSocketLike;
    try {
      ws = new Ctor(url.toString());
    } catch (error) {
      this.onSocketGone(CloseCode.ABNORMAL, `cannot open ${url}: ${String(error)}`);
      return;
    }
    this.ws = ws;
    this.openedAt = undefined;
    this.connectTimer = this.timers.timeout(() => {
      if (this.ws === ws) this.abandon(ws, 'connect timeout');
    }, this.options.connectTimeoutMs ?? 10_000);
    ws.onopen = () => {
      if (this.ws === ws) this.onOpen(base);
    };
    ws.onmessage = (event: { data: unknown }) => {
      if (this.ws === ws) this.onText(event.data);
    };
    ws.onerror = noop; // a close event follows
    ws.onclose = (event: { code?: number; reason?: string }) => {
      this.resolveSocketClosed();
      if (this.ws === ws) this.onSocketGone(event.code ?? CloseCode.ABNORMAL, event.reason ?? '');
    };
  }

  private onOpen(url: string): void {
    this.timers.clear(this.connectTimer);
    this.connectTimer = undefined;
    if (this.connectionCount > 1) this.counters.reconnects++;
    this.openedAt = now();
    this.lastFrameAt = now();
    this.setStatus({ state: 'open', url, since: Date.now() });
    if (this.ws === undefined || this.currentStatus.state !== 'open') return; // a status handler closed us
    this.startHeartbeat();
    this.resumeStreams();
    this.flush();
  }

  /** Drops a socket that stopped answering (heartbeat or connect timeout) and takes the reconnect path. */
  private abandon(ws: WebSocketLike, reason: string): void {
    ws.onopen = null;
    ws.onmessage = null;
    ws.onerror = noop;
    ws.onclose = () => this.resolveSocketClosed();
    try {
      if (ws.terminate) ws.terminate();
      else ws.close();
    } catch {
      /* already closing */
    }
    this.onSocketGone(CloseCode.ABNORMAL, reason);
  }

  /** The current socket is gone: requeue what was not acknowledged, then reconnect or stop. */
  private onSocketGone(code: number, reason: string): void {
    const wasOpenFor = this.openedAt === undefined ? 0 : now() - this.openedAt;
    this.ws = undefined;
    this.openedAt = undefined;
    this.stopHeartbeat();
    this.timers.clear(this.connectTimer);
    this.connectTimer = undefined;
    this.failPings(new RealtimeError('unavailable', `connection lost: ${reason || code}`));
    // Unacknowledged messages go first, in their original order, with their ids: the server deduplicates.
    this.outbox = [...this.inflight, ...this.outbox];
    this.inflight = [];
    if (this.stopped) return;
    const policy = this.reconnectPolicy;
    if (!policy || !isRetryableClose(code)) {
      this.finish(code, reason || 'closed by the server');
      return;
    }
    if (wasOpenFor >= policy.stableAfterMs) this.attempt = 0;
    this.attempt++;
    if (this.attempt > policy.maxAttempts) {
      this.finish(code, `gave up after ${policy.maxAttempts} reconnect attempts (last: ${reason || code})`);
      return;
    }
    if (Array.isArray(this.options.url)) this.urlIndex++;
    const delayMs = backoffDelay(this.attempt, policy);
    this.setStatus({ state: 'reconnecting', attempt: this.attempt, delayMs, code, reason });
    if (this.stopped || this.currentStatus.state !== 'reconnecting') return;
    this.reconnectTimer = this.timers.timeout(() => {
      this.reconnectTimer = undefined;
      void this.open();
    }, delayMs);
  }

  /** Stops for good after a close that must not be retried. */
  private finish(code: number, reason: string): void {
    this.stopped = true;
    this.timers.clearAll();
    const error = new RealtimeError('closed', `connection closed (${code}): ${reason}`);
    this.failPending(error);
    for (const [executionId, s] of this.streams) {
      if (s.done) continue;
      s.done = true;
      this.emitter.emit('stream_lost', { executionId, error });
    }
    this.setStatus({ state: 'closed', code, reason });
  }

  private failPending(error: RealtimeError): void {
    const pending = [...this.inflight, ...this.outbox];
    this.inflight = [];
    this.outbox = [];
    for (const out of pending) for (const w of out.waiters) w.fail(error);
  }

  private waitSocketClosed(ws: WebSocketLike | undefined): Promise<void> {
    if (!ws || ws.readyState === CLOSED) return Promise.resolve();
    return new Promise((resolve) => {
      this.socketClosed.push(resolve);
      ws.onclose = () => this.resolveSocketClosed();
    });
  }

  private resolveSocketClosed(): void {
    const waiting = this.socketClosed;
    this.socketClosed = [];
    for (const resolve of waiting) resolve();
  }

  // ---- sending -------------------------------------------------------------------------------------------

  private outgoing(type: ClientMessageType, payload: unknown, options: { id?: string; traceparent?: string }): Outgoing {
    const acked = isAckedType(type);
    const id = options.id ?? (acked ? uuid() : undefined);
    const frame: OutgoingFrame = { type, payload };
    if (id !== undefined) frame.id = id;
    if (options.traceparent !== undefined) frame.traceparent = options.traceparent;
    return { frame, acked: acked && id !== undefined, waiters: [] };
  }

  private enqueue(out: Outgoing): void {
    if (this.isOpen && this.outbox.length === 0) {
      if (this.write(out)) return;
    }
    if (out.frame.type === 'move_cursor') {
      // Only the latest cursor matters.
      const index = this.outbox.findIndex((o) => o.frame.type === 'move_cursor');
      if (index >= 0) {
        this.outbox[index] = out;
        return;
      }
    }
    if (this.outbox.length >= this.queueLimit) {
      throw new RealtimeError('queue_full', `the offline queue is full (${this.queueLimit} messages)`);
    }
    this.outbox.push(out);
  }

  /** Writes to the open socket; false if it could not. */
  private write(out: Outgoing): boolean {
    const ws = this.ws;
    if (!ws || ws.readyState !== OPEN) return false;
    const frame = out.frame;
    if ((frame.type === 'resume' || frame.type === 'subscribe') && frame.payload) {
      // A resume queued earlier continues from what has arrived since.
      const p = frame.payload as { executionId: string; afterSeq?: number | null };
      const seen = this.streams.get(p.executionId)?.lastSeq ?? 0;
      if (seen > (p.afterSeq ?? 0)) frame.payload = { ...p, afterSeq: seen };
    }
    try {
      ws.send(JSON.stringify(frame));
    } catch {
      return false;
    }
    this.counters.framesOut++;
    if (out.acked) this.inflight.push(out);
    return true;
  }

  private flush(): void {
    while (this.outbox.length > 0 && this.isOpen) {
      const out = this.outbox[0]!;
      if (!this.write(out)) return;
      this.outbox.shift();
    }
  }

  /** After a reconnect: `resume` every unfinished execution this client follows, from its last `seq`. */
  private resumeStreams(): void {
    const endpoint = this.endpoint;
    if (endpoint === 'monitoring') return;
    const queued = new Set<string>();
    for (const o of this.outbox) {
      if (o.frame.type === 'resume' || o.frame.type === 'subscribe') {
        queued.add((o.frame.payload as { executionId: string }).executionId);
      }
    }
    const resumes: Outgoing[] = [];
    for (const [executionId, s] of this.streams) {
      if (s.done || queued.has(executionId)) continue;
      resumes.push(this.resumeOutgoing(executionId));
    }
    this.outbox = [...resumes, ...this.outbox];
  }

  private resumeOutgoing(executionId: string): Outgoing {
    const afterSeq = this.streams.get(executionId)?.lastSeq ?? 0;
    const out = this.outgoing('resume', { executionId, afterSeq }, {});
    out.waiters.push({ ack: noop, fail: noop }); // failures are handled in onError
    return out;
  }

  private sendResume(executionId: string): void {
    try {
      this.enqueue(this.resumeOutgoing(executionId));
    } catch {
      /* the queue is full: the reconnect resumes it */
    }
  }

  // ---- receiving -----------------------------------------------------------------------------------------

  private onText(data: unknown): void {
    this.lastFrameAt = now();
    this.counters.framesIn++;
    if (typeof data !== 'string') return; // the gateway sends text frames only
    let frame: ServerFrame;
    try {
      frame = JSON.parse(data) as ServerFrame;
    } catch {
      return;
    }
    if (!frame || typeof frame !== 'object' || typeof frame.type !== 'string') return;
    switch (frame.type) {
      case 'pong':
        this.onPong(frame.payload);
        break;
      case 'ack':
        this.onAck(frame.payload);
        break;
      case 'error':
        this.onError(frame.payload);
        break;
      case 'session_state': {
        const snapshot = frame.payload.snapshotSeq;
        // First join, or a session that restarted from scratch (its seq went back): start from the snapshot.
        // On a rejoin with afterSeq the missed events follow and pass the seq check.
        if (this.sessionSeqValue === undefined || snapshot < this.sessionSeqValue) this.sessionSeqValue = snapshot;
        this.sessionParticipant = frame.payload.participantId;
        break;
      }
      default:
        if (isExecutionEvent(frame)) {
          if (!this.acceptExecutionEvent(frame)) return;
        } else if (isSessionEvent(frame) && typeof frame.seq === 'number') {
          if (this.sessionSeqValue !== undefined && frame.seq <= this.sessionSeqValue) {
            this.counters.duplicatesDropped++;
            return;
          }
          this.sessionSeqValue = frame.seq;
          if (frame.type === 'shared_execution') this.track(frame.payload.executionId);
        }
    }
    this.dispatch(frame);
  }

  /** Seq bookkeeping of an execution event; false for a duplicate. */
  private acceptExecutionEvent(frame: ExecutionEvent): boolean {
    const executionId = frame.payload.executionId;
    let s = this.streams.get(executionId);
    if (!s) {
      this.track(executionId);
      s = this.streams.get(executionId)!;
    }
    if (typeof frame.seq === 'number') {
      if (frame.seq <= s.lastSeq) {
        this.counters.duplicatesDropped++;
        return false;
      }
      s.lastSeq = frame.seq;
    }
    if (isTerminalEvent(frame)) s.done = true;
    return true;
  }

  private dispatch(frame: ServerFrame): void {
    if (isExecutionEvent(frame)) {
      const listeners = this.executionListeners.get(frame.payload.executionId);
      if (listeners) {
        for (const listener of [...listeners]) {
          try {
            listener(frame);
          } catch (error) {
            (this.options.onHandlerError ?? console.error)(error, frame.type);
          }
        }
      }
    }
    (this.emitter.emit as (event: string, ...args: unknown[]) => void)(frame.type, frame.payload, frame);
    this.emitter.emit('message', frame);
  }

  private takeInflight(id: string | null | undefined): Outgoing | undefined {
    if (!id) return undefined;
    const index = this.inflight.findIndex((o) => o.frame.id === id);
    if (index < 0) return undefined;
    return this.inflight.splice(index, 1)[0];
  }

  private onAck(ack: AckPayload): void {
    const out = this.takeInflight(ack.id);
    if (out?.frame.type === 'execute_query' && ack.executionId) {
      this.track(ack.executionId);
      // A repeated id: the server did not subscribe this socket again; resume from what we have.
      if (ack.duplicate && !this.isStreamDone(ack.executionId)) this.sendResume(ack.executionId);
    }
    if (out) for (const w of out.waiters) w.ack(ack);
  }

  private onError(body: ErrorBody): void {
    const out = this.takeInflight(body.ref);
    const error = RealtimeError.fromBody(body);
    if (out && (out.frame.type === 'resume' || out.frame.type === 'subscribe')) {
      const executionId = (out.frame.payload as { executionId: string }).executionId;
      if (body.code === 'unavailable' || body.code === 'rate_limited') {
        this.retryResume(executionId);
      } else {
        this.streamLost(executionId, error);
      }
    } else if (!body.ref && body.executionId) {
      // A stream the server follows for us ended (`not_found`) or was cut (`unavailable`: resume).
      const s = this.streams.get(body.executionId);
      if (s && !s.done) {
        if (body.code === 'not_found') this.streamLost(body.executionId, error);
        else if (body.code === 'unavailable') this.retryResume(body.executionId);
      }
    }
    if (out) for (const w of out.waiters) w.fail(error);
  }

  private streamLost(executionId: string, error: RealtimeError): void {
    const s = this.streams.get(executionId);
    if (s?.done) return;
    if (s) s.done = true;
    this.emitter.emit('stream_lost', { executionId, error });
  }

  private retryResume(executionId: string): void {
    const policy = this.reconnectPolicy || DEFAULT_RECONNECT;
    this.timers.timeout(() => {
      if (!this.isStreamDone(executionId) && this.isOpen) this.sendResume(executionId);
    }, backoffDelay(2, policy));
  }

  // ---- heartbeat -----------------------------------------------------------------------------------------

  private startHeartbeat(): void {
    const policy = this.heartbeatPolicy;
    if (!policy) return;
    this.sendPing();
    this.heartbeatTimer = this.timers.interval(() => this.sendPing(), policy.intervalMs);
  }

  private stopHeartbeat(): void {
    this.timers.clear(this.heartbeatTimer);
    this.timers.clear(this.pongTimer);
    this.heartbeatTimer = this.pongTimer = undefined;
  }

  private sendPing(waiter?: Waiter): void {
    const ws = this.ws;
    if (!ws || !this.isOpen) return;
    const timestamp = Date.now() * 1000 + (this.pingSeq++ % 1000); // unique per ping
    const sentAt = now();
    this.pings.set(timestamp, { sentAt, waiters: waiter ? [waiter] : [] });
    if (this.pings.size > 16) {
      // Unanswered while other frames kept the connection alive: count the oldest as lost.
      const [oldest, entry] = this.pings.entries().next().value as [number, { waiters: Waiter[] }];
      this.pings.delete(oldest);
      for (const w of entry.waiters) w.fail(new RealtimeError('timeout', 'ping not answered'));
      this.latencyStats = { ...this.latencyStats, lost: this.latencyStats.lost + 1 };
    }
    try {
      ws.send(JSON.stringify({ type: 'ping', payload: { timestamp } }));
    } catch {
      return;
    }
    this.counters.framesOut++;
    this.latencyStats = { ...this.latencyStats, sent: this.latencyStats.sent + 1 };
    if (this.pongTimer === undefined) this.armPongTimer(sentAt);
  }

  /** Fails the connection if nothing (no pong, no other frame) arrives within `pongTimeoutMs` of `since`. */
  private armPongTimer(since: number): void {
    const timeoutMs = this.heartbeatPolicy ? this.heartbeatPolicy.pongTimeoutMs : DEFAULT_HEARTBEAT.pongTimeoutMs;
    this.pongTimer = this.timers.timeout(() => {
      this.pongTimer = undefined;
      const ws = this.ws;
      if (!ws || this.pings.size === 0) return;
      if (now() - this.lastFrameAt < timeoutMs) {
        // Frames keep coming (the pong may be queued behind a stream): the connection is alive.
        this.armPongTimer(this.lastFrameAt);
        return;
      }
      this.latencyStats = { ...this.latencyStats, lost: this.latencyStats.lost + this.pings.size };
      this.emitter.emit('latency', this.latencyStats);
      this.abandon(ws, `no pong within ${timeoutMs} ms`);
    }, Math.max(1, timeoutMs - (now() - since)));
  }

  private onPong(pong: Pong): void {
    const key = typeof pong.timestamp === 'number' ? pong.timestamp : NaN;
    const entry = this.pings.get(key);
    if (!entry) return;
    this.pings.delete(key);
    const rtt = now() - entry.sentAt;
    // Older pings are answered in order: those still waiting were lost.
    for (const [k, p] of this.pings) {
      if (p.sentAt < entry.sentAt) {
        this.pings.delete(k);
        for (const w of p.waiters) w.fail(new RealtimeError('timeout', 'ping not answered'));
      }
    }
    this.timers.clear(this.pongTimer);
    this.pongTimer = undefined;
    const pending = [...this.pings.values()];
    if (pending.length > 0) this.armPongTimer(Math.min(...pending.map((p) => p.sentAt)));
    const s = this.latencyStats;
    this.latencyStats = {
      lastRttMs: rtt,
      avgRttMs: s.avgRttMs === null ? rtt : s.avgRttMs * (1 - EWMA_WEIGHT) + rtt * EWMA_WEIGHT,
      minRttMs: s.minRttMs === null ? rtt : Math.min(s.minRttMs, rtt),
      maxRttMs: s.maxRttMs === null ? rtt : Math.max(s.maxRttMs, rtt),
      jitterMs: s.lastRttMs === null ? 0 : s.jitterMs + (Math.abs(rtt - s.lastRttMs) - s.jitterMs) / 16,
      sent: s.sent,
      received: s.received + 1,
      lost: s.lost,
    };
    for (const w of entry.waiters) w.ack({});
    this.emitter.emit('latency', this.latencyStats);
  }

  private failPings(error: RealtimeError): void {
    const pings = [...this.pings.values()];
    this.pings.clear();
    for (const p of pings) for (const w of p.waiters) w.fail(error);
  }
}

