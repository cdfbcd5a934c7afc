import { useEffect, useMemo, useRef, useSyncExternalStore } from 'react';
import { RealtimeClient, type ConnectionStatus, type RealtimeClientOptions } from '../client.js';

/** Identity of a client for the hooks: a new one is created only when this changes. */
function clientKey(options: RealtimeClientOptions | null): string {
  if (!options) return 'none';
  const url = typeof options.url === 'function' ? 'fn' : options.url;
  return JSON.stringify([url, options.path ?? null, options.user ?? null, options.name ?? null, options.params ?? null]);
}

/**
 * Creates a {@link RealtimeClient} once per (url, path, user, name, params), connects it on mount and closes it
 * on unmount (clearing its timers). Other options (`token`/`getToken`, a function `url`) are read through a
 * ref, so passing new objects or inline functions on every render does not create a new client.
 * With `null`, nothing is created (returns `null`).
 */
export function useRealtimeClient(options: RealtimeClientOptions): RealtimeClient;
export function useRealtimeClient(options: RealtimeClientOptions | null): RealtimeClient | null;
export function useRealtimeClient(options: RealtimeClientOptions | null): RealtimeClient | null {
  const latest = useRef(options);
  latest.current = options;
  const key = clientKey(options);
  const client = useMemo(() => {
    const o = latest.current;
    if (!o) return null;
    return new RealtimeClient({
      ...o,
      url: typeof o.url === 'function' ? (ctx) => (latest.current!.url as (c: typeof ctx) => string)(ctx) : o.url,
      getToken: () => {
        const cur = latest.current ?? o;
        return cur.getToken ? cur.getToken() : cur.token;
      },
      autoConnect: false,
    });
    // eslint-disable-next-line react-hooks/exhaustive-deps -- the key is the identity
  }, [key]);
  useEffect(() => {
    if (!client) return;
    // Connect in the effect (not during render) and close in its cleanup: StrictMode's mount/unmount/mount
    // closes and reopens the same client; a real unmount closes it and clears every timer.
    client.connect();
    return () => {
      void client.close();
    };
  }, [client]);
  return client;
}

const IDLE: ConnectionStatus = { state: 'idle' };
const noSubscribe = () => () => {};

/** The client's {@link ConnectionStatus}, re-rendering on change. */
export function useConnectionStatus(client: RealtimeClient | null): ConnectionStatus {
  const subscribe = useMemo(
    () => (client ? (cb: () => void) => client.on('status', cb) : noSubscribe),
    [client],
  );
  const get = () => client?.status ?? IDLE;
  return useSyncExternalStore(subscribe, get, get);
}

/** The guide's `connectionState`, derived from a {@link ConnectionStatus}. */
export interface ConnectionState {
  readonly connected: boolean;
  readonly connecting: boolean;
  readonly reconnecting: boolean;
  /** The retry number while reconnecting (1-based), else 0. */
  readonly reconnectAttempt: number;
  /** Set when the connection is closed for good: why. */
  readonly closed: { readonly code: number; readonly reason: string } | null;
  readonly status: ConnectionStatus;
}

const stateCache = new WeakMap<ConnectionStatus, ConnectionState>();

/** Derives {@link ConnectionState} (the same object for the same status). */
export function toConnectionState(status: ConnectionStatus): ConnectionState {
  let s = stateCache.get(status);
  if (!s) {
    s = {
      connected: status.state === 'open',
      connecting: status.state === 'connecting',
      reconnecting: status.state === 'reconnecting' || (status.state === 'connecting' && status.attempt > 0),
      reconnectAttempt: status.state === 'reconnecting' || status.state === 'connecting' ? status.attempt : 0,
      closed: status.state === 'closed' ? { code: status.code, reason: status.reason } : null,
      status,
    };
    stateCache.set(status, s);
  }
  return s;
}

/** Uses `source` when it is a client, else creates one from the options. */
export function useClientFrom(source: RealtimeClient | RealtimeClientOptions, defaults: Partial<RealtimeClientOptions> = {}): RealtimeClient {
  const owned = useRealtimeClient(source instanceof RealtimeClient ? null : { ...defaults, ...source });
  return source instanceof RealtimeClient ? source : owned!;
}
