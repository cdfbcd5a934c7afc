/**
 * Typed views of the wire protocol, derived from the generated types in `./generated/protocol.ts`
 * and `./generated/tables.ts` (which come from the gateway's `GET /schema`, which comes from the `protocol/` crate).
 *
 * @packageDocumentation
 */
import type {
  Ack,
  ClientFrame,
  ErrorBody,
  ServerFrame,
} from './generated/protocol.js';
import {
  ACKED_CLIENT_TYPES as GENERATED_ACKED_CLIENT_TYPES,
  CLOSE_CODES,
  CloseCode,
  EXECUTION_EVENT_TYPES as GENERATED_EXECUTION_EVENT_TYPES,
  SESSION_EVENT_TYPES as GENERATED_SESSION_EVENT_TYPES,
  TERMINAL_EVENT_TYPES as GENERATED_TERMINAL_EVENT_TYPES,
} from './generated/tables.js';

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
export const EXECUTION_EVENT_TYPES = GENERATED_EXECUTION_EVENT_TYPES satisfies readonly ServerMessageType[];
/** A type of {@link EXECUTION_EVENT_TYPES}. */
export type ExecutionEventType = (typeof EXECUTION_EVENT_TYPES)[number];
/** One execution event frame. */
export type ExecutionEvent = ServerFrameOf<ExecutionEventType>;

/** The events that end an execution's stream. */
export const TERMINAL_EVENT_TYPES = GENERATED_TERMINAL_EVENT_TYPES satisfies readonly ExecutionEventType[];

/** Collaboration session events: numbered by the session's one `seq`. (`session_state` carries `snapshotSeq` instead.) */
export const SESSION_EVENT_TYPES = GENERATED_SESSION_EVENT_TYPES satisfies readonly ServerMessageType[];
/** A type of {@link SESSION_EVENT_TYPES}. */
export type SessionEventType = (typeof SESSION_EVENT_TYPES)[number];

/** Client message types the server acknowledges with `ack` when they carry an `id` (PROTOCOL.md, README "Acks"). */
export const ACKED_CLIENT_TYPES = GENERATED_ACKED_CLIENT_TYPES satisfies readonly ClientMessageType[];
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
 * WebSocket close codes (generated from the gateway's close-code table, `protocol/src/close.rs`, via `/schema`).
 */
export { CloseCode, CLOSE_CODES };

const reconnectByCode = new Map<number, boolean>(CLOSE_CODES.map((c) => [c.code, c.reconnect]));

/**
 * Whether a close code is worth reconnecting after: the close-code table's answer (never after 4000–4999,
 * policy, size or a client's protocol bug; with backoff after going away, internal, restart, try later,
 * a dropped connection); a code outside the table is retried unless it is in 4000–4999.
 */
export function isRetryableClose(code: number): boolean {
  return reconnectByCode.get(code) ?? !(code >= 4000 && code <= 4999);
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
