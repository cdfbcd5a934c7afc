/**
 * Typed views of the wire protocol, derived from the generated types in `./generated/protocol.ts`
 * (which come from the gateway's `GET /schema`, which comes from `shared/src/protocol.rs`).
 *
 * @packageDocumentation
 */
import type {
  Ack,
  ClientFrame,
  ErrorBody,
  ServerFrame,
} from './generated/protocol.js';

export type * from './generated/protocol.js';

/** Every `type` the server sends. */
export type ServerMessageType = ServerFrame['type'];
/** Every `type` a client may send. */
export type ClientMessageType = ClientFrame['type'];

/** The server frame of one `type` (`{type, payload, seq?, traceparent?}`). */
export type ServerFrameOf<K extends ServerMessageType> = Extract<ServerFrame, { type: K }>;
/** The client frame of one `type` (`{type, payload, id?, traceparent?}`). */
export type ClientFrameOf<K extends ClientMessageType> = Extract<ClientFrame, { type: K }>;

/** Server message type → its payload type (from the generated schema types). */
export type ServerPayloads = { [K in ServerMessageType]: ServerFrameOf<K>['payload'] };
/** Client message type → its payload type (from the generated schema types). */
export type ClientPayloads = { [K in ClientMessageType]: ClientFrameOf<K>['payload'] };

/** The events of one execution's stream (each carries `executionId` and the execution's own `seq`). */
export const EXECUTION_EVENT_TYPES = [
  'query_started',
  'query_progress',
  'data_stream_start',
  'data_chunk',
  'data_stream_complete',
  'query_completed',
  'query_error',
  'query_cancelled',
] as const satisfies readonly ServerMessageType[];
/** A type of {@link EXECUTION_EVENT_TYPES}. */
export type ExecutionEventType = (typeof EXECUTION_EVENT_TYPES)[number];
/** One execution event frame. */
export type ExecutionEvent = ServerFrameOf<ExecutionEventType>;

/** The events that end an execution's stream. */
export const TERMINAL_EVENT_TYPES = [
  'query_completed',
  'query_error',
  'query_cancelled',
] as const satisfies readonly ExecutionEventType[];

/** Collaboration session events: numbered by the session's one `seq`. (`session_state` carries `snapshotSeq` instead.) */
export const SESSION_EVENT_TYPES = [
  'participant_joined',
  'participant_left',
  'query_updated',
  'cursor_moved',
  'chat_message',
  'shared_execution',
] as const satisfies readonly ServerMessageType[];
/** A type of {@link SESSION_EVENT_TYPES}. */
export type SessionEventType = (typeof SESSION_EVENT_TYPES)[number];

/** Client message types the server acknowledges with `ack` when they carry an `id` (PROTOCOL.md, README "Acks"). */
export const ACKED_CLIENT_TYPES = [
  'execute_query',
  'cancel_query',
  'resume',
  'subscribe',
  'update_query',
  'chat_message',
  'refresh_token',
] as const satisfies readonly ClientMessageType[];
/** A type of {@link ACKED_CLIENT_TYPES}: what {@link RealtimeClient.request} accepts. */
export type AckedClientType = (typeof ACKED_CLIENT_TYPES)[number];

const executionTypes = new Set<string>(EXECUTION_EVENT_TYPES);
const terminalTypes = new Set<string>(TERMINAL_EVENT_TYPES);
const sessionTypes = new Set<string>(SESSION_EVENT_TYPES);
const ackedTypes = new Set<string>(ACKED_CLIENT_TYPES);

/** True for an execution event frame. */
export function isExecutionEvent(frame: ServerFrame): frame is ExecutionEvent {
  return executionTypes.has(frame.type);
}
/** True for an event that ends an execution. */
export function isTerminalEvent(frame: ServerFrame): boolean {
  return terminalTypes.has(frame.type);
}
/** True for a collaboration session event (numbered by the session's `seq`). */
export function isSessionEvent(frame: ServerFrame): frame is ServerFrameOf<SessionEventType> {
  return sessionTypes.has(frame.type);
}
/** True for a client message type that the server acknowledges when it carries an `id`. */
export function isAckedType(type: string): type is AckedClientType {
  return ackedTypes.has(type);
}

/**
 * WebSocket close codes used by the gateway (`shared/src/codes.rs`, PROTOCOL.md).
 */
export const CloseCode = {
  NORMAL: 1000,
  GOING_AWAY: 1001,
  PROTOCOL_ERROR: 1002,
  UNSUPPORTED_DATA: 1003,
  /** No status code in the close frame (reported locally). */
  NO_STATUS: 1005,
  /** The connection dropped without a close frame (reported locally). */
  ABNORMAL: 1006,
  /** A text frame that is not valid UTF-8. */
  INVALID_DATA: 1007,
  /** Policy violation: bad origin, abuse (rate limit). */
  POLICY: 1008,
  /** A frame over the gateway's size limit. */
  TOO_BIG: 1009,
  MANDATORY_EXTENSION: 1010,
  INTERNAL: 1011,
  /** Node draining: reconnect, possibly elsewhere. */
  SERVICE_RESTART: 1012,
  /** Overloaded or slow consumer: try again later and resume. */
  TRY_AGAIN_LATER: 1013,
  /** Bad or expired token. */
  UNAUTHORIZED: 4001,
  /** Not allowed in this session. */
  FORBIDDEN: 4003,
  NOT_FOUND: 4004,
} as const;

/**
 * Whether a close code is worth reconnecting after.
 *
 * Never after 4000–4999 (auth, forbidden, not found: the same request would be refused again), 1008 (policy),
 * 1009 (frame too big), 1007 (invalid data), 1002/1003/1010 (protocol: a client bug). Every other code
 * (1006 dropped, 1001 going away, 1011 internal, 1012 restart, 1013 try later, 1000/1005 from the server
 * or a proxy) is retried with backoff.
 */
export function isRetryableClose(code: number): boolean {
  if (code >= 4000 && code <= 4999) return false;
  switch (code) {
    case CloseCode.PROTOCOL_ERROR:
    case CloseCode.UNSUPPORTED_DATA:
    case CloseCode.INVALID_DATA:
    case CloseCode.POLICY:
    case CloseCode.TOO_BIG:
    case CloseCode.MANDATORY_EXTENSION:
      return false;
    default:
      return true;
  }
}

/** An `error` frame (or a local failure) as an `Error`. `code` is the protocol's error code or a local one. */
export class RealtimeError extends Error {
  /**
   * `bad_request`, `not_found`, `conflict`, … or a local code: `closed`, `queue_full`, `timeout`,
   * `buffer_overflow` (a query handle's bounded event buffer overflowed before anyone iterated).
   */
  readonly code: ErrorBody['code'] | 'closed' | 'queue_full' | 'timeout' | 'buffer_overflow';
  /** The server's error body, when the server sent one. */
  readonly body: ErrorBody | undefined;

  constructor(code: RealtimeError['code'], message: string, body?: ErrorBody) {
    super(message);
    this.name = 'RealtimeError';
    this.code = code;
    this.body = body;
  }

  /** Wraps a server `error` payload. */
  static fromBody(body: ErrorBody): RealtimeError {
    return new RealtimeError(body.code, body.message, body);
  }
}

/** The `ack` payload a {@link RealtimeClient.request} resolves with. */
export type AckPayload = Ack;
