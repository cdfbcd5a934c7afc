/** The committed build output (what the gateway serves at `/`) exists and points at the fixed asset names. */
import { existsSync, readFileSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { describe, expect, it } from 'vitest';

const out = join(dirname(fileURLToPath(import.meta.url)), '..', '..', '..', 'gateway', 'static', 'demo');

describe('gateway/static/demo', () => {
  it('index.html loads /assets/demo.js and /assets/demo.css, and both exist', () => {
    const html = readFileSync(join(out, 'index.html'), 'utf8');
    expect(html).toContain('src="/assets/demo.js"');
    expect(html).toContain('href="/assets/demo.css"');
    expect(existsSync(join(out, 'assets', 'demo.js'))).toBe(true);
    expect(existsSync(join(out, 'assets', 'demo.css'))).toBe(true);
  });
});
