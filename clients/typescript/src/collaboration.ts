import { RealtimeClient, type RealtimeClientOptions } from './client.js';
import type { ChatEntry, Participant, ServerFrame, SharedExecution } from './generated/protocol.js';
import { RealtimeError } from './protocol.js';
import type { ExecuteOptions, QueryHandle, SubscribeOptions } from './query.js';
import { Emitter, uuid } from './util.js';

/** Options of {@link CollaborationSession}: a client's options without `path`, plus the session. */
export interface CollaborationOptions extends Omit<RealtimeClientOptions, 'path'> {
  /** The session to join (letters, digits, `_`, `-`, `.`; at most 64). */
  sessionId: string;
  /** Most chat messages kept in {@link CollaborationState.chat} (oldest dropped). Default 500. */
  chatLimit?: number;
  /** Most shared executions kept in {@link CollaborationState.executions}. Default 50. */
  executionLimit?: number;
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
  /** The state changed. */
  change: (state: CollaborationState) => void;
  /** An `updateQuery` conflicted. */
  conflict: (info: { currentVersion: number; currentQuery: string; attempted: string }) => void;
};

interface PendingUpdate {
  text: string;
  force: boolean;
  resolvers: Array<(result: UpdateQueryResult) => void>;
}

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
  /** The latest version we know of: from events, and from our own acknowledged updates (base + 1). */
  private knownVersion = 0;
  /** The `seq` of the snapshot of the current connection: events at or below it are already in it. */
  private snapshotSeq = 0;
  private inFlight: PendingUpdate | undefined;
  private next: PendingUpdate | undefined;

  constructor(options: CollaborationOptions) {
    const { sessionId, chatLimit, executionLimit, autoConnect, ...clientOptions } = options;
    this.sessionId = sessionId;
    this.chatLimit = chatLimit ?? 500;
    this.executionLimit = executionLimit ?? 50;
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
   * Replaces the shared query text. Sent with `baseVersion` (the latest version known here), so a concurrent
   * edit by someone else yields `conflict` instead of being overwritten; `force` sends it without
   * (last writer wins). Updates are sent one at a time; a call made while one is in flight replaces any
   * call still waiting (that one resolves `superseded`). After a conflict the waiting call is dropped too.
   */
  updateQuery(text: string, options: { force?: boolean } = {}): Promise<UpdateQueryResult> {
    return new Promise((resolve) => {
      const update: PendingUpdate = { text, force: options.force ?? false, resolvers: [resolve] };
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

  private sendUpdate(update: PendingUpdate): void {
    this.inFlight = update;
    const base = update.force ? undefined : this.knownVersion;
    const settle = (result: UpdateQueryResult): void => {
      if (this.inFlight !== update) return;
      this.inFlight = undefined;
      update.resolvers.forEach((r) => r(result));
      const next = this.next;
      this.next = undefined;
      if (next) {
        if (result.status === 'conflict') next.resolvers.forEach((r) => r(result));
        else this.sendUpdate(next);
      }
    };
    this.client.sendWithWaiter(
      'update_query',
      base === undefined ? { query: update.text } : { query: update.text, baseVersion: base },
      {
        ack: () => {
          if (base !== undefined) this.knownVersion = Math.max(this.knownVersion, base + 1);
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
        this.set({ executions: [...s.executions, frame.payload].slice(-this.executionLimit) });
        break;
      default:
    }
  }

  /** Union by id, ordered by time, capped. */
  private mergeChat(a: readonly ChatEntry[], b: readonly ChatEntry[]): ChatEntry[] {
    const byId = new Map<string, ChatEntry>();
    for (const m of a) byId.set(m.id, m);
    for (const m of b) if (!byId.has(m.id)) byId.set(m.id, m);
    return [...byId.values()].sort((x, y) => x.timestamp - y.timestamp).slice(-this.chatLimit);
  }
}
