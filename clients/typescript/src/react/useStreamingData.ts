import { useCallback, useEffect, useMemo, useSyncExternalStore } from 'react';
import type { QueryHandle } from '../query.js';
import { RowStore, type RowStoreSnapshot } from '../rows.js';

/** Options of {@link useStreamingData}. */
export interface UseStreamingDataOptions {
  /**
   * Re-render at most this often (ms) while rows stream in; the end renders at once. Default 50. (For a
   * `RowStore` source, the store's own `notifyIntervalMs` applies.)
   */
  notifyIntervalMs?: number;
}

/** What {@link useStreamingData} returns. */
export interface UseStreamingDataResult<Row> {
  /** Counters and metadata; a new object when something changed (`version` bumps). */
  readonly streamingData: RowStoreSnapshot;
  /**
   * Every row so far, in one array **mutated in place** (no copies: a million rows stay cheap). Re-read it when
   * `streamingData.version` changes; memoize on the version, not on the array.
   */
  readonly rows: readonly Row[];
  /** The rows array (the guide's name; no flattening, no copy). */
  readonly getAllData: () => readonly Row[];
  /** A copy of rows `[start, end)`: the visible window of a virtualized table. */
  readonly getRows: (start: number, end: number) => Row[];
  /** 0..100. */
  readonly getProgress: () => number;
  /** The store read: the given one, or the hook's own for a handle. */
  readonly store: RowStore<Row>;
}

/**
 * The guide's `useStreamingData`: accumulates a query's `data_chunk` rows. Rows are appended in place to one
 * array with a version counter (see {@link RowStore}), so streaming a million rows is O(n) overall and
 * re-renders are throttled to `notifyIntervalMs`.
 *
 * `source` is either
 * - a {@link QueryHandle}: the hook attaches its own store **when it renders with the handle**. Fine for a
 *   handle made in an event handler of this component (a click: React renders before any network event), not
 *   for one made where events can follow at once — e.g. in a socket event handler;
 * - a {@link RowStore} that is already attached (e.g. `useSharedExecutions(session).latest?.rows`, attached by the
 *   session when the `shared_execution` announcement arrived): the hook only reads it, and does not dispose it.
 */
export function useStreamingData<Row = unknown>(
  source: QueryHandle | RowStore<Row> | null | undefined,
  options: UseStreamingDataOptions = {},
): UseStreamingDataResult<Row> {
  const external = source instanceof RowStore ? source : null;
  const handle = source instanceof RowStore ? null : (source ?? null);
  const own = useMemo(() => new RowStore<Row>({ notifyIntervalMs: options.notifyIntervalMs ?? 50 }), [options.notifyIntervalMs]);
  // Attach as soon as the handle is seen (during render), so no chunk slips by before the effect runs.
  if (handle && own.source !== handle) own.attach(handle, { silent: true });
  useEffect(() => {
    if (!handle) {
      if (own.source) own.reset();
      return;
    }
    own.attach(handle); // a no-op when already following it (re-listens after StrictMode's remount)
    return () => own.detach();
  }, [handle, own]);
  useEffect(() => () => own.dispose(), [own]);
  const store = external ?? own;
  const streamingData = useSyncExternalStore(store.subscribe, store.getSnapshot, store.getSnapshot);
  const getAllData = useCallback(() => store.rows, [store]);
  const getRows = useCallback((start: number, end: number) => store.getRows(start, end), [store]);
  const getProgress = useCallback(() => store.getSnapshot().progress, [store]);
  return { streamingData, rows: store.rows, getAllData, getRows, getProgress, store };
}
