import { useCallback, useState } from 'react';
import type { RealtimeClient, RealtimeClientOptions } from '../client.js';
import type { ExecuteOptions, QueryHandle, QueryState } from '../query.js';
import { useQueryState, type UseQueryStateOptions } from './useQueryState.js';
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

/**
 * The guide's `useQueryExecution`: runs queries on `/ws/query` and tracks the latest one's state (every event
 * counted, none lost between renders; re-renders for progress and counters throttled to `notifyIntervalMs`,
 * default 50, status changes at once — see {@link useQueryState}). Pass a shared client, or options to own one.
 */
export function useQueryExecution(
  source: RealtimeClient | RealtimeClientOptions,
  options: UseQueryStateOptions = {},
): UseQueryExecutionResult {
  const client = useClientFrom(source, { path: '/ws/query' });
  const status = useConnectionStatus(client);
  const [handle, setHandle] = useState<QueryHandle | null>(null);
  const queryState = useQueryState(handle, options);
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
