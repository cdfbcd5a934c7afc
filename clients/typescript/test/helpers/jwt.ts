import { createHmac } from 'node:crypto';

const b64 = (v: string | Buffer) => Buffer.from(v).toString('base64url');

/** An HS256 JWT (what a real identity provider would issue). */
export function signHs256(claims: Record<string, unknown>, secret: string): string {
  const head = b64(JSON.stringify({ alg: 'HS256', typ: 'JWT' }));
  const body = b64(JSON.stringify({ exp: Math.floor(Date.now() / 1000) + 600, ...claims }));
  const sig = createHmac('sha256', secret).update(`${head}.${body}`).digest('base64url');
  return `${head}.${body}.${sig}`;
}
