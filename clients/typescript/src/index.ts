/**
 * `@chat2sql/realtime`: the TypeScript client of Chat2SQL Realtime.
 *
 * - {@link RealtimeClient}: one reconnecting WebSocket to a gateway endpoint (backoff, heartbeat, offline
 *   queue with idempotent ids, automatic `resume` by `seq`).
 * - {@link QueryHandle}: one execution's events, state and outcome; {@link RowStore}: its rows, without copies.
 * - {@link CollaborationSession}: a shared query space.
 * - Protocol types generated from the gateway's schema (`./protocol`).
 *
 * React hooks live in `@chat2sql/realtime/react`.
 *
 * @packageDocumentation
 */
export {
  RealtimeClient,
  type RealtimeClientOptions,
  type RealtimeClientEvents,
  type ServerMessageHandlers,
  type ConnectionStatus,
  type HeartbeatOptions,
  type LatencyStats,
  type ClientStats,
  type UrlContext,
  type WebSocketLike,
  type WebSocketConstructor,
} from './client.js';
export { backoffDelay, DEFAULT_RECONNECT, type ReconnectOptions } from './backoff.js';
export {
  QueryHandle,
  type QueryOutcome,
  type QueryState,
  type QueryStatus,
  type QueryCallbacks,
  type ExecuteOptions,
  type SubscribeOptions,
  DEFAULT_BUFFER_LIMIT,
} from './query.js';
export { RowStore, type RowStoreOptions, type RowStoreSnapshot } from './rows.js';
export {
  CollaborationSession,
  type CollaborationOptions,
  type CollaborationState,
  type UpdateQueryResult,
  type UpdateQueryOptions,
  type SharedExecutionEntry,
} from './collaboration.js';
export * from './protocol.js';
