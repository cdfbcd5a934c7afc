/**
 * React hooks of `@chat2sql/realtime` (React ≥ 18: they use `useSyncExternalStore`).
 *
 * Every hook creates its client once per (url, path/session, user, name, params) — not on every render — connects
 * in an effect and closes in its cleanup, and delivers every message (no "last message" state that drops frames
 * arriving in the same render).
 *
 * @packageDocumentation
 */
export {
  useRealtimeClient,
  useConnectionStatus,
  toConnectionState,
  type ConnectionState,
} from './useRealtimeClient.js';
export { useWebSocket, type UseWebSocketOptions, type UseWebSocketResult } from './useWebSocket.js';
export { useQueryExecution, type UseQueryExecutionResult } from './useQueryExecution.js';
export { useStreamingData, type UseStreamingDataOptions, type UseStreamingDataResult } from './useStreamingData.js';
export { useCollaborativeSession, type UseCollaborativeSessionResult } from './useCollaborativeSession.js';
export { useSharedExecutions, type UseSharedExecutionsResult } from './useSharedExecutions.js';
export { useQueryState, type UseQueryStateOptions } from './useQueryState.js';
export { useConnectionQuality, gradeConnection, type ConnectionQuality } from './useConnectionQuality.js';
