// Pure functions (no sockets involved).
import { describe, expect, it } from 'vitest';
import { backoffDelay, CloseCode, DEFAULT_RECONNECT, isRetryableClose, RowStore } from '../src/index.js';

describe('backoff', () => {
  const policy = { baseMs: 100, maxMs: 5_000, factor: 2, jitter: 1 };
  it('grows exponentially up to the cap, with full jitter in [0, capped]', () => {
    for (let attempt = 1; attempt <= 12; attempt++) {
      const capped = Math.min(5_000, 100 * 2 ** (attempt - 1));
      expect(backoffDelay(attempt, policy, () => 0)).toBe(0);
      expect(backoffDelay(attempt, policy, () => 0.999999)).toBe(Math.round(capped * 0.999999));
      const d = backoffDelay(attempt, policy);
      expect(d).toBeGreaterThanOrEqual(0);
      expect(d).toBeLessThanOrEqual(capped);
    }
    expect(backoffDelay(30, policy, () => 1)).toBe(5_000);
  });
  it('without jitter it is deterministic', () => {
    expect([1, 2, 3, 4].map((a) => backoffDelay(a, { ...policy, jitter: 0 }))).toEqual([100, 200, 400, 800]);
    expect(DEFAULT_RECONNECT.jitter).toBe(1);
  });
});

describe('close codes', () => {
  it('never retries 4xxx, policy, too big, invalid data; retries drops, restarts and overload', () => {
    for (const code of [4000, 4001, 4003, 4004, 4999, 1007, 1008, 1009, 1002]) expect(isRetryableClose(code), String(code)).toBe(false);
    for (const code of [1000, 1001, 1005, 1006, 1011, 1012, 1013]) expect(isRetryableClose(code), String(code)).toBe(true);
    expect(CloseCode.UNAUTHORIZED).toBe(4001);
  });
});

describe('RowStore', () => {
  it('appends a million rows in place, without quadratic copying', () => {
    const store = new RowStore<number>();
    let notified = 0;
    store.subscribe(() => notified++);
    const chunk = Array.from({ length: 1000 }, (_, i) => i);
    const t0 = performance.now();
    for (let c = 0; c < 1000; c++) store.append(chunk);
    const ms = performance.now() - t0;
    expect(store.rows.length).toBe(1_000_000);
    expect(store.getSnapshot().receivedRows).toBe(1_000_000);
    expect(store.getSnapshot().chunkCount).toBe(1000);
    expect(store.getChunk(999)).toHaveLength(1000);
    expect(notified).toBe(1000);
    expect(ms).toBeLessThan(2_000);
  });
});
