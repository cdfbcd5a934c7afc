import type {
  Column,
  DataChunk,
  DataStreamComplete,
  DataStreamStart,
  QueryErrorDetail,
  QueryOptions,
  QueryProgress,
  QueryResult,
  QueryStarted,
  RowFormat,
} from './generated/protocol.js';
import {
  RealtimeError,
  type ExecutionEvent,
  type ExecutionEventType,
  type ServerFrameOf,
  type ServerPayloads,
} from './protocol.js';
import type { StreamHost } from './stream-host.js';
import { Emitter } from './util.js';

/** How a query ended. {@link QueryHandle.done} resolves with it (it never rejects). */
export type QueryOutcome =
  | { readonly status: 'completed'; readonly executionId: string; readonly result: QueryResult }
  | { readonly status: 'error'; readonly executionId: string; readonly error: QueryErrorDetail }
  | { readonly status: 'cancelled'; readonly executionId: string | undefined }
  /** The gateway refused the request (`bad_request`, `rate_limited`, `unavailable`, …): nothing ran. */
  | { readonly status: 'rejected'; readonly executionId: undefined; readonly error: RealtimeError }
  /** The stream cannot be followed any more (`not_found` on resume, client closed, …). */
  | { readonly status: 'lost'; readonly executionId: string | undefined; readonly error: RealtimeError };

/** Where a query is. */
export type QueryStatus =
  | 'pending' // sent (or queued while offline), not acknowledged yet
  | 'queued' // acknowledged: in the job queue
  | 'running' // a worker took it
  | 'streaming' // rows are coming
  | QueryOutcome['status'];

/** A snapshot of a query's progress; a new object on every change (usable with `useSyncExternalStore`). */
export interface QueryState {
  readonly status: QueryStatus;
  /** The client message id of `execute_query` (execute mode). */
  readonly clientId: string | undefined;
  readonly executionId: string | undefined;
  /** 0..100, never decreasing. */
  readonly progress: number;
  /** The server's step label (`queued`, `executing`, `streaming`, …). */
  readonly step: string;
  /** While queued: its place in the job queue (1: next), as its gateway last said; `null` otherwise. */
  readonly queuePosition: number | null;
  readonly columns: readonly Column[];
  readonly rowFormat: RowFormat | undefined;
  /**
   * The result's rows from `data_stream_start` on: exact when `totalRowsExact`, else the server's estimate
   * (never below the rows it had read); exact at the end. `null` before the stream starts.
   */
  readonly totalRows: number | null;
  /** Whether {@link totalRows} is exact (show an estimate as "≈"). */
  readonly totalRowsExact: boolean;
  /** The planner's own estimate, when it gave one. */
  readonly estimatedRows: number | null;
  /** Rows received so far (the handle counts them; keep them with a `RowStore`). */
  readonly rowsReceived: number;
  readonly chunksReceived: number;
  /** The last `seq` seen. */
  readonly lastSeq: number;
  readonly result: QueryResult | undefined;
  readonly error: QueryErrorDetail | RealtimeError | undefined;
  /** `query_started` / terminal event timestamps (server clock, ms). */
  readonly startTime: number | undefined;
  readonly endTime: number | undefined;
  readonly outcome: QueryOutcome | undefined;
}

/** Callbacks of a query (all optional). */
export interface QueryCallbacks {
  /** Every event of the execution, in `seq` order, once each. */
  onEvent?: (event: ExecutionEvent) => void;
  onStarted?: (payload: QueryStarted) => void;
  onProgress?: (payload: QueryProgress) => void;
  onStreamStart?: (payload: DataStreamStart) => void;
  /** One `data_chunk`'s rows. */
  onChunk?: (rows: unknown[], payload: DataChunk) => void;
  onStreamComplete?: (payload: DataStreamComplete) => void;
  /** The end, whatever it is. */
  onDone?: (outcome: QueryOutcome) => void;
}

