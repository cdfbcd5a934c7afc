import { useCallback, useEffect, useMemo, useSyncExternalStore } from 'react';
import type { QueryHandle } from '../query.js';
import { RowStore, type RowStoreSnapshot } from '../rows.js';

/** Options of {@link useStreamingData}. */
export interface UseStreamingDataOptions {
  /** Re-render at most this often (ms) while rows stream in; the end renders at once. Default 50. */
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
  readonly store: RowStore<Row>;
}

/**
 * The guide's `useStreamingData`: accumulates a query's `data_chunk` rows. Rows are appended in place to one
 * array with a version counter (see {@link RowStore}), so streaming a million rows is O(n) overall and
 * re-renders are throttled to `notifyIntervalMs`.
 */
export function useStreamingData<Row = unknown>(
  source: QueryHandle | null | undefined,
  options: UseStreamingDataOptions = {},
): UseStreamingDataResult<Row> {
  const store = useMemo(() => new RowStore<Row>({ notifyIntervalMs: options.notifyIntervalMs ?? 50 }), [options.notifyIntervalMs]);
  // Attach as soon as the handle is seen (during render), so no chunk slips by before the effect runs.
  if (source && store.source !== source) store.attach(source, { silent: true });
  useEffect(() => {
    if (!source) {
      if (store.source) store.reset();
      return;
    }
    store.attach(source); // a no-op when already following it (re-listens after StrictMode's remount)
    return () => store.detach();
  }, [source, store]);
  useEffect(() => () => store.dispose(), [store]);
  const streamingData = useSyncExternalStore(store.subscribe, store.getSnapshot, store.getSnapshot);
  const getAllData = useCallback(() => store.rows, [store]);
  const getRows = useCallback((start: number, end: number) => store.getRows(start, end), [store]);
  const getProgress = useCallback(() => store.getSnapshot().progress, [store]);
  return { streamingData, rows: store.rows, getAllData, getRows, getProgress, store };
}
