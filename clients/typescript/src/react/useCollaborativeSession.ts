import { useCallback, useEffect, useMemo, useRef, useSyncExternalStore } from 'react';
import {
  CollaborationSession,
  type CollaborationOptions,
  type CollaborationState,
  type UpdateQueryOptions,
  type UpdateQueryResult,
} from '../collaboration.js';
import type { ExecuteOptions, QueryHandle } from '../query.js';
import { toConnectionState, useConnectionStatus, type ConnectionState } from './useRealtimeClient.js';

/** What {@link useCollaborativeSession} returns. */
export interface UseCollaborativeSessionResult {
  readonly sessionState: CollaborationState;
  readonly connectionState: ConnectionState;
  /**
   * Replaces the shared text (with `baseVersion`; resolves `conflict` when someone else's update replaced the
   * version the edit was made on). Pass `{ baseVersion }` — the `sessionState.queryVersion` the edit was made
   * on — when the call comes later than the edit (debounce).
   */
  readonly updateQuery: (query: string, options?: UpdateQueryOptions) => Promise<UpdateQueryResult>;
  /** Moves this participant's cursor. */
  readonly updateCursor: (cursor: unknown) => void;
  /** Sends a chat message (author and time are stamped by the server). */
  readonly sendChatMessage: (content: string) => Promise<{ id: string; duplicate: boolean }>;
  /** Runs a query in the session: every participant gets its events. */
  readonly executeQuery: (query: string, options?: ExecuteOptions) => QueryHandle;
  readonly session: CollaborationSession;
}

/**
 * The guide's `useCollaborativeSession`: joins `/ws/collaboration/{sessionId}` once per (url, sessionId, user,
 * name), keeps the whole session state (participants, shared query + version, cursors, chat, shared executions)
 * from every event — none dropped between renders — and rejoins with `afterSeq` after a reconnect.
 */
export function useCollaborativeSession(
  sessionId: string,
  options: Omit<CollaborationOptions, 'sessionId'>,
): UseCollaborativeSessionResult {
  const latest = useRef(options);
  latest.current = options;
  const url = typeof options.url === 'function' ? 'fn' : options.url;
  const key = JSON.stringify([url, sessionId, options.user ?? null, options.name ?? null, options.params ?? null]);
  const session = useMemo(() => {
    const o = latest.current;
    return new CollaborationSession({
      ...o,
      sessionId,
      url: typeof o.url === 'function' ? (ctx) => (latest.current.url as (c: typeof ctx) => string)(ctx) : o.url,
      getToken: () => (latest.current.getToken ? latest.current.getToken() : latest.current.token),
      autoConnect: false,
    });
    // eslint-disable-next-line react-hooks/exhaustive-deps -- the key is the identity
  }, [key]);
  useEffect(() => {
    session.connect();
    return () => {
      void session.close();
    };
  }, [session]);
  const sessionState = useSyncExternalStore(session.subscribe, session.getSnapshot, session.getSnapshot);
  const status = useConnectionStatus(session.client);
  const updateQuery = useCallback((q: string, o?: UpdateQueryOptions) => session.updateQuery(q, o), [session]);
  const updateCursor = useCallback((cursor: unknown) => session.moveCursor(cursor), [session]);
  const sendChatMessage = useCallback((content: string) => session.sendChat(content), [session]);
  const executeQuery = useCallback((q: string, o?: ExecuteOptions) => session.executeQuery(q, o), [session]);
  return {
    sessionState,
    connectionState: toConnectionState(status),
    updateQuery,
    updateCursor,
    sendChatMessage,
    executeQuery,
    session,
  };
}
