import type { ConnectionStatus, RealtimeClient } from '../../src/index.js';

/** Polls `check` until it returns truthy (or throws after `timeoutMs`). */
export async function until<T>(check: () => T, timeoutMs = 10_000, what = 'condition'): Promise<NonNullable<T>> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const value = check();
    if (value) return value as NonNullable<T>;
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await sleep(20);
  }
}

export const sleep = (ms: number) => new Promise<void>((r) => setTimeout(r, ms));

/** Resolves with the next status of the given state. */
export function nextStatus<S extends ConnectionStatus['state']>(
  client: RealtimeClient,
  state: S,
  timeoutMs = 15_000,
): Promise<Extract<ConnectionStatus, { state: S }>> {
  if (client.status.state === state) return Promise.resolve(client.status as Extract<ConnectionStatus, { state: S }>);
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => {
      off();
      reject(new Error(`status ${state} not reached (now ${client.status.state})`));
    }, timeoutMs);
    const off = client.on('status', (s) => {
      if (s.state === state) {
        clearTimeout(timer);
        off();
        resolve(s as Extract<ConnectionStatus, { state: S }>);
      }
    });
  });
}

/** A recursive CTE returning `n` rows (works on SQLite and PostgreSQL). */
export function rowsQuery(n: number): string {
  return `WITH RECURSIVE t(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM t WHERE i < ${n}) SELECT i FROM t`;
}
