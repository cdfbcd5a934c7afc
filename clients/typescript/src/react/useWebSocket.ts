import { useCallback, useEffect, useMemo, useRef, useSyncExternalStore } from 'react';
import type { RealtimeClient, RealtimeClientOptions, ConnectionStatus } from '../client.js';
import type { ServerFrame } from '../generated/protocol.js';
import type { AckPayload, AckedClientType, ClientMessageType, ClientPayloads } from '../protocol.js';
import { toConnectionState, useConnectionStatus, useRealtimeClient, type ConnectionState } from './useRealtimeClient.js';

/** Options of {@link useWebSocket}. */
export interface UseWebSocketOptions extends RealtimeClientOptions {
  /**
   * How many recent frames to keep in `messages` (a bounded log: every frame arriving is appended, none is
   * dropped because several came in one tick). Default 100; 0 keeps none.
   */
  keepMessages?: number;
  /** Called for every frame (the latest callback is used; it need not be memoized). */
  onMessage?: (frame: ServerFrame) => void;
}

/** What {@link useWebSocket} returns. */
export interface UseWebSocketResult {
  /** The client, created once per (url, path, user, name). */
  readonly client: RealtimeClient;
  readonly status: ConnectionStatus;
  readonly connectionState: ConnectionState;
  /** The last `keepMessages` frames, oldest first (a new array when it changed). */
  readonly messages: readonly ServerFrame[];
  /** The newest frame (convenience; to see every frame use `onMessage` or `messages`). */
  readonly lastMessage: ServerFrame | null;
  /** Sends (or queues while offline); returns the message id. */
  readonly send: <K extends ClientMessageType>(type: K, payload: ClientPayloads[K]) => string | undefined;
  /** Sends and resolves on the `ack`. */
  readonly request: <K extends AckedClientType>(type: K, payload: ClientPayloads[K]) => Promise<AckPayload>;
  readonly connect: () => void;
  readonly disconnect: () => Promise<void>;
}

/** A bounded log of frames as an external store: appends are O(1); the array is rebuilt once per read. */
class MessageLog {
  private items: ServerFrame[] = [];
  private snapshot: readonly ServerFrame[] = [];
  private dirty = false;
  private readonly listeners = new Set<() => void>();
  constructor(private readonly limit: number) {}
  push(frame: ServerFrame): void {
    if (this.limit <= 0) return;
    this.items.push(frame);
    if (this.items.length > this.limit * 2) this.items = this.items.slice(-this.limit);
    this.dirty = true;
    for (const l of [...this.listeners]) l();
  }
  subscribe = (listener: () => void): (() => void) => {
    this.listeners.add(listener);
    return () => this.listeners.delete(listener);
  };
  getSnapshot = (): readonly ServerFrame[] => {
    if (this.dirty) {
      this.dirty = false;
      this.snapshot = this.items.length > this.limit ? this.items.slice(-this.limit) : this.items.slice();
    }
    return this.snapshot;
  };
}

/**
 * The guide's `useWebSocket`, done right: one {@link RealtimeClient} per (url, path) for the component's life,
 * status from the client, and **every** frame delivered (`onMessage`, and the bounded `messages` log) — not only
 * the last one of a render.
 */
export function useWebSocket(options: UseWebSocketOptions): UseWebSocketResult {
  const { keepMessages = 100, onMessage, ...clientOptions } = options;
  const client = useRealtimeClient(clientOptions);
  const status = useConnectionStatus(client);
  const log = useMemo(() => new MessageLog(keepMessages), [client, keepMessages]);
  const onMessageRef = useRef(onMessage);
  onMessageRef.current = onMessage;
  useEffect(
    () =>
      client.on('message', (frame) => {
        log.push(frame);
        onMessageRef.current?.(frame);
      }),
    [client, log],
  );
  const messages = useSyncExternalStore(log.subscribe, log.getSnapshot, log.getSnapshot);
  const send = useCallback(
    <K extends ClientMessageType>(type: K, payload: ClientPayloads[K]) => client.send(type, payload),
    [client],
  );
  const request = useCallback(
    <K extends AckedClientType>(type: K, payload: ClientPayloads[K]) => client.request(type, payload),
    [client],
  );
  const connect = useCallback(() => client.connect(), [client]);
  const disconnect = useCallback(() => client.close(), [client]);
  return {
    client,
    status,
    connectionState: toConnectionState(status),
    messages,
    lastMessage: messages.length > 0 ? messages[messages.length - 1]! : null,
    send,
    request,
    connect,
    disconnect,
  };
}
