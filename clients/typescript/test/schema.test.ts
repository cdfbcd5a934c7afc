// The committed schema and generated types must match what the real gateway serves.
import { readFile } from 'node:fs/promises';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
// @ts-expect-error -- a plain .mjs script without types
import { generate, generateTables, outPath, schemaPath, tablesPath } from '../scripts/gen-types.mjs';
import { startEmbedded, type Gateway } from './helpers/processes.js';

let gw: Gateway;
beforeAll(async () => {
  gw = await startEmbedded();
});
afterAll(async () => {
  await gw?.kill();
});

describe('protocol schema', () => {
  it('schema/protocol.schema.json deep-equals the gateway GET /schema (drift fails here)', async () => {
    const live = await (await fetch(`${gw.http}/schema`)).json();
    const committed = JSON.parse(await readFile(schemaPath, 'utf8'));
    expect(committed).toEqual(live);
  });

  it('src/generated/protocol.ts is what `npm run gen` makes of the committed schema', async () => {
    const committed = JSON.parse(await readFile(schemaPath, 'utf8'));
    const fresh: string = await generate(committed);
    expect(await readFile(outPath, 'utf8')).toBe(fresh);
  });

  it('src/generated/tables.ts (close codes, type lists) is what `npm run gen` makes of the committed schema', async () => {
    const committed = JSON.parse(await readFile(schemaPath, 'utf8'));
    expect(await readFile(tablesPath, 'utf8')).toBe(generateTables(committed));
  });
});
