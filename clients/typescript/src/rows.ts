import type { Column, QueryErrorDetail, RowFormat } from './generated/protocol.js';
import type { RealtimeError } from './protocol.js';
import type { QueryHandle, QueryOutcome } from './query.js';
import { Timers } from './util.js';

/** A cheap, immutable view of a {@link RowStore} (a new object per notification). */
export interface RowStoreSnapshot {
  /** Bumped on every change: memoize derived data on it. */
  readonly version: number;
  readonly executionId: string | undefined;
  readonly columns: readonly Column[];
  readonly rowFormat: RowFormat | undefined;
  /** Rows received so far. */
  readonly receivedRows: number;
  readonly chunkCount: number;
  /**
   * The result's rows: from `data_stream_start` on, exact (`totalRowsExact`) or the server's estimate
   * (never below the rows it had read); exact from `data_stream_complete`. `null` before the stream starts.
   */
  readonly totalRows: number | null;
  /** Whether {@link totalRows} is exact; show an estimate as "≈". */
  readonly totalRowsExact: boolean;
  /** The planner's own estimate, when it gave one. */
  readonly estimatedRows: number | null;
  /** 0..100: received rows against the total (an estimate stops at 99), 100 once complete. */
  readonly progress: number;
  /** The data stream is complete (`data_stream_complete`), or the query ended. */
  readonly completed: boolean;
  readonly error: QueryErrorDetail | RealtimeError | undefined;
}

/** Options of {@link RowStore}. */
export interface RowStoreOptions {
  /**
   * Notify listeners at most this often (ms) while rows stream in; the end is always notified at once.
   * Default 0: after every chunk.
   */
  notifyIntervalMs?: number;
}

/**
 * Accumulates a query's rows without copying: chunks are appended in place to one array ({@link rows}), and
 * a {@link version} counter tells readers something changed. A million rows cost a million pushes, not
 * a copy per chunk. Framework-free; `useStreamingData` wraps it for React.
 */
export class RowStore<Row = unknown> {
  /** Every row received, in order. Mutated in place: read it, do not keep a reference across versions for diffing. */
  readonly rows: Row[] = [];
  /** Start offset in {@link rows} of every chunk. */
  readonly chunkOffsets: number[] = [];

  /** The latest state; published to readers by notify(). */
  private snap: RowStoreSnapshot = emptySnapshot(0);
  private published: RowStoreSnapshot = this.snap;
  private readonly listeners = new Set<() => void>();
  private handle: QueryHandle | undefined;
  private readonly offs: Array<() => void> = [];
  private readonly timers = new Timers();
  private pending: ReturnType<typeof setTimeout> | undefined;
  private dirty = false;
  private readonly intervalMs: number;
  private silent = false;

  constructor(options: RowStoreOptions = {}) {
    this.intervalMs = options.notifyIntervalMs ?? 0;
  }

  /** The current snapshot (stable between notifications). */
  getSnapshot = (): RowStoreSnapshot => this.published;

  /** `useSyncExternalStore`-shaped subscription. */
  subscribe = (listener: () => void): (() => void) => {
    this.listeners.add(listener);
    return () => this.listeners.delete(listener);
  };

  /** The change counter (of the latest state, which may be ahead of the published snapshot while throttled). */
  get version(): number {
    return this.snap.version;
  }

  /** A copy of rows `[start, end)` (for a virtualized table's visible window). */
  getRows(start = 0, end = this.rows.length): Row[] {
    return this.rows.slice(start, end);
  }

  /** Rows of chunk `index`. */
  getChunk(index: number): Row[] {
    const start = this.chunkOffsets[index];
    if (start === undefined) return [];
    const end = this.chunkOffsets[index + 1] ?? this.rows.length;
    return this.rows.slice(start, end);
  }

  /** The handle whose rows this store holds, if any. */
  get source(): QueryHandle | undefined {
    return this.handle;
  }

