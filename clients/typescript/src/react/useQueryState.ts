import { useMemo, useSyncExternalStore } from 'react';
import type { QueryHandle, QueryState } from '../query.js';

/** Options of {@link useQueryState}. */
export interface UseQueryStateOptions {
  /**
   * Re-render at most this often (ms) for progress and row counters; a change of `status` (started, streaming,
   * the end) renders at once. Default 50; 0: on every change.
   */
  notifyIntervalMs?: number;
}

interface StateStore {
  subscribe: (listener: () => void) => () => void;
  get: () => QueryState | null;
}

function throttledState(handle: QueryHandle | null, ms: number): StateStore {
  let published: QueryState | null = handle?.state ?? null;
  return {
    get: () => published,
    subscribe: (listener) => {
      if (!handle) return () => {};
      let timer: ReturnType<typeof setTimeout> | undefined;
      const publish = () => {
        if (timer !== undefined) clearTimeout(timer);
        timer = undefined;
        if (handle.state === published) return;
        published = handle.state;
        listener();
      };
      const off = handle.subscribe(() => {
        const s = handle.state;
        if (ms <= 0 || s.status !== published?.status || s.outcome) publish();
        else timer ??= setTimeout(publish, ms);
      });
      publish(); // changes between the render and this subscription
      return () => {
        off();
        if (timer !== undefined) clearTimeout(timer);
      };
    },
  };
}

/**
 * A {@link QueryHandle}'s {@link QueryState}, re-rendering on change — throttled while rows stream in (a
 * 1M-row result is thousands of state changes), immediately when the status changes. `null` without a handle.
 */
export function useQueryState(handle: QueryHandle | null | undefined, options: UseQueryStateOptions = {}): QueryState | null {
  const ms = options.notifyIntervalMs ?? 50;
  const store = useMemo(() => throttledState(handle ?? null, ms), [handle, ms]);
  return useSyncExternalStore(store.subscribe, store.get, store.get);
}
