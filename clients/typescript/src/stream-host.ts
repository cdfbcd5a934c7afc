/**
 * What a {@link QueryHandle} needs of the client that carries its stream, as types only. `client.ts`
 * implements it and `query.ts` depends on it, so the two modules do not import each other.
 *
 * @packageDocumentation
 */
import type {
  AckPayload,
  AckedClientType,
  ClientMessageType,
  ClientPayloads,
  ExecutionEvent,
  RealtimeError,
} from './protocol.js';

/** The connection's state, for UIs. */
export type ConnectionStatus =
  | { readonly state: 'idle' }
  | { readonly state: 'connecting'; readonly attempt: number; readonly url: string }
  | { readonly state: 'open'; readonly url: string; readonly since: number }
  | {
      readonly state: 'reconnecting';
      /** The retry about to be made (1-based). */
      readonly attempt: number;
      /** How long until it is made (ms). */
      readonly delayMs: number;
      /** Why the previous connection ended. */
      readonly code: number;
      readonly reason: string;
    }
  | {
      /** Final: `close()` was called, the close code means "do not retry", or the retries ran out. */
      readonly state: 'closed';
      readonly code: number;
      readonly reason: string;
    };

/** @internal The callbacks of one sent message: its `ack`, or its failure. */
export interface Waiter {
  ack(ack: AckPayload): void;
  fail(error: RealtimeError): void;
}

/** @internal The part of {@link RealtimeClient} a query handle uses. */
export interface StreamHost {
  on(event: 'stream_lost', handler: (info: { executionId: string; error: RealtimeError }) => void): () => void;
  on(event: 'status', handler: (status: ConnectionStatus) => void): () => void;
  request<K extends AckedClientType>(
    type: K,
    payload: ClientPayloads[K],
    options?: { id?: string; traceparent?: string },
  ): Promise<AckPayload>;
  sendWithWaiter<K extends ClientMessageType>(
    type: K,
    payload: ClientPayloads[K],
    waiter: Waiter,
    options?: { id?: string; traceparent?: string },
  ): string | undefined;
  unqueue(id: string, error: RealtimeError): boolean;
  track(executionId: string, afterSeq?: number): void;
  onExecution(executionId: string, listener: (frame: ExecutionEvent) => void): () => void;
  isStreamDone(executionId: string): boolean;
  lastSeq(executionId: string): number | undefined;
}
