/** Spawns real gateway/worker processes for the tests (no mocks). */
import { spawn, spawnSync, type ChildProcess } from 'node:child_process';
import { mkdtempSync, rmSync } from 'node:fs';
import { homedir, tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { randomBytes } from 'node:crypto';

const targetDir = join(homedir(), '.cache/chat2sql-realtime/target/debug');
export const GATEWAY_BIN = process.env.C2S_GATEWAY_BIN ?? join(targetDir, 'gateway');
export const WORKER_BIN = process.env.C2S_WORKER_BIN ?? join(targetDir, 'worker');
export const REDIS_URL = process.env.C2S_TEST_REDIS_URL ?? 'redis://127.0.0.1:6379';
/** The PostgreSQL server the tests use (its superuser, for set-up only). */
const PG_ADMIN = process.env.C2S_TEST_PG_URL ?? 'postgres://postgres@127.0.0.1:5432';
/** The database the SDK tests' workers query, prepared by the project's own reader-role.sql. */
const SDK_DATABASE = 'c2s_sdk_tests';
// From the module's own path (a string: jsdom's URL class is not node's).
const READER_SCRIPT = join(dirname(fileURLToPath(import.meta.url)), '../../../../deploy/postgres/reader-role.sql');
let readerUrl: string | undefined;

/**
 * The URL workers connect with: `C2S_TEST_DATABASE_URL`, else the least-privilege role of
 * deploy/postgres/reader-role.sql on a database of the SDK tests (created and prepared on first use;
 * the worker refuses a superuser).
 */
export function databaseUrl(): string {
  if (process.env.C2S_TEST_DATABASE_URL) return process.env.C2S_TEST_DATABASE_URL;
  if (readerUrl) return readerUrl;
  // Another test process may create or prepare it at the same moment: retry what collided.
  for (let attempt = 1; ; attempt++) {
    spawnSync('psql', [`${PG_ADMIN}/postgres`, '-qc', `CREATE DATABASE ${SDK_DATABASE}`], { stdio: 'ignore' });
    const load = spawnSync('psql', [`${PG_ADMIN}/${SDK_DATABASE}`, '-q', '-v', 'ON_ERROR_STOP=1', '-f', READER_SCRIPT], {
      encoding: 'utf8',
    });
    if (load.status === 0) break;
    if (attempt >= 5) throw new Error(`loading ${READER_SCRIPT}: ${load.stderr}`);
  }
  const url = new URL(`${PG_ADMIN}/${SDK_DATABASE}`);
  url.username = 'chat2sql_reader';
  url.password = 'chat2sql-reader-demo';
  readerUrl = url.toString();
  return readerUrl;
}

export interface Proc {
  readonly proc: ChildProcess;
  /** Last lines of stderr, for failure messages. */
  logs(): string;
  kill(signal?: NodeJS.Signals): Promise<void>;
}

export interface Gateway extends Proc {
  readonly port: number;
  /** `ws://127.0.0.1:<port>` */
  readonly url: string;
  readonly http: string;
}

const running = new Set<ChildProcess>();
process.on('exit', () => {
  for (const p of running) p.kill('SIGKILL');
});

function launch(bin: string, args: string[], readyPattern: RegExp, env: NodeJS.ProcessEnv = {}): Promise<{ proc: Proc; match: RegExpMatchArray }> {
  const child = spawn(bin, args, {
    stdio: ['ignore', 'pipe', 'pipe'],
    env: { ...process.env, C2S_LOG: 'warn', C2S_LOG_FORMAT: 'text', ...env },
  });
  running.add(child);
  let stderr = '';
  child.stderr!.on('data', (d: Buffer) => {
    stderr = (stderr + d.toString()).slice(-8000);
  });
  const exited = new Promise<void>((resolve) => child.once('exit', () => {
    running.delete(child);
    resolve();
  }));
  const proc: Proc = {
    proc: child,
    logs: () => stderr,
    async kill(signal = 'SIGKILL') {
      if (child.exitCode !== null || child.signalCode !== null) return;
      child.kill(signal);
      await exited;
    },
  };
  return new Promise((resolve, reject) => {
    let out = '';
    const timer = setTimeout(() => reject(new Error(`${bin} not ready in 30s:\n${stderr}`)), 30_000);
    child.stdout!.on('data', (d: Buffer) => {
      out += d.toString();
      const match = out.match(readyPattern);
      if (match) {
        clearTimeout(timer);
        child.stdout!.removeAllListeners('data');
        child.stdout!.resume();
        resolve({ proc, match });
      }
    });
    child.once('exit', (code, signal) => {
      clearTimeout(timer);
      reject(new Error(`${bin} exited (${code ?? signal}) before ready:\n${stderr}`));
    });
  });
}

/** An embedded gateway (in-process bus + worker on SQLite). `port` 0 picks one; give it to restart on the same. */
export async function startEmbedded(options: { port?: number; sqlitePath?: string; args?: string[] } = {}): Promise<Gateway> {
  const args = ['--embedded', '--bind', `127.0.0.1:${options.port ?? 0}`];
  if (options.sqlitePath) args.push('--sqlite-path', options.sqlitePath);
  return gateway(args.concat(options.args ?? []));
}

/** A networked gateway on Redis. */
export async function startNetworked(prefix: string, args: string[] = [], port = 0): Promise<Gateway> {
  return gateway(['--redis-url', REDIS_URL, '--key-prefix', prefix, '--bind', `127.0.0.1:${port}`, ...args]);
}

async function gateway(args: string[]): Promise<Gateway> {
  const { proc, match } = await launch(GATEWAY_BIN, args, /LISTENING 127\.0\.0\.1:(\d+)/);
  const port = Number(match[1]);
  return { ...proc, port, url: `ws://127.0.0.1:${port}`, http: `http://127.0.0.1:${port}` };
}

/** A worker on Redis + PostgreSQL. */
export async function startWorker(prefix: string, args: string[] = []): Promise<Proc> {
  const { proc } = await launch(WORKER_BIN, ['--redis-url', REDIS_URL, '--key-prefix', prefix, '--database-url', databaseUrl(), ...args], /READY/);
  return proc;
}

/** A fresh random Redis key prefix. */
export function keyPrefix(): string {
  return `tsdk-${randomBytes(6).toString('hex')}`;
}

/** A temp dir removed by the returned function. */
export function tempDir(): { path: string; remove: () => void } {
  const path = mkdtempSync(join(tmpdir(), 'c2s-tsdk-'));
  return { path, remove: () => rmSync(path, { recursive: true, force: true }) };
}

/** Deletes the Redis keys of a test prefix (best effort, with redis-cli when installed). */
export function dropPrefix(prefix: string): void {
  const url = new URL(REDIS_URL);
  const cli = ['-h', url.hostname, '-p', url.port || '6379'];
  const scan = spawnSync('redis-cli', [...cli, '--scan', '--pattern', `${prefix}:*`], { encoding: 'utf8' });
  if (scan.status !== 0 || !scan.stdout) return;
  const keys = scan.stdout.split('\n').filter(Boolean);
  for (let i = 0; i < keys.length; i += 500) spawnSync('redis-cli', [...cli, 'DEL', ...keys.slice(i, i + 500)]);
}

/** Kills (SIGKILL) every process these helpers started that is still running, and waits for them. */
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
