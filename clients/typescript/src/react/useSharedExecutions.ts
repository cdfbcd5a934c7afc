import { useSyncExternalStore } from 'react';
import type { CollaborationSession, SharedExecutionEntry } from '../collaboration.js';

/** What {@link useSharedExecutions} returns. */
export interface UseSharedExecutionsResult<Row = unknown> {
  /** Every shared execution kept by the session, oldest first. */
  readonly executions: readonly SharedExecutionEntry<Row>[];
  /** The most recent one (`null` before the first): pass `latest.rows` to `useStreamingData`, `latest.handle` to `useQueryState`. */
  readonly latest: SharedExecutionEntry<Row> | null;
}

const NONE: readonly SharedExecutionEntry[] = [];
const noSubscribe = () => () => {};

/**
 * The shared executions of a collaboration session (queries any participant ran in it), each with its handle
 * and — for the most recent (`sharedRows` option of the session, default 1) — its {@link RowStore}.
 *
 * The session creates the handle and attaches the store while it handles the `shared_execution` announcement,
 * synchronously, so events arriving right behind it (even in the same tick, before React renders) are all
 * in the rows. (`useStreamingData(session.watchExecution(id))` would attach at render time: too late.)
 *
 * @example
 * ```tsx
 * const { session } = useCollaborativeSession(sessionId, options);
 * const { latest } = useSharedExecutions(session);
 * const { rows, streamingData } = useStreamingData(latest?.rows);
 * const state = useQueryState(latest?.handle);
 * ```
 */
export function useSharedExecutions<Row = unknown>(session: CollaborationSession | null | undefined): UseSharedExecutionsResult<Row> {
  const executions = useSyncExternalStore(
    session ? session.subscribe : noSubscribe,
    session ? session.getSharedExecutions : () => NONE,
    session ? session.getSharedExecutions : () => NONE,
  ) as readonly SharedExecutionEntry<Row>[];
  return { executions, latest: executions[executions.length - 1] ?? null };
}