/** Options of {@link RealtimeClient.executeQuery}: the protocol's `options` plus callbacks. */
export interface ExecuteOptions extends QueryOptions, QueryCallbacks {
  /** The client message id (default: a uuid). Reuse one to make a retry idempotent. */
  id?: string;
  /** W3C trace context for the query's trace. */
  traceparent?: string;
  /**
   * Keeps the events that arrive before anyone iterates ({@link QueryHandle.events} / `for await`), so an
   * iterator started later still begins at the first event. The buffer holds events only until an iterator takes
   * them over (an iterator's own queue holds what it has not read yet).
   *
   * - default (not set): **bounded, and only while nobody else consumes the events**. Without callbacks the
   *   handle buffers at most {@link DEFAULT_BUFFER_LIMIT} rows (each other event counts as one), and drops the
   *   buffer as soon as a push consumer appears: {@link QueryHandle.on}, {@link QueryHandle.subscribe}, or a
   *   `RowStore` attached to the handle (which uses `on`). With any callback option, nothing is buffered.
   *   So `executeQuery(q)` + a `RowStore`/`useStreamingData`/`on` never holds a 1M-row result twice.
   * - `false`: no buffer (an iterator sees the events from when it starts).
   * - a number: at most that many rows (plus one per other event), kept even when other consumers attach.
   * - `true`: every event until someone iterates, unbounded (a whole result in memory if nobody reads it).
   *
   * When a bounded buffer overflows it is released, and an iterator started afterwards throws
   * `RealtimeError('buffer_overflow')` instead of silently skipping events; callbacks, `on`, a `RowStore`,
   * {@link QueryHandle.state} and {@link QueryHandle.done} are unaffected.
   */
  buffer?: boolean | number;
}

/** The default bound of a handle's event buffer: rows of `data_chunk`s, plus one per other event. */
export const DEFAULT_BUFFER_LIMIT = 100_000;

/** Options of {@link RealtimeClient.subscribe} and {@link RealtimeClient.watch}. */
export interface SubscribeOptions extends QueryCallbacks {
  /** Replay the events after this `seq` (default 0: from the start). */
  afterSeq?: number;
  /** See {@link ExecuteOptions.buffer} (same defaults). */
  buffer?: boolean | number;
}

type HandleEvents = { [K in ExecutionEventType]: (payload: ServerPayloads[K], frame: ServerFrameOf<K>) => void } & {
  state: (state: QueryState) => void;
};

const INITIAL: QueryState = {
  status: 'pending',
  clientId: undefined,
  executionId: undefined,
  progress: 0,
  step: 'pending',
  queuePosition: null,
  columns: [],
  rowFormat: undefined,
  totalRows: null,
  totalRowsExact: false,
  estimatedRows: null,
  rowsReceived: 0,
  chunksReceived: 0,
  lastSeq: 0,
  result: undefined,
  error: undefined,
  startTime: undefined,
  endTime: undefined,
  outcome: undefined,
};

/**
 * One execution followed by a {@link RealtimeClient}: its events (async iterable, callbacks, `on`), its state
 * snapshot ({@link state} + {@link subscribe}, for `useSyncExternalStore`), {@link done} and {@link cancel}.
 *
 * Events survive reconnects: the client resumes the execution from its last `seq` and drops repeats.
 */
export class QueryHandle implements AsyncIterable<ExecutionEvent> {
  /** Resolves with the execution id once the gateway accepted the query (rejects if it refused it). */
  readonly accepted: Promise<string>;
  /** Resolves with the outcome on the terminal event (or when the stream is lost). Never rejects. */
  readonly done: Promise<QueryOutcome>;

  private current: QueryState;
  private readonly listeners = new Set<() => void>();
  private readonly emitter = new Emitter<HandleEvents>();
  private readonly cleanups: Array<() => void> = [];
  private resolveAccepted!: (executionId: string) => void;
  private rejectAccepted!: (error: RealtimeError) => void;
  private resolveDone!: (outcome: QueryOutcome) => void;
  private buffer: ExecutionEvent[] | undefined;
  /** The buffer's bound (rows + other events) and what it holds now. */
  private bufferLimit = Infinity;
  private bufferCost = 0;
  /** The default buffer: dropped when a push consumer (`on`, `subscribe`) appears. */
  private bufferAuto = false;
  private bufferOverflowed = false;
  private iterators = new Set<{ queue: ExecutionEvent[]; wake?: () => void }>();
  private cancelRequested = false;

