// A followed execution whose state disappears from Redis (expired, or Redis came back empty): the gateway
// says `error not_found` naming it in `executionId`, and the SDK ends the handle as `lost` instead of
// waiting forever. No worker runs, so the job stays queued and its stream quiet.
import { spawnSync } from 'node:child_process';
import WebSocket from 'ws';
import { afterAll, beforeAll, expect, it } from 'vitest';
import { RealtimeClient } from '../src/index.js';
import { dropPrefix, keyPrefix, REDIS_URL, startNetworked, type Gateway } from './helpers/processes.js';

const prefix = keyPrefix();
let gw: Gateway;

beforeAll(async () => {
  gw = await startNetworked(prefix, ['--insecure-no-auth', '--resync-interval-ms', '200']);
});
afterAll(async () => {
  await gw?.kill();
  dropPrefix(prefix);
});

it('an execution that vanishes from Redis ends as lost (not_found, matched by executionId)', async () => {
  const c = new RealtimeClient({ url: gw.url, path: '/ws/query', user: 'vanish', WebSocket });
  const lost: string[] = [];
  c.on('stream_lost', ({ executionId, error }) => lost.push(`${executionId}:${error.code}`));
  const handle = c.executeQuery('SELECT 1 AS one', { buffer: false });
  const executionId = await handle.accepted;
  const url = new URL(REDIS_URL);
  const del = spawnSync('redis-cli', ['-h', url.hostname, '-p', url.port || '6379', 'DEL', `${prefix}:{e:${executionId}}`], {
    encoding: 'utf8',
  });
  expect(del.stdout.trim()).toBe('1');
  const outcome = await handle.done;
  expect(outcome.status).toBe('lost');
  if (outcome.status === 'lost') expect(outcome.error.code).toBe('not_found');
  expect(lost).toEqual([`${executionId}:not_found`]);
  await c.close();
});