  /**
   * Follows `handle`'s rows (from now on: attach right after creating the handle). A different handle empties
   * the store first; the same one again only re-listens (after {@link detach}) and keeps the rows.
   */
  attach(handle: QueryHandle, options: { silent?: boolean } = {}): void {
    if (this.handle !== handle) {
      // `silent`: publish the new snapshot without calling listeners (attaching while React renders).
      this.silent = options.silent ?? false;
      try {
        this.reset();
        this.handle = handle;
        const state = handle.state;
        this.set({ executionId: state.executionId, columns: state.columns, rowFormat: state.rowFormat }, true);
      } finally {
        this.silent = false;
      }
    }
    if (this.offs.length > 0) return;
    this.offs.push(
      handle.on('state', (s) => {
        if (s.executionId !== this.snap.executionId) this.set({ executionId: s.executionId }, true);
        if (s.outcome && !this.snap.completed) this.ended(s.outcome);
      }),
      handle.on('data_stream_start', (p) => {
        this.set(
          {
            columns: p.columns,
            rowFormat: p.rowFormat,
            totalRows: p.totalRows,
            totalRowsExact: p.totalRowsExact,
            estimatedRows: p.estimatedRows ?? null,
          },
          true,
        );
      }),
      handle.on('data_chunk', (p) => this.append(p.data as Row[])),
      handle.on('data_stream_complete', (p) =>
        this.set({ totalRows: p.totalRows, totalRowsExact: true, completed: true }, true),
      ),
    );
    const outcome = handle.state.outcome;
    if (outcome && !this.snap.completed) this.ended(outcome);
  }

  /** Stops listening to the handle (rows and the handle are kept; {@link attach} it again to go on). */
  detach(): void {
    for (const off of this.offs.splice(0)) off();
  }

  private ended(outcome: QueryOutcome): void {
    const error = outcome.status === 'error' || outcome.status === 'rejected' || outcome.status === 'lost' ? outcome.error : undefined;
    this.set({ completed: true, error }, true);
  }

  /** Appends one chunk of rows. */
  append(chunk: readonly Row[]): void {
    this.chunkOffsets.push(this.rows.length);
    const rows = this.rows;
    for (let i = 0; i < chunk.length; i++) rows.push(chunk[i]!);
    this.set({}, false);
  }

  /** Drops every row and stops following the current handle. */
  reset(): void {
    this.detach();
    this.handle = undefined;
    this.rows.length = 0;
    this.chunkOffsets.length = 0;
    this.timers.clearAll();
    this.pending = undefined;
    this.snap = emptySnapshot(this.snap.version + 1);
    this.notify();
  }

  /** Stops listening and clears timers (rows are kept). */
  dispose(): void {
    this.detach();
    this.timers.clearAll();
    this.pending = undefined;
  }

  private set(patch: Partial<RowStoreSnapshot>, immediate: boolean): void {
    const next = { ...this.snap, ...patch };
    const receivedRows = this.rows.length;
    const total = next.totalRows ?? next.estimatedRows;
    // An estimate may be low: progress waits at 99 for the end.
    const progress = next.completed ? 100 : total ? Math.min(99, (receivedRows / total) * 100) : 0;
    this.snap = { ...next, receivedRows, chunkCount: this.chunkOffsets.length, progress, version: this.snap.version + 1 };
    if (immediate || this.intervalMs <= 0) {
      this.timers.clear(this.pending);
      this.pending = undefined;
      this.notify();
    } else {
      this.dirty = true;
      this.pending ??= this.timers.timeout(() => {
        this.pending = undefined;
        if (this.dirty) this.notify();
      }, this.intervalMs);
    }
  }

  private notify(): void {
    this.dirty = false;
    this.published = this.snap;
    if (this.silent) return;
    for (const listener of [...this.listeners]) listener();
  }
}

function emptySnapshot(version: number): RowStoreSnapshot {
  return {
    version,
    executionId: undefined,
    columns: [],
    rowFormat: undefined,
    receivedRows: 0,
    chunkCount: 0,
    totalRows: null,
    totalRowsExact: false,
    estimatedRows: null,
    progress: 0,
    completed: false,
    error: undefined,
  };
}
