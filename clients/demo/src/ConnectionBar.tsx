import { useEffect, useMemo, useState } from 'react';
import type { ConnectionStatus, RealtimeClient } from '@chat2sql/realtime';
import { useConnectionQuality, useConnectionStatus } from '@chat2sql/realtime/react';

function describe(status: ConnectionStatus, remainingMs: number): string {
  switch (status.state) {
    case 'idle':
      return 'idle';
    case 'connecting':
      return status.attempt > 0 ? `connecting (retry ${status.attempt})…` : 'connecting…';
    case 'open':
      return 'open';
    case 'reconnecting':
      return `reconnecting: attempt ${status.attempt} in ${Math.max(0, Math.round(remainingMs))} ms (closed ${status.code}${status.reason ? `: ${status.reason}` : ''})`;
    case 'closed':
      return `closed ${status.code}${status.reason ? `: ${status.reason}` : ''}`;
  }
}

/** Connection state (with the reconnect countdown) and quality (heartbeat round trips) of one client. */
export function ConnectionBar({ client, label }: { client: RealtimeClient; label: string }) {
  const status = useConnectionStatus(client);
  const quality = useConnectionQuality(client);
  // When this status began, for the countdown of a pending reconnect.
  const since = useMemo(() => ({ status, at: performance.now() }), [status]);
  const [now, setNow] = useState(() => performance.now());
  useEffect(() => {
    if (status.state !== 'reconnecting') return;
    const t = setInterval(() => setNow(performance.now()), 100);
    return () => clearInterval(t);
  }, [status]);
  const remaining = status.state === 'reconnecting' ? status.delayMs - Math.max(0, now - since.at) : 0;
  const rtt = quality.lastRtt === null ? '–' : `${quality.lastRtt.toFixed(1)} ms`;
  const avg = quality.latency > 0 ? `${quality.latency.toFixed(1)} ms` : '–';
  return (
    <div className="connection">
      <span
        className={`dot dot-${status.state}`}
        aria-hidden="true"
        title={status.state === 'open' ? status.url : undefined}
      />
      <span data-testid="connection-status" data-state={status.state} className="connection-status">
        {label}: {describe(status, remaining)}
      </span>
      <span data-testid="connection-quality" className="quality" data-stability={quality.stability}>
        RTT {rtt} · avg {avg} · jitter {quality.jitter.toFixed(1)} ms · loss {(quality.packetsLost * 100).toFixed(0)}% ·{' '}
        {quality.stability} · reconnects {quality.reconnectCount}
      </span>
    </div>
  );
}
