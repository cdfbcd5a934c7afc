/** Real gateway and worker processes for the browser test (no mocks). */
import { spawn, spawnSync, type ChildProcess } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { homedir } from 'node:os';
import { join } from 'node:path';

const targetDir = join(homedir(), '.cache/chat2sql-realtime/target/debug');
export const GATEWAY_BIN = process.env.C2S_GATEWAY_BIN ?? join(targetDir, 'gateway');
export const WORKER_BIN = process.env.C2S_WORKER_BIN ?? join(targetDir, 'worker');
export const REDIS_URL = process.env.C2S_TEST_REDIS_URL ?? 'redis://127.0.0.1:6379';
export const DATABASE_URL = process.env.C2S_TEST_DATABASE_URL ?? 'postgres://postgres@127.0.0.1:5432/postgres';

export interface Proc {
  readonly name: string;
  readonly child: ChildProcess;
  /** The last lines of stderr (for failure messages). */
  logs(): string;
  /** Sends `signal` (default SIGKILL) and waits for the exit. */
  kill(signal?: NodeJS.Signals): Promise<void>;
}

export interface Gateway extends Proc {
  readonly port: number;
  readonly http: string;
}

/** Everything spawned and not yet exited: killed by {@link killAll} and, as a last resort, on exit. */
const running = new Set<ChildProcess>();
process.on('exit', () => {
  for (const c of running) c.kill('SIGKILL');
});

function launch(name: string, bin: string, args: string[], ready: RegExp): Promise<{ proc: Proc; match: RegExpMatchArray }> {
  const child = spawn(bin, args, {
    stdio: ['ignore', 'pipe', 'pipe'],
    env: { ...process.env, C2S_LOG: process.env.C2S_LOG ?? 'warn', C2S_LOG_FORMAT: 'text' },
  });
  running.add(child);
  let stderr = '';
  child.stderr!.on('data', (d: Buffer) => {
    stderr = (stderr + d.toString()).slice(-8000);
  });
  const exited = new Promise<void>((resolve) =>
    child.once('exit', () => {
      running.delete(child);
      resolve();
    }),
  );
  const proc: Proc = {
    name,
    child,
    logs: () => stderr,
    async kill(signal = 'SIGKILL') {
      if (child.exitCode !== null || child.signalCode !== null) return;
      child.kill(signal);
      await exited;
    },
  };
  return new Promise((resolve, reject) => {
    let out = '';
    const timer = setTimeout(() => reject(new Error(`${name} not ready in 30 s:\n${stderr}`)), 30_000);
    child.stdout!.on('data', (d: Buffer) => {
      out += d.toString();
      const match = out.match(ready);
      if (match) {
        clearTimeout(timer);
        child.stdout!.removeAllListeners('data');
        child.stdout!.resume();
        resolve({ proc, match });
      }
    });
    child.once('error', (e) => {
      clearTimeout(timer);
      reject(new Error(`${name}: cannot start ${bin}: ${e.message}`));
    });
    child.once('exit', (code, signal) => {
      clearTimeout(timer);
      reject(new Error(`${name} exited (${code ?? signal}) before it was ready:\n${stderr}`));
    });
  });
}

/** A networked gateway without auth (`?user=&name=` identities); `port` 0 picks a free one. */
export async function startGateway(nodeId: string, prefix: string, port = 0): Promise<Gateway> {
  const args = ['--bind', `127.0.0.1:${port}`, '--node-id', nodeId, '--redis-url', REDIS_URL, '--key-prefix', prefix, '--insecure-no-auth'];
  const { proc, match } = await launch(nodeId, GATEWAY_BIN, args, /LISTENING 127\.0\.0\.1:(\d+)/);
  const bound = Number(match[1]);
  return { ...proc, port: bound, http: `http://127.0.0.1:${bound}` };
}

/** A worker on the same Redis prefix and the local PostgreSQL. */
export async function startWorker(prefix: string): Promise<Proc> {
  const args = ['--redis-url', REDIS_URL, '--key-prefix', prefix, '--database-url', DATABASE_URL];
  const { proc } = await launch('worker', WORKER_BIN, args, /READY \S+/);
  return proc;
}

/** Kills every process still running (SIGKILL) and waits for them. */
export async function killAll(): Promise<void> {
  await Promise.all(
    [...running].map(
      (c) =>
        new Promise<void>((resolve) => {
          if (c.exitCode !== null || c.signalCode !== null) return resolve();
          c.once('exit', () => resolve());
          c.kill('SIGKILL');
        }),
    ),
  );
}

/** A fresh Redis key prefix for one run. */
export function keyPrefix(): string {
  return `demo-${randomBytes(6).toString('hex')}`;
}

/** Best effort: deletes the run's Redis keys (when `redis-cli` is installed). */
export function dropKeys(prefix: string): void {
  const url = new URL(REDIS_URL);
  const base = ['-h', url.hostname, '-p', url.port || '6379'];
  const scan = spawnSync('redis-cli', [...base, '--scan', '--pattern', `${prefix}*`], { encoding: 'utf8' });
  if (scan.status !== 0 || !scan.stdout) return;
  const keys = scan.stdout.split('\n').filter(Boolean);
  for (let i = 0; i < keys.length; i += 500) spawnSync('redis-cli', [...base, 'DEL', ...keys.slice(i, i + 500)]);
}
