import { useCallback, useMemo, useState, useSyncExternalStore } from 'react';
import type { RealtimeClient, RealtimeClientOptions } from '../client.js';
import type { ExecuteOptions, QueryHandle, QueryState } from '../query.js';
import { toConnectionState, useClientFrom, useConnectionStatus, type ConnectionState } from './useRealtimeClient.js';

/** What {@link useQueryExecution} returns. */
export interface UseQueryExecutionResult {
  /** The state of the latest query (`null` before the first). */
  readonly queryState: QueryState | null;
  /** The latest query's handle: pass it to `useStreamingData` for its rows. */
  readonly handle: QueryHandle | null;
  readonly connectionState: ConnectionState;
  /**
   * Runs a query. Allowed while disconnected: it is queued and sent, exactly once, when the connection is back.
   */
  readonly executeQuery: (query: string, options?: ExecuteOptions) => QueryHandle;
  /** Cancels the latest query. */
  readonly cancelQuery: () => Promise<void>;
  readonly client: RealtimeClient;
}

const noSubscribe = () => () => {};

/**
 * The guide's `useQueryExecution`: runs queries on `/ws/query` and tracks the latest one's state (every event
 * counted, none lost between renders). Pass a shared client, or options to own one.
 */
export function useQueryExecution(source: RealtimeClient | RealtimeClientOptions): UseQueryExecutionResult {
  const client = useClientFrom(source, { path: '/ws/query' });
  const status = useConnectionStatus(client);
  const [handle, setHandle] = useState<QueryHandle | null>(null);
  const subscribe = useMemo(() => (handle ? handle.subscribe.bind(handle) : noSubscribe), [handle]);
  const get = () => handle?.state ?? null;
  const queryState = useSyncExternalStore(subscribe, get, get);
  const executeQuery = useCallback(
    (query: string, options: ExecuteOptions = {}) => {
      // No event buffering unless asked: the state comes from the handle, rows from useStreamingData.
      const h = client.executeQuery(query, { buffer: false, ...options });
      setHandle(h);
      return h;
    },
    [client],
  );
  const cancelQuery = useCallback(async () => {
    await handle?.cancel();
  }, [handle]);
  return { queryState, handle, connectionState: toConnectionState(status), executeQuery, cancelQuery, client };
}