  private constructor(
    private readonly client: StreamHost,
    private readonly callbacks: QueryCallbacks,
    buffer: BufferMode,
    clientId: string | undefined,
  ) {
    this.current = { ...INITIAL, clientId };
    this.accepted = new Promise<string>((resolve, reject) => {
      this.resolveAccepted = resolve;
      this.rejectAccepted = reject;
    });
    this.accepted.catch(() => {}); // observed through `done` as well: never an unhandled rejection
    this.done = new Promise((resolve) => (this.resolveDone = resolve));
    if (buffer) {
      this.buffer = [];
      this.bufferLimit = buffer.limit;
      this.bufferAuto = buffer.auto;
    }
    this.cleanups.push(
      client.on('stream_lost', ({ executionId, error }) => {
        if (executionId === this.current.executionId) this.finish({ status: 'lost', executionId, error });
      }),
      client.on('status', (status) => {
        if (status.state === 'closed') {
          const error = new RealtimeError('closed', `connection closed (${status.code}): ${status.reason}`);
          if (this.current.executionId === undefined) this.rejectAccepted(error);
          this.finish({ status: 'lost', executionId: this.current.executionId, error });
        }
      }),
    );
  }

  /** @internal */
  static execute(client: StreamHost, query: string, options: ExecuteOptions): QueryHandle {
    const { id, traceparent, buffer, onEvent, onStarted, onProgress, onStreamStart, onChunk, onStreamComplete, onDone, ...queryOptions } =
      options;
    const callbacks = { onEvent, onStarted, onProgress, onStreamStart, onChunk, onStreamComplete, onDone };
    const handle = new QueryHandle(client, callbacks, bufferMode(buffer, callbacks), undefined);
    const hasOptions = Object.values(queryOptions).some((v) => v !== undefined);
    const clientId = client.sendWithWaiter(
      'execute_query',
      hasOptions ? { query, options: queryOptions } : { query },
      {
        // Runs synchronously when the ack arrives, before the execution's first event is dispatched.
        ack: (ack) => {
          if (ack.executionId) handle.attach(ack.executionId);
          else handle.finish({ status: 'rejected', executionId: undefined, error: new RealtimeError('internal', 'ack without executionId') });
        },
        fail: (error) => {
          handle.rejectAccepted(error);
          if (handle.cancelRequested && error.code === 'closed') {
            handle.finish({ status: 'cancelled', executionId: undefined });
          } else if (error.code === 'closed') {
            handle.finish({ status: 'lost', executionId: undefined, error });
          } else {
            handle.finish({ status: 'rejected', executionId: undefined, error });
          }
        },
      },
      { id, traceparent },
    );
    handle.update({ clientId });
    return handle;
  }

  /** @internal */
  static subscribe(client: StreamHost, executionId: string, options: SubscribeOptions): QueryHandle {
    const handle = QueryHandle.follow(client, executionId, options);
    client.sendWithWaiter(
      'subscribe',
      { executionId, afterSeq: options.afterSeq ?? 0 },
      {
        ack: () => {},
        fail: (error) => {
          handle.rejectAccepted(error);
          // not_found / forbidden arrive as `stream_lost` too; anything else ends the handle here.
          handle.finish({ status: 'lost', executionId, error });
        },
      },
    );
    return handle;
  }

  /** @internal */
  static watch(client: StreamHost, executionId: string, options: SubscribeOptions): QueryHandle {
    return QueryHandle.follow(client, executionId, options);
  }

  private static follow(client: StreamHost, executionId: string, options: SubscribeOptions): QueryHandle {
    const { afterSeq, buffer, ...callbacks } = options;
    const handle = new QueryHandle(client, callbacks, bufferMode(buffer, callbacks), undefined);
    client.track(executionId, afterSeq ?? 0);
    handle.attach(executionId);
    return handle;
  }

  // ---- public API ----------------------------------------------------------------------------------------

  /** The state now (a new object after every change). */
  get state(): QueryState {
    return this.current;
  }

  /** The execution id, once known. */
  get executionId(): string | undefined {
    return this.current.executionId;
  }

  /** Calls `listener` after every state change; returns the unsubscribe function (`useSyncExternalStore` shape). */
  subscribe(listener: () => void): () => void {
    this.dropAutoBuffer();
    this.listeners.add(listener);
    return () => this.listeners.delete(listener);
  }

  /**
   * Listens to one event type of this execution (or `state`); returns the unsubscribe function. Like
   * {@link subscribe}, it releases the default event buffer (see {@link ExecuteOptions.buffer}).
   */
  on<E extends keyof HandleEvents>(event: E, handler: HandleEvents[E]): () => void {
    this.dropAutoBuffer();
    return this.emitter.on(event, handler);
  }

