import { RealtimeClient, type RealtimeClientOptions } from './client.js';
import type { ChatEntry, Participant, ServerFrame, SharedExecution } from './generated/protocol.js';
import { RealtimeError } from './protocol.js';
import type { ExecuteOptions, QueryHandle, SubscribeOptions } from './query.js';
import { RowStore } from './rows.js';
import { Emitter, uuid } from './util.js';

/** Options of {@link CollaborationSession}: a client's options without `path`, plus the session. */
export interface CollaborationOptions extends Omit<RealtimeClientOptions, 'path'> {
  /** The session to join (letters, digits, `_`, `-`, `.`; at most 64). */
  sessionId: string;
  /** Most chat messages kept in {@link CollaborationState.chat} (oldest dropped). Default 500. */
  chatLimit?: number;
  /** Most shared executions kept in {@link CollaborationState.executions} (and {@link CollaborationSession.sharedExecutions}). Default 50. */
  executionLimit?: number;
  /**
   * How many of the most recent shared executions keep their rows in a {@link RowStore} (attached when the
   * `shared_execution` announcement is handled, before any of the execution's events). An older execution's
   * store is detached and dropped by the session (its `rows` becomes `null`; the rows are freed unless you
   * still hold the store). Default 1: the latest run only — a shared 1M-row result is held once. 0: no stores.
   */
  sharedRows?: number;
  /** `notifyIntervalMs` of those stores (see {@link RowStore}): listeners run at most this often while rows stream. Default 50. */
  rowsNotifyIntervalMs?: number;
}

/**
 * A query run in the session (by anyone, this participant included), followed from its `shared_execution`
 * announcement: the handle and the row store are created synchronously while the announcement is handled, so
 * no event of the execution can arrive before them.
 */
export interface SharedExecutionEntry<Row = unknown> {
  readonly executionId: string;
  /** The announcement: who ran it (`authorId`, a participant id), the SQL, when. */
  readonly execution: SharedExecution;
  /** Its state, outcome, `cancel()` (no event buffer: use `on` or the callbacks of your own `watchExecution`). */
  readonly handle: QueryHandle;
  /** Its rows, from the first chunk; `null` beyond the `sharedRows` most recent executions. */
  readonly rows: RowStore<Row> | null;
}

/** Options of {@link CollaborationSession.updateQuery}. */
export interface UpdateQueryOptions {
  /**
   * The version of the shared text this edit was made on (e.g. `state.queryVersion` when the user typed, or the
   * version your editor last took the text from). If someone else's update landed after it, the update resolves
   * `conflict` instead of overwriting theirs. Versions written since then by this session's own updates are not
   * conflicts (your text already contains them): they are skipped over, so a later edit can be sent while an
   * earlier one is still in flight. Default: the latest version this session knew **when `updateQuery` was
   * called** (not when the update is actually sent). Pass it explicitly when the edit is older than the call
   * (debounced editors).
   */
  baseVersion?: number;
  /** Send without `baseVersion`: last writer wins, never `conflict`. */
  force?: boolean;
}

/** The shared state of a session as this participant sees it; a new object on every change. */
export interface CollaborationState {
  readonly sessionId: string;
  /** This connection's participant id (changes on every reconnect: a new socket is a new participant). */
  readonly participantId: string | null;
  /** True once `session_state` arrived on the current connection. */
  readonly joined: boolean;
  readonly participants: readonly Participant[];
  /** The shared query text, its version (0 before the first update) and its last author's participant id. */
  readonly query: string;
  readonly queryVersion: number;
  readonly queryAuthor: string | null;
  /** Other participants' cursors by participant id (our own is not echoed here). */
  readonly cursors: Readonly<Record<string, unknown>>;
  /** Chat history, oldest first. */
  readonly chat: readonly ChatEntry[];
  /** Queries run in the session, oldest first. */
  readonly executions: readonly SharedExecution[];
}

/** What {@link CollaborationSession.updateQuery} resolves with. */
export type UpdateQueryResult =
  | { readonly status: 'applied' }
  /** Someone changed the text first: rebase on `currentQuery` and retry. */
  | { readonly status: 'conflict'; readonly currentVersion: number; readonly currentQuery: string }
  /** A newer `updateQuery` call replaced this one before it was sent. */
  | { readonly status: 'superseded' }
  | { readonly status: 'failed'; readonly error: RealtimeError };

type SessionEvents = {
  /** The state (or {@link CollaborationSession.sharedExecutions}) changed. */
  change: (state: CollaborationState) => void;
  /** An `updateQuery` conflicted. */
  conflict: (info: { currentVersion: number; currentQuery: string; attempted: string }) => void;
};

