/**
 * The demo page in a real browser against a real 2-node cluster: two gateways on Redis, one worker on
 * PostgreSQL, Debian's Chromium driven by playwright-core. Alice is on gateway A, Bob on gateway B, in one
 * collaboration session: shared text, a shared execution whose rows fill both tables, then gateway A is killed
 * (SIGKILL) and restarted on the same port, and Alice's page reconnects, rejoins and keeps working.
 */
import { createHash, randomBytes } from 'node:crypto';
import { existsSync, mkdirSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { chromium, type Browser, type Page } from 'playwright-core';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { dropKeys, keyPrefix, killAll, startGateway, startWorker, type Gateway, type Proc } from './processes';

const CHROMIUM = process.env.CHROMIUM_BIN ?? '/usr/bin/chromium';
const ARTIFACTS = join(dirname(fileURLToPath(import.meta.url)), '..', 'test-artifacts');
const md5 = (s: string) => createHash('md5').update(s).digest('hex');

const prefix = keyPrefix();
const sessionId = `demo-${randomBytes(4).toString('hex')}`;
let gatewayA: Gateway;
let gatewayB: Gateway;
let worker: Proc;
let browser: Browser | undefined;
let pageA: Page;
let pageB: Page;
const consoleErrors: string[] = [];
const screenshots: string[] = [];
const t0 = Date.now();
const log = (msg: string) => console.log(`[${((Date.now() - t0) / 1000).toFixed(1)}s] ${msg}`);

async function shot(page: Page, name: string): Promise<void> {
  const path = join(ARTIFACTS, `${name}.png`);
  await page.screenshot({ path, fullPage: true });
  screenshots.push(path);
  log(`screenshot ${path}`);
}

/** Waits until `[data-testid=<id>]`'s attribute (or text, attr = null) satisfies `want`; explains a timeout. */
async function waitFor(page: Page, testId: string, attr: string | null, want: string | RegExp, timeout = 20_000): Promise<void> {
  const source = typeof want === 'string' ? { s: want } : { r: want.source, f: want.flags };
  try {
    await page.waitForFunction(
      ({ testId, attr, source }) => {
        const el = document.querySelector(`[data-testid="${testId}"]`);
        if (!el) return false;
        const v = attr === null ? (el.textContent ?? '') : (el.getAttribute(attr) ?? '');
        return 's' in source ? v === source.s : new RegExp(source.r!, source.f).test(v);
      },
      { testId, attr, source },
      { timeout, polling: 50 },
    );
  } catch (error) {
    const now = await page
      .evaluate(({ testId, attr }) => {
        const el = document.querySelector(`[data-testid="${testId}"]`);
        return el ? (attr === null ? el.textContent : el.getAttribute(attr)) : '(missing)';
      }, { testId, attr })
      .catch(() => '(page gone)');
    const status = await page.locator('[data-testid=status]').textContent().catch(() => '');
    const conn = await page.locator('[data-testid=connection-status]').textContent().catch(() => '');
    throw new Error(
      `${page.url()}: [data-testid=${testId}]${attr ? `@${attr}` : ''} is ${JSON.stringify(now)}, wanted ${String(want)}\n` +
        `status: ${status}\nconnection: ${conn}\nconsole errors: ${consoleErrors.join('\n')}\n(${String(error)})`,
    );
  }
}

const count = (page: Page, testId: string) => page.locator(`[data-testid="${testId}"]`).count();
const rowText = (page: Page, index: number) =>
  page.locator(`[data-testid="result-row"][data-index="${index}"]`).innerText().then((t) => t.replace(/\s+/g, ' ').trim());

async function scrollResults(page: Page, to: 'top' | 'bottom'): Promise<void> {
  await page.evaluate((to) => {
    const el = document.querySelector('[data-testid="results"]')!;
    el.scrollTop = to === 'top' ? 0 : el.scrollHeight;
  }, to);
  // The table re-renders on the next animation frame.
  await page.waitForFunction(() => new Promise((r) => requestAnimationFrame(() => requestAnimationFrame(() => r(true)))));
}

async function openPage(user: string, name: string, gateway: Gateway): Promise<Page> {
  const context = await browser!.newContext({ viewport: { width: 1280, height: 900 } });
  const page = await context.newPage();
  page.on('console', (m) => {
    // Refused sockets while gateway A is down are expected (the browser logs each failed attempt).
    if (m.type() === 'error' && !/^WebSocket connection to .* failed/.test(m.text())) consoleErrors.push(`${user}: ${m.text()}`);
  });
  page.on('pageerror', (e) => consoleErrors.push(`${user}: ${e.message}`));
  await page.goto(`${gateway.http}/?session=${sessionId}&user=${user}&name=${name}`);
  return page;
}

beforeAll(async () => {
  if (!existsSync(CHROMIUM)) throw new Error(`${CHROMIUM} is missing: apt-get install -y chromium (or set CHROMIUM_BIN)`);
  mkdirSync(ARTIFACTS, { recursive: true });
  [worker, gatewayA, gatewayB] = await Promise.all([
    startWorker(prefix),
    startGateway('gw-a', prefix),
    startGateway('gw-b', prefix),
  ]);
  log(`gateway A :${gatewayA.port}, gateway B :${gatewayB.port}, worker ready; key prefix ${prefix}`);
  browser = await chromium.launch({
    executablePath: CHROMIUM,
    args: [
      '--headless',
      '--no-sandbox',
      '--disable-gpu',
      '--disable-quic',
      '--no-first-run',
      '--disable-background-networking',
      '--disable-component-update',
      '--disable-sync',
    ],
  });
});

afterAll(async () => {
  await browser?.close().catch(() => {});
  await killAll();
  dropKeys(prefix);
  if (screenshots.length) console.log(`screenshots:\n${screenshots.map((s) => `  ${s}`).join('\n')}`);
});

describe('demo page, two browsers on two gateways', () => {
  it('shares a session, streams a shared execution to both, and survives a gateway kill', async () => {
    pageA = await openPage('alice', 'Alice', gatewayA);
    pageB = await openPage('bob', 'Bob', gatewayB);
    for (const page of [pageA, pageB]) {
      await waitFor(page, 'connection-status', 'data-state', 'open');
      await waitFor(page, 'participant-count', null, '2');
    }
    expect(await pageA.locator('[data-testid=participants]').innerText()).toMatch(/Alice[\s\S]*gw-a[\s\S]*Bob[\s\S]*gw-b|Bob[\s\S]*gw-b[\s\S]*Alice[\s\S]*gw-a/);
    log('both joined: 2 participants each');
    await shot(pageA, '01-alice-joined');

    // Alice types; the editor is the shared text: Bob's editor follows, and he sees her cursor.
    const query = 'SELECT g AS n, md5(g::text) AS h\nFROM generate_series(1, 5000) g';
    await pageA.locator('[data-testid=editor]').fill(query);
    await pageB.waitForFunction((q) => (document.querySelector('[data-testid="editor"]') as HTMLTextAreaElement).value === q, query, {
      timeout: 10_000,
    });
    await waitFor(pageB, 'cursors', null, /Alice: line \d+, col \d+/);
    log("Bob's editor shows Alice's text and cursor");

    // Alice runs it: a shared execution; both tables fill with the same rows.
    await pageA.locator('[data-testid=run]').click();
    for (const page of [pageA, pageB]) {
      await waitFor(page, 'status', 'data-status', 'completed', 30_000);
      await waitFor(page, 'row-count', 'data-rows', '5000');
    }
    const firstA = await rowText(pageA, 0);
    expect(firstA).toBe(`1 1 ${md5('1')}`);
    expect(await rowText(pageB, 0)).toBe(firstA);
    const domRows = await count(pageA, 'result-row');
    expect(domRows).toBeLessThan(100); // virtualised: only the rows in view are in the DOM
    for (const page of [pageA, pageB]) await scrollResults(page, 'bottom');
    const lastA = await rowText(pageA, 4999);
    expect(lastA).toBe(`5000 5000 ${md5('5000')}`);
    expect(await rowText(pageB, 4999)).toBe(lastA);
    expect(await pageB.locator('[data-testid=progress]').getAttribute('data-progress')).toBe('100');
    log(`both tables have 5000 rows (${domRows} in the DOM); first and last rows match`);
    await shot(pageB, '02-bob-rows');

    // Gateway A dies (SIGKILL) and a supervisor starts a new process on the same port.
    const portA = gatewayA.port;
    await gatewayA.kill('SIGKILL');
    log('gateway A killed');
    await waitFor(pageA, 'connection-status', 'data-state', /^(reconnecting|connecting)$/, 10_000);
    await shot(pageA, '03-alice-reconnecting');
    gatewayA = await startGateway('gw-a', prefix, portA);
    log(`gateway A restarted on :${portA}`);
    await waitFor(pageA, 'connection-status', 'data-state', 'open', 30_000);
    await waitFor(pageA, 'connection-status', null, /open/);
    // Rejoined: Alice is listed again (on the new gw-a process).
    await pageA.waitForFunction(
      () => [...document.querySelectorAll('[data-testid="participant"]')].some((li) => li.textContent!.includes('(you)')),
      undefined,
      { timeout: 15_000 },
    );
    log('Alice reconnected and rejoined');
    // Her previous connection's participant is gone (the restarted gw-a reaps what its previous
    // process left), on both pages: Alice and Bob only.
    for (const page of [pageA, pageB]) {
      await waitFor(page, 'participant-count', null, '2', 15_000);
    }

    // Still working: Bob's chat reaches Alice…
    await pageB.locator('[data-testid=chat-input]').fill('hello from Bob');
    await pageB.locator('[data-testid=chat-send]').click();
    await waitFor(pageA, 'chat-list', null, /Bob: hello from Bob/);
    log("Bob's chat message reached Alice");

    // …and Alice's next shared run reaches Bob.
    const second = 'SELECT g AS n, g * 2 AS doubled FROM generate_series(1, 1234) g';
    await pageA.locator('[data-testid=editor]').fill(second);
    await pageB.waitForFunction((q) => (document.querySelector('[data-testid="editor"]') as HTMLTextAreaElement).value === q, second, {
      timeout: 10_000,
    });
    await pageA.locator('[data-testid=run]').click();
    for (const page of [pageA, pageB]) {
      await waitFor(page, 'status', 'data-status', 'completed', 30_000);
      await waitFor(page, 'row-count', 'data-rows', '1234');
      await scrollResults(page, 'top');
    }
    expect(await rowText(pageB, 0)).toBe('1 1 2');
    expect(await rowText(pageA, 0)).toBe('1 1 2');
    log('the second shared run reached both');
    await shot(pageA, '04-alice-recovered');
    await shot(pageB, '05-bob-after-recovery');
    expect(consoleErrors).toEqual([]);
  });
});
