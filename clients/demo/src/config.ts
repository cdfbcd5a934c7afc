/** What the page is told by its URL: who it is, which session, and where the gateway is. */
export interface PageConfig {
  /** `ws(s)://<host of this page>`: the gateway that served the page. */
  readonly url: string;
  /** `?user=` / `?name=`: development identity, honoured only by gateways running without authentication. */
  readonly user: string | undefined;
  readonly name: string | undefined;
  /** `?token=`: a JWT, sent as `access_token`. */
  readonly token: string | undefined;
  /** `?session=`: join this collaboration session. */
  readonly sessionId: string | undefined;
}

export function readConfig(location: Location = window.location): PageConfig {
  const params = new URLSearchParams(location.search);
  const get = (key: string): string | undefined => {
    const v = params.get(key)?.trim();
    return v ? v : undefined;
  };
  const scheme = location.protocol === 'https:' ? 'wss' : 'ws';
  return {
    url: `${scheme}://${location.host}`,
    user: get('user'),
    name: get('name'),
    token: get('token'),
    sessionId: get('session'),
  };
}

/** Client options for the identity of the page (token wins; user/name only when given). */
export function identityOptions(config: PageConfig): { token?: string; user?: string; name?: string } {
  const o: { token?: string; user?: string; name?: string } = {};
  if (config.token) o.token = config.token;
  if (config.user) o.user = config.user;
  if (config.name) o.name = config.name;
  return o;
}
