import { RowStore, type QueryHandle, type QueryState, type RowStoreSnapshot } from '@chat2sql/realtime';

/**
 * The execution the page shows: its handle (state, cancel) and its rows.
 *
 * An adapter over the SDK's {@link RowStore}: `useStreamingData(handle)` attaches its store when React renders
 * with the new handle, which is too late for a collaboration session's shared execution (the handle is made in
 * the `shared_execution` event handler and its first events may be dispatched before the next render). Here the
 * rows are attached synchronously, in the same call that makes the handle.
 */
export class ExecutionTracker {
  /** Rows of the current execution, appended in place (no copy per chunk). */
  readonly rows = new RowStore<unknown>();
  private handle: QueryHandle | null = null;
  private offState: (() => void) | undefined;
  private readonly listeners = new Set<() => void>();
  private offRows: () => void;

  constructor() {
    this.offRows = this.rows.subscribe(() => this.emit());
  }

  /** The execution shown now, if any. */
  get current(): QueryHandle | null {
    return this.handle;
  }

  get state(): QueryState | null {
    return this.handle?.state ?? null;
  }

  get snapshot(): RowStoreSnapshot {
    return this.rows.getSnapshot();
  }

  /** Shows `handle` from now on: rows are emptied (in place) and follow its chunks. */
  follow(handle: QueryHandle): void {
    if (this.handle === handle) return;
    const previous = this.handle;
    this.offState?.();
    this.handle = handle;
    this.rows.attach(handle);
    this.offState = handle.subscribe(() => this.emit());
    // A replaced execution that still runs keeps running (it may be someone else's): we just stop listening.
    if (previous && !previous.state.outcome) previous.dispose();
    this.emit();
  }

  subscribe = (listener: () => void): (() => void) => {
    this.listeners.add(listener);
    return () => this.listeners.delete(listener);
  };

  dispose(): void {
    this.offState?.();
    this.offRows();
    this.rows.dispose();
    this.listeners.clear();
  }

  private emit(): void {
    for (const l of [...this.listeners]) l();
  }
}