  /**
   * The execution's events as an async iterator, ending after the terminal event (or when the stream is lost).
   * The first iterator starts from the first event while the buffer holds them (see {@link ExecuteOptions.buffer});
   * otherwise from now. Throws `RealtimeError('buffer_overflow')` if the bounded buffer overflowed before.
   */
  events(): AsyncIterableIterator<ExecutionEvent> {
    const overflowed = this.bufferOverflowed && this.buffer === undefined;
    const reader: { queue: ExecutionEvent[]; wake?: () => void } = { queue: this.buffer ?? [] };
    this.buffer = undefined;
    this.bufferOverflowed = false;
    if (!overflowed) this.iterators.add(reader);
    let head = 0;
    let failed = false;
    const iterator: AsyncIterableIterator<ExecutionEvent> = {
      next: async () => {
        if (overflowed) {
          if (failed) return { value: undefined, done: true };
          failed = true;
          throw new RealtimeError(
            'buffer_overflow',
            `more than ${this.bufferLimit} rows/events arrived before anyone iterated: iterate at once, use callbacks, ` +
              'on() or a RowStore, or pass a larger `buffer` limit (or `buffer: true`)',
          );
        }
        for (;;) {
          if (head < reader.queue.length) {
            const value = reader.queue[head]!;
            reader.queue[head++] = undefined as unknown as ExecutionEvent; // let it be collected
            if (head > 1024 && head * 2 > reader.queue.length) {
              reader.queue.splice(0, head);
              head = 0;
            }
            return { value, done: false };
          }
          if (this.current.outcome || !this.iterators.has(reader)) {
            this.iterators.delete(reader);
            return { value: undefined, done: true };
          }
          await new Promise<void>((resolve) => (reader.wake = resolve));
          reader.wake = undefined;
        }
      },
      return: async () => {
        this.iterators.delete(reader);
        reader.queue.length = 0;
        return { value: undefined, done: true };
      },
      [Symbol.asyncIterator]() {
        return iterator;
      },
    };
    return iterator;
  }

  [Symbol.asyncIterator](): AsyncIterator<ExecutionEvent> {
    return this.events();
  }

  /**
   * Cancels the query (`cancel_query`): the SQL stops on the database. A query still waiting in the offline queue
   * is dropped without being sent. Resolves once the gateway accepted the cancel; the handle ends with
   * `cancelled` (or with whatever came first).
   */
  async cancel(): Promise<void> {
    if (this.current.outcome) return;
    this.cancelRequested = true;
    const clientId = this.current.clientId;
    if (this.current.executionId === undefined && clientId !== undefined) {
      if (this.client.unqueue(clientId, new RealtimeError('closed', 'cancelled before it was sent'))) return;
    }
    let executionId: string;
    try {
      executionId = await this.accepted;
    } catch {
      return;
    }
    if (this.current.outcome) return;
    try {
      await this.client.request('cancel_query', { executionId });
    } catch (error) {
      // Already finished: the terminal event says how.
      if (error instanceof RealtimeError && (error.code === 'conflict' || error.code === 'closed')) return;
      throw error;
    }
  }

  /** Stops listening (the client keeps following the stream until its end). Ends iterators. */
  dispose(): void {
    for (const cleanup of this.cleanups.splice(0)) cleanup();
    this.emitter.clear();
    this.listeners.clear();
    for (const reader of this.iterators) reader.wake?.();
    this.iterators.clear();
  }

  // ---- internals -----------------------------------------------------------------------------------------

  private attach(executionId: string): void {
    this.update({ executionId, status: 'queued', step: 'queued' });
    this.resolveAccepted(executionId);
    this.cleanups.push(this.client.onExecution(executionId, (frame) => this.onEvent(frame)));
    if (this.client.isStreamDone(executionId) && !this.current.outcome) {
      // Known and finished already (e.g. a duplicate ack after the end): nothing more will come.
      const lastSeq = this.client.lastSeq(executionId) ?? 0;
      if (lastSeq > 0) this.update({ lastSeq });
    }
  }

  private update(patch: Partial<QueryState>): void {
    this.current = { ...this.current, ...patch };
    for (const listener of [...this.listeners]) listener();
    this.emitter.emit('state', this.current);
  }