interface PendingUpdate {
  text: string;
  force: boolean;
  /** The version the edit was made on (explicit, or the latest known at the call). */
  base: number;
  explicit: boolean;
  resolvers: Array<(result: UpdateQueryResult) => void>;
}

/** Versions of our own updates remembered to skip over (older ones are forgotten). */
const OWN_VERSIONS_KEPT = 1000;

/**
 * A collaboration session (`/ws/collaboration/{sessionId}`): presence, the shared query text with optimistic
 * versioning, cursors, chat and shared executions, kept as one immutable {@link state} snapshot.
 *
 * Reconnects rejoin with `?afterSeq=` so missed events are replayed (chat messages missed while away are
 * merged in, by id); the snapshot the server sends on every join is the source of truth for the rest.
 *
 * @example
 * ```ts
 * const session = new CollaborationSession({ url: 'ws://127.0.0.1:8080', sessionId: 'team-1', user: 'ann', name: 'Ann' });
 * session.subscribe(() => render(session.state));
 * await session.updateQuery('SELECT * FROM orders');
 * await session.sendChat('look at this');
 * ```
 */
export class CollaborationSession {
  /** The underlying connection (status, latency, raw events). */
  readonly client: RealtimeClient;
  readonly sessionId: string;

  private current: CollaborationState;
  private readonly listeners = new Set<() => void>();
  private readonly emitter = new Emitter<SessionEvents>();
  private readonly offs: Array<() => void> = [];
  private readonly chatLimit: number;
  private readonly executionLimit: number;
  private readonly sharedRows: number;
  private readonly rowsNotifyIntervalMs: number;
  private shared: readonly SharedExecutionEntry[] = [];
  /** The latest version we know of: from events, and from our own acknowledged updates (base + 1). */
  private knownVersion = 0;
  /** Versions written by this session's own updates (acks of based updates, echoes of our participant ids). */
  private readonly ownVersions = new Set<number>();
  /** Every participant id this session had (one per connection). */
  private readonly ownParticipants = new Set<string>();
  /** The `seq` of the snapshot of the current connection: events at or below it are already in it. */
  private snapshotSeq = 0;
  private inFlight: PendingUpdate | undefined;
  private next: PendingUpdate | undefined;

  constructor(options: CollaborationOptions) {
    const { sessionId, chatLimit, executionLimit, sharedRows, rowsNotifyIntervalMs, autoConnect, ...clientOptions } = options;
    this.sessionId = sessionId;
    this.chatLimit = chatLimit ?? 500;
    this.executionLimit = executionLimit ?? 50;
    this.sharedRows = Math.max(0, sharedRows ?? 1);
    this.rowsNotifyIntervalMs = rowsNotifyIntervalMs ?? 50;
    this.current = {
      sessionId,
      participantId: null,
      joined: false,
      participants: [],
      query: '',
      queryVersion: 0,
      queryAuthor: null,
      cursors: {},
      chat: [],
      executions: [],
    };
    this.client = new RealtimeClient({
      ...clientOptions,
      path: `/ws/collaboration/${encodeURIComponent(sessionId)}`,
      autoConnect: false,
    });
    this.offs.push(
      this.client.on('message', (frame) => this.onFrame(frame)),
      this.client.on('status', (status) => {
        if (status.state !== 'open' && this.current.joined) this.set({ joined: false });
      }),
    );
    if (autoConnect !== false) this.client.connect();
  }

  /** The state now. */
  get state(): CollaborationState {
    return this.current;
  }

  /** Calls `listener` after every state change; returns the unsubscribe function (`useSyncExternalStore` shape). */
  subscribe = (listener: () => void): (() => void) => {
    this.listeners.add(listener);
    return () => this.listeners.delete(listener);
  };

  /** Current-state getter for `useSyncExternalStore`. */
  getSnapshot = (): CollaborationState => this.current;

  /**
   * The shared executions, oldest first (at most `executionLimit`), each with its handle and — for the
   * `sharedRows` most recent — its rows. A new array when it changes; {@link subscribe} listeners are called then.
   */
  get sharedExecutions(): readonly SharedExecutionEntry[] {
    return this.shared;
  }

  /** The most recent shared execution, if any. */
  get latestSharedExecution(): SharedExecutionEntry | null {
    return this.shared[this.shared.length - 1] ?? null;
  }

  /** `useSyncExternalStore` getter of {@link sharedExecutions}. */
  getSharedExecutions = (): readonly SharedExecutionEntry[] => this.shared;

  /** Listens to `change` or `conflict`; returns the unsubscribe function. For protocol events use `client.on`. */
  on<E extends keyof SessionEvents>(event: E, handler: SessionEvents[E]): () => void {
    return this.emitter.on(event, handler);
  }

