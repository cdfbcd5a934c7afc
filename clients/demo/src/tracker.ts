import { useCallback, useState } from 'react';
import type { CollaborationSession, QueryHandle, RowStore, SharedExecutionEntry } from '@chat2sql/realtime';
import { useSharedExecutions } from '@chat2sql/realtime/react';

/** The execution the page shows: its handle (state, cancel) and where its rows come from. */
export interface ShownExecution {
  readonly handle: QueryHandle | null;
  /**
   * For the table's `useStreamingData`: a handle made by a click of this page (the hook attaches its store when it
   * renders, before any event can arrive), or a store the SDK attached already (a shared execution).
   */
  readonly rows: QueryHandle | RowStore | null;
}

/**
 * In a collaboration session: the latest shared execution — the SDK made its handle and attached its rows when
 * the `shared_execution` announcement arrived, so every participant (the author too) gets every row — or, until
 * the announcement of our own run comes, that run's handle (pending / queued, or why it was refused).
 */
export function useSessionExecution(session: CollaborationSession): {
  shown: ShownExecution;
  /** Shows our own run until a newer shared execution (normally its announcement) arrives. */
  showPending: (handle: QueryHandle) => void;
} {
  const { latest } = useSharedExecutions(session);
  const [pending, setPending] = useState<{ handle: QueryHandle; after: SharedExecutionEntry | null } | null>(null);
  const showPending = useCallback(
    (handle: QueryHandle) => setPending({ handle, after: session.latestSharedExecution }),
    [session],
  );
  const shown: ShownExecution =
    pending && pending.after === latest
      ? { handle: pending.handle, rows: null }
      : { handle: latest?.handle ?? null, rows: latest?.rows ?? null };
  return { shown, showPending };
}