  private onEvent(frame: ExecutionEvent): void {
    if (this.current.outcome) return;
    const seq = frame.seq ?? this.current.lastSeq;
    const cb = this.callbacks;
    switch (frame.type) {
      case 'query_started':
        this.update({
          status: 'running',
          step: 'started',
          queuePosition: null,
          startTime: frame.payload.timestamp,
          lastSeq: seq,
        });
        cb.onStarted?.(frame.payload);
        break;
      case 'query_progress':
        if (frame.payload.step === 'queued') {
          // The gateway's own frame (no seq) while the job waits; never after the worker's first event.
          if (this.current.status === 'queued' || this.current.status === 'pending') {
            this.update({ step: 'queued', queuePosition: frame.payload.queuePosition ?? null });
          }
          cb.onProgress?.(frame.payload);
          break;
        }
        this.update({
          progress: Math.max(this.current.progress, frame.payload.progress),
          step: frame.payload.step,
          lastSeq: seq,
        });
        cb.onProgress?.(frame.payload);
        break;
      case 'data_stream_start':
        this.update({
          status: 'streaming',
          columns: frame.payload.columns,
          rowFormat: frame.payload.rowFormat,
          totalRows: frame.payload.totalRows,
          totalRowsExact: frame.payload.totalRowsExact,
          estimatedRows: frame.payload.estimatedRows ?? null,
          lastSeq: seq,
        });
        cb.onStreamStart?.(frame.payload);
        break;
      case 'data_chunk':
        this.update({
          status: 'streaming',
          rowsReceived: this.current.rowsReceived + frame.payload.data.length,
          chunksReceived: this.current.chunksReceived + 1,
          lastSeq: seq,
        });
        cb.onChunk?.(frame.payload.data, frame.payload);
        break;
      case 'data_stream_complete':
        this.update({ totalRows: frame.payload.totalRows, totalRowsExact: true, lastSeq: seq });
        cb.onStreamComplete?.(frame.payload);
        break;
      default:
        this.update({ lastSeq: seq });
    }
    cb.onEvent?.(frame);
    (this.emitter.emit as (event: string, ...args: unknown[]) => void)(frame.type, frame.payload, frame);
    this.push(frame);
    const executionId = frame.payload.executionId;
    switch (frame.type) {
      case 'query_completed':
        this.finish({ status: 'completed', executionId, result: frame.payload.result }, frame.payload.timestamp);
        break;
      case 'query_error':
        this.finish({ status: 'error', executionId, error: frame.payload.error }, frame.payload.timestamp);
        break;
      case 'query_cancelled':
        this.finish({ status: 'cancelled', executionId }, frame.payload.timestamp);
        break;
    }
  }

  private dropAutoBuffer(): void {
    if (!this.bufferAuto) return;
    this.bufferAuto = false;
    this.buffer = undefined;
    this.bufferCost = 0;
  }

  private push(frame: ExecutionEvent): void {
    if (this.buffer) {
      this.bufferCost += frame.type === 'data_chunk' ? Math.max(1, frame.payload.data.length) : 1;
      if (this.bufferCost > this.bufferLimit) {
        // Release it rather than hold an unbounded result, and say so to whoever iterates later.
        this.buffer = undefined;
        this.bufferCost = 0;
        this.bufferOverflowed = true;
      } else {
        this.buffer.push(frame);
      }
    }
    for (const reader of this.iterators) {
      reader.queue.push(frame);
      reader.wake?.();
    }
  }

  private finish(outcome: QueryOutcome, endTime: number = Date.now()): void {
    if (this.current.outcome) return;
    const patch: { -readonly [K in keyof QueryState]?: QueryState[K] } = { status: outcome.status, outcome, endTime };
    if (outcome.status === 'completed') Object.assign(patch, { result: outcome.result, progress: 100, step: 'completed' });
    else if (outcome.status === 'cancelled') patch.step = 'cancelled';
    else Object.assign(patch, { error: outcome.error, step: outcome.status });
    this.update(patch);
    for (const cleanup of this.cleanups.splice(0)) cleanup();
    for (const reader of this.iterators) reader.wake?.();
    this.resolveDone(outcome);
    this.callbacks.onDone?.(outcome);
  }
}

/** How a handle buffers events for a later iterator (`undefined`: not at all). */
type BufferMode = { readonly limit: number; readonly auto: boolean } | undefined;

function bufferMode(buffer: boolean | number | undefined, callbacks: QueryCallbacks): BufferMode {
  if (buffer === undefined) {
    const hasCallbacks = Object.values(callbacks).some((c) => c !== undefined);
    return hasCallbacks ? undefined : { limit: DEFAULT_BUFFER_LIMIT, auto: true };
  }
  if (buffer === true) return { limit: Infinity, auto: false };
  if (buffer === false) return undefined;
  return { limit: Math.max(0, buffer), auto: false };
}