  /** Connects (or reconnects after {@link close}). */
  connect(): void {
    this.client.connect();
  }

  /** Leaves the session and closes the connection. */
  close(): Promise<void> {
    const error = new RealtimeError('closed', 'the session was closed');
    for (const p of [this.inFlight, this.next]) p?.resolvers.forEach((r) => r({ status: 'failed', error }));
    this.inFlight = this.next = undefined;
    return this.client.close();
  }

  /**
   * Replaces the shared query text. Sent with `baseVersion` — the version the edit was made on (see
   * {@link UpdateQueryOptions.baseVersion}: explicit, or by default the latest version known at this call) —
   * so an edit based on a version someone else has since replaced resolves `conflict` instead of overwriting
   * theirs; `force` sends it without (last writer wins). Updates are sent one at a time; a call made while one
   * is in flight replaces any call still waiting (that one resolves `superseded`). When the one in flight
   * conflicts, the waiting call resolves with the same conflict, unless it was given a `baseVersion` at least as
   * new as the conflicting version (it was made on the current text): then it is sent.
   */
  updateQuery(text: string, options: UpdateQueryOptions = {}): Promise<UpdateQueryResult> {
    return new Promise((resolve) => {
      const explicit = options.baseVersion !== undefined && options.baseVersion !== null;
      const update: PendingUpdate = {
        text,
        force: options.force ?? false,
        base: explicit ? options.baseVersion! : this.knownVersion,
        explicit,
        resolvers: [resolve],
      };
      if (!this.inFlight) {
        this.sendUpdate(update);
        return;
      }
      this.next?.resolvers.forEach((r) => r({ status: 'superseded' }));
      this.next = update;
    });
  }

  /** Moves this participant's cursor (any JSON); the gateway coalesces and broadcasts it. */
  moveCursor(cursor: unknown): void {
    this.client.send('move_cursor', { cursor });
  }

  /**
   * Sends a chat message; resolves with its id once the gateway stored it (`duplicate: true` for a re-send
   * after a reconnect that it had already stored: it is delivered once either way).
   */
  async sendChat(content: string): Promise<{ id: string; duplicate: boolean }> {
    const id = uuid();
    const ack = await this.client.request('chat_message', { message: { id, content } });
    return { id, duplicate: ack.duplicate ?? false };
  }

  /** Runs a query in the session: every participant receives its events. */
  executeQuery(query: string, options: ExecuteOptions = {}): QueryHandle {
    return this.client.executeQuery(query, options);
  }

  /** Follows a shared execution (see {@link CollaborationState.executions}); its events already come to this socket. */
  watchExecution(executionId: string, options: SubscribeOptions = {}): QueryHandle {
    return this.client.watch(executionId, options);
  }

  // ---- internals -----------------------------------------------------------------------------------------

  /** `base`, moved past the versions our own updates wrote right after it. */
  private rebase(base: number): number {
    let b = base;
    while (this.ownVersions.has(b + 1)) b++;
    return b;
  }

  private rememberOwnVersion(version: number): void {
    this.ownVersions.add(version);
    if (this.ownVersions.size > OWN_VERSIONS_KEPT) {
      const oldest = Math.min(...this.ownVersions);
      this.ownVersions.delete(oldest);
    }
  }

  private sendUpdate(update: PendingUpdate): void {
    this.inFlight = update;
    const base = update.force ? undefined : this.rebase(update.base);
    const settle = (result: UpdateQueryResult): void => {
      if (this.inFlight !== update) return;
      this.inFlight = undefined;
      update.resolvers.forEach((r) => r(result));
      const next = this.next;
      this.next = undefined;
      if (next) {
        if (result.status === 'conflict' && !(next.explicit && next.base >= result.currentVersion)) {
          next.resolvers.forEach((r) => r(result));
        } else {
          this.sendUpdate(next);
        }
      }
    };
    this.client.sendWithWaiter(
      'update_query',
      base === undefined ? { query: update.text } : { query: update.text, baseVersion: base },
      {
        ack: () => {
          if (base !== undefined) {
            this.knownVersion = Math.max(this.knownVersion, base + 1);
            this.rememberOwnVersion(base + 1);
          }
          settle({ status: 'applied' });
        },
        fail: (error) => {
          const body = error.body;
          if (error.code === 'conflict' && body?.currentVersion != null) {
            const currentVersion = body.currentVersion;
            const currentQuery = body.currentQuery ?? '';
            this.knownVersion = Math.max(this.knownVersion, currentVersion);
            if (currentQuery === update.text) {
              // Our own update, re-sent after a reconnect after it had been applied.
              this.rememberOwnVersion(currentVersion);
              settle({ status: 'applied' });
              return;
            }
            this.emitter.emit('conflict', { currentVersion, currentQuery, attempted: update.text });
            settle({ status: 'conflict', currentVersion, currentQuery });
          } else {
            settle({ status: 'failed', error });
          }
        },
      },
    );
  }

