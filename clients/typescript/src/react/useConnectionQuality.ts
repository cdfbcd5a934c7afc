import { useMemo, useSyncExternalStore } from 'react';
import type { ConnectionStatus, LatencyStats, RealtimeClient, RealtimeClientOptions } from '../client.js';
import { useClientFrom } from './useRealtimeClient.js';

/** Connection quality, as the guide's `useConnectionQuality` reports it. */
export interface ConnectionQuality {
  /** Smoothed round trip of the heartbeat pings (ms); 0 before the first pong. */
  readonly latency: number;
  /** The last round trip (ms), or `null`. */
  readonly lastRtt: number | null;
  /** Round-trip variation (ms). */
  readonly jitter: number;
  /** Share of pings never answered, 0..1. */
  readonly packetsLost: number;
  /** Reconnections since the client was created. */
  readonly reconnectCount: number;
  /** How long the current connection has been open (ms, as of the last update), 0 when not open. */
  readonly uptime: number;
  /** `unknown` until the first pong; `critical` while not connected. */
  readonly stability: 'excellent' | 'good' | 'poor' | 'critical' | 'unknown';
  readonly status: ConnectionStatus;
}

/** Grades latency (ms) and loss (0..1) with the guide's thresholds. */
export function gradeConnection(latencyMs: number, loss: number): 'excellent' | 'good' | 'poor' | 'critical' {
  if (latencyMs < 100 && loss < 0.01) return 'excellent';
  if (latencyMs < 300 && loss < 0.05) return 'good';
  if (latencyMs < 1000 && loss < 0.1) return 'poor';
  return 'critical';
}

function measure(client: RealtimeClient): ConnectionQuality {
  const l: LatencyStats = client.latency;
  const status = client.status;
  const loss = l.sent > 0 ? l.lost / l.sent : 0;
  const latency = l.avgRttMs ?? 0;
  return {
    latency,
    lastRtt: l.lastRttMs,
    jitter: l.jitterMs,
    packetsLost: loss,
    reconnectCount: client.stats.reconnects,
    uptime: status.state === 'open' ? Math.max(0, Date.now() - status.since) : 0,
    stability: status.state !== 'open' ? 'critical' : l.received === 0 ? 'unknown' : gradeConnection(latency, loss),
    status,
  };
}

/**
 * The guide's `useConnectionQuality`: latency from the client's heartbeat round trips (no extra timers or
 * listeners to leak), loss, reconnects, uptime and a stability grade. Pass a client to measure it, or options to
 * open a `/ws/monitoring` socket (heartbeat every 10 s by default).
 */
export function useConnectionQuality(source: RealtimeClient | RealtimeClientOptions): ConnectionQuality {
  const client = useClientFrom(source, { path: '/ws/monitoring', heartbeat: { intervalMs: 10_000 } });
  const store = useMemo(() => {
    let cached: { latency: LatencyStats; status: ConnectionStatus; value: ConnectionQuality } | undefined;
    return {
      subscribe: (cb: () => void) => {
        const a = client.on('latency', cb);
        const b = client.on('status', cb);
        return () => {
          a();
          b();
        };
      },
      get: (): ConnectionQuality => {
        if (!cached || cached.latency !== client.latency || cached.status !== client.status) {
          cached = { latency: client.latency, status: client.status, value: measure(client) };
        }
        return cached.value;
      },
    };
  }, [client]);
  return useSyncExternalStore(store.subscribe, store.get, store.get);
}
