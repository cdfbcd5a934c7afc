/** Small internals: a typed emitter, a timer registry and ids. Not part of the public API. */

/** A handler map: event name → handler signature. */
export type HandlerMap = { [event: string]: (...args: never[]) => void };

/** Reports a handler's exception without breaking the dispatch loop. */
export type HandlerErrorReporter = (error: unknown, event: string) => void;

/** A minimal typed event emitter: `on` returns its unsubscribe function. */
export class Emitter<M extends HandlerMap> {
  private readonly handlers = new Map<keyof M, Set<M[keyof M]>>();

  constructor(private readonly report: HandlerErrorReporter = defaultReport) {}

  /** Adds a handler; returns a function that removes it. */
  on<E extends keyof M>(event: E, handler: M[E]): () => void {
    let set = this.handlers.get(event);
    if (!set) {
      set = new Set();
      this.handlers.set(event, set);
    }
    set.add(handler);
    return () => this.off(event, handler);
  }

  /** Removes a handler added with {@link on} (or {@link once}: pass the same function). */
  off<E extends keyof M>(event: E, handler: M[E]): void {
    const set = this.handlers.get(event);
    if (!set) return;
    set.delete(handler);
    for (const h of set) {
      if ((h as { original?: unknown }).original === handler) set.delete(h);
    }
    if (set.size === 0) this.handlers.delete(event);
  }

  /** Adds a handler that runs at most once; returns a function that removes it. */
  once<E extends keyof M>(event: E, handler: M[E]): () => void {
    const wrapper = ((...args: Parameters<M[E]>) => {
      this.off(event, wrapper);
      (handler as (...a: Parameters<M[E]>) => void)(...args);
    }) as unknown as M[E] & { original?: unknown };
    wrapper.original = handler;
    return this.on(event, wrapper);
  }

  /** True when someone listens to `event`. */
  has(event: keyof M): boolean {
    return (this.handlers.get(event)?.size ?? 0) > 0;
  }

  emit<E extends keyof M>(event: E, ...args: Parameters<M[E]>): void {
    const set = this.handlers.get(event);
    if (!set) return;
    for (const handler of [...set]) {
      try {
        (handler as (...a: Parameters<M[E]>) => void)(...args);
      } catch (error) {
        this.report(error, String(event));
      }
    }
  }

  clear(): void {
    this.handlers.clear();
  }
}

function defaultReport(error: unknown, event: string): void {
  console.error(`@chat2sql/realtime: a "${event}" handler threw`, error);
}

/** Every timer an object starts, so that one call clears them all. */
export class Timers {
  private readonly timeouts = new Set<ReturnType<typeof setTimeout>>();
  private readonly intervals = new Set<ReturnType<typeof setInterval>>();

  timeout(fn: () => void, ms: number): ReturnType<typeof setTimeout> {
    const handle = setTimeout(() => {
      this.timeouts.delete(handle);
      fn();
    }, ms);
    this.timeouts.add(handle);
    return handle;
  }

  interval(fn: () => void, ms: number): ReturnType<typeof setInterval> {
    const handle = setInterval(fn, ms);
    this.intervals.add(handle);
    return handle;
  }

  clear(handle: ReturnType<typeof setTimeout> | ReturnType<typeof setInterval> | undefined): void {
    if (handle === undefined) return;
    if (this.timeouts.delete(handle)) clearTimeout(handle);
    if (this.intervals.delete(handle)) clearInterval(handle);
  }

  clearAll(): void {
    for (const h of this.timeouts) clearTimeout(h);
    for (const h of this.intervals) clearInterval(h);
    this.timeouts.clear();
    this.intervals.clear();
  }

  get size(): number {
    return this.timeouts.size + this.intervals.size;
  }
}

/** A random RFC 4122 v4 uuid (crypto.randomUUID where available, which needs a secure context in browsers). */
export function uuid(): string {
  const c = (globalThis as { crypto?: Crypto }).crypto;
  if (c && typeof c.randomUUID === 'function') return c.randomUUID();
  const bytes = new Uint8Array(16);
  if (c && typeof c.getRandomValues === 'function') c.getRandomValues(bytes);
  else for (let i = 0; i < 16; i++) bytes[i] = Math.floor(Math.random() * 256);
  bytes[6] = (bytes[6]! & 0x0f) | 0x40;
  bytes[8] = (bytes[8]! & 0x3f) | 0x80;
  const hex = Array.from(bytes, (b) => b.toString(16).padStart(2, '0')).join('');
  return `${hex.slice(0, 8)}-${hex.slice(8, 12)}-${hex.slice(12, 16)}-${hex.slice(16, 20)}-${hex.slice(20)}`;
}