  private set(patch: Partial<CollaborationState>): void {
    this.current = { ...this.current, ...patch };
    for (const listener of [...this.listeners]) listener();
    this.emitter.emit('change', this.current);
  }

  private onFrame(frame: ServerFrame): void {
    const s = this.current;
    // Events replayed after a rejoin that the new snapshot already contains: only chat can be missing from it
    // (the snapshot holds recent history only).
    const folded = typeof frame.seq === 'number' && frame.seq <= this.snapshotSeq;
    switch (frame.type) {
      case 'session_state': {
        const p = frame.payload;
        this.snapshotSeq = p.snapshotSeq;
        this.knownVersion = p.queryVersion;
        this.ownParticipants.add(p.participantId);
        if (p.queryAuthor != null && this.ownParticipants.has(p.queryAuthor)) this.rememberOwnVersion(p.queryVersion);
        const { [p.participantId]: _own, ...cursors } = p.cursors;
        this.set({
          participantId: p.participantId,
          joined: true,
          participants: p.participants,
          query: p.currentQuery,
          queryVersion: p.queryVersion,
          queryAuthor: p.queryAuthor ?? null,
          cursors,
          chat: this.mergeChat(p.chatMessages, s.chat),
        });
        break;
      }
      case 'participant_joined':
        if (folded || s.participants.some((x) => x.id === frame.payload.participant.id)) return;
        this.set({ participants: [...s.participants, frame.payload.participant] });
        break;
      case 'participant_left': {
        if (folded) return;
        const id = frame.payload.participantId;
        const { [id]: _gone, ...cursors } = s.cursors;
        this.set({ participants: s.participants.filter((x) => x.id !== id), cursors });
        break;
      }
      case 'query_updated':
        if (folded || frame.payload.version < s.queryVersion) return;
        this.knownVersion = Math.max(this.knownVersion, frame.payload.version);
        if (this.ownParticipants.has(frame.payload.authorId)) this.rememberOwnVersion(frame.payload.version);
        this.set({ query: frame.payload.query, queryVersion: frame.payload.version, queryAuthor: frame.payload.authorId });
        break;
      case 'cursor_moved':
        if (folded || frame.payload.participantId === s.participantId) return;
        this.set({ cursors: { ...s.cursors, [frame.payload.participantId]: frame.payload.cursor } });
        break;
      case 'chat_message':
        if (s.chat.some((m) => m.id === frame.payload.message.id)) return;
        this.set({ chat: this.mergeChat(s.chat, [frame.payload.message]) });
        break;
      case 'shared_execution':
        if (s.executions.some((e) => e.executionId === frame.payload.executionId)) return;
        // Synchronously, before the next frame is read: the execution's first event cannot precede its store.
        this.followShared(frame.payload);
        this.set({ executions: [...s.executions, frame.payload].slice(-this.executionLimit) });
        break;
      default:
    }
  }

  private followShared(execution: SharedExecution): void {
    const handle = this.client.watch(execution.executionId, { buffer: false });
    let rows: RowStore | null = null;
    if (this.sharedRows > 0) {
      rows = new RowStore({ notifyIntervalMs: this.rowsNotifyIntervalMs });
      rows.attach(handle);
    }
    const all = [...this.shared, { executionId: execution.executionId, execution, handle, rows }];
    // Forget the oldest beyond executionLimit; release the stores beyond sharedRows.
    for (const gone of all.splice(0, Math.max(0, all.length - this.executionLimit))) {
      gone.rows?.dispose();
      gone.handle.dispose();
    }
    for (let i = 0; i < all.length - this.sharedRows; i++) {
      const entry = all[i]!;
      if (entry.rows) {
        entry.rows.dispose();
        all[i] = { ...entry, rows: null };
      }
    }
    this.shared = all;
  }

  /** Union by id, ordered by time, capped. */
  private mergeChat(a: readonly ChatEntry[], b: readonly ChatEntry[]): ChatEntry[] {
    const byId = new Map<string, ChatEntry>();
    for (const m of a) byId.set(m.id, m);
    for (const m of b) if (!byId.has(m.id)) byId.set(m.id, m);
    return [...byId.values()].sort((x, y) => x.timestamp - y.timestamp).slice(-this.chatLimit);
  }
}
