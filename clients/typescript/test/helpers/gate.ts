import WebSocket from 'ws';
import type { ServerFrame, WebSocketConstructor, WebSocketLike } from '../../src/index.js';

/** What a {@link FrameGate} does with an incoming frame. */
export type GateDecision = 'pass' | 'hold' | 'flush';

/**
 * A real `ws` socket whose incoming frames pass through a test-controlled gate: frames can be held back and
 * delivered later — all in one synchronous loop (several frames in one tick, as one TCP read gives them), or
 * after frames that arrived later (reordering) — to reproduce timings that a fast local gateway rarely shows.
 */
export class FrameGate {
  /** Decides per incoming frame: deliver it (`pass`), keep it (`hold`), or keep it and deliver everything held now (`flush`). */
  decide: (frame: ServerFrame) => GateDecision = () => 'pass';
  /** Frames delivered by the last flush/release. */
  lastBurst = 0;
  private held: Array<() => void> = [];

  readonly WebSocket: WebSocketConstructor;

  constructor() {
    const gate = this;
    this.WebSocket = class GatedWebSocket implements WebSocketLike {
      onopen: ((event: unknown) => unknown) | null = null;
      onmessage: ((event: unknown) => unknown) | null = null;
      onclose: ((event: unknown) => unknown) | null = null;
      onerror: ((event: unknown) => unknown) | null = null;
      private readonly inner: WebSocket;
      constructor(url: string) {
        this.inner = new WebSocket(url);
        this.inner.onopen = (e) => this.onopen?.(e);
        this.inner.onclose = (e) => this.onclose?.(e);
        this.inner.onerror = (e) => this.onerror?.(e);
        this.inner.onmessage = (e) => {
          const deliver = () => this.onmessage?.(e);
          const decision = gate.decide(JSON.parse(String(e.data)) as ServerFrame);
          if (decision === 'pass') deliver();
          else {
            gate.held.push(deliver);
            if (decision === 'flush') gate.release();
          }
        };
      }
      get readyState(): number {
        return this.inner.readyState;
      }
      send(data: string): void {
        this.inner.send(data);
      }
      close(code?: number, reason?: string): void {
        this.inner.close(code, reason);
      }
      terminate(): void {
        this.inner.terminate();
      }
    };
  }

  /** Delivers every held frame now, in arrival order, in one synchronous loop. */
  release(): number {
    const held = this.held.splice(0);
    for (const deliver of held) deliver();
    this.lastBurst = held.length;
    return held.length;
  }

  get heldCount(): number {
    return this.held.length;
  }

  /**
   * From the first frame matching `start` until one matching `end` (both included), hold every frame, then
   * deliver them all in one synchronous burst.
   */
  burst(start: (f: ServerFrame) => boolean, end: (f: ServerFrame) => boolean): void {
    let holding = false;
    this.decide = (f) => {
      if (!holding && !start(f)) return 'pass';
      holding = true;
      if (!end(f)) return 'hold';
      holding = false;
      return 'flush';
    };
  }
}
