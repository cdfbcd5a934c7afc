import { useEffect, useRef, useState, type FormEvent } from 'react';
import type { CollaborationState } from '@chat2sql/realtime';

function cursorText(cursor: unknown): string {
  if (cursor && typeof cursor === 'object') {
    const c = cursor as { line?: unknown; col?: unknown; ch?: unknown };
    const col = c.col ?? c.ch;
    if (typeof c.line === 'number') return typeof col === 'number' ? `line ${c.line}, col ${col}` : `line ${c.line}`;
  }
  return JSON.stringify(cursor);
}

const time = (ms: number) => new Date(ms).toLocaleTimeString([], { hour: '2-digit', minute: '2-digit', second: '2-digit' });

/** Participants (name, node), the others' cursors, shared runs and the chat of a collaboration session. */
export function CollabPanel({ state, onSend }: { state: CollaborationState; onSend: (text: string) => Promise<unknown> }) {
  const [draft, setDraft] = useState('');
  const [error, setError] = useState<string | undefined>(undefined);
  const list = useRef<HTMLOListElement>(null);
  const names = new Map(state.participants.map((p) => [p.id, p.name]));
  const cursors = Object.entries(state.cursors);
  const lastRun = state.executions[state.executions.length - 1];

  useEffect(() => {
    const el = list.current;
    if (el) el.scrollTop = el.scrollHeight;
  }, [state.chat.length]);

  const submit = (e: FormEvent) => {
    e.preventDefault();
    const content = draft.trim();
    if (!content) return;
    setDraft('');
    setError(undefined);
    onSend(content).catch((err: unknown) => setError(err instanceof Error ? err.message : String(err)));
  };

  return (
    <aside className="collab" aria-label="collaboration">
      <h2>
        Session <code data-testid="session-id">{state.sessionId}</code>
        {!state.joined && <span className="muted"> (rejoining…)</span>}
      </h2>
      <h3>
        Participants <span data-testid="participant-count">{state.participants.length}</span>
      </h3>
      <ul data-testid="participants" className="participants">
        {state.participants.map((p) => (
          <li key={p.id} data-testid="participant" data-participant-id={p.id} title={p.id}>
            <strong>{p.name}</strong>
            {p.id === state.participantId && <span className="muted"> (you)</span>}
            <span className="node"> · {p.nodeId}</span>
          </li>
        ))}
      </ul>
      <h3>Cursors</h3>
      <ul data-testid="cursors" className="cursors">
        {cursors.length === 0 && <li className="muted">nobody else is typing</li>}
        {cursors.map(([id, c]) => (
          <li key={id} data-testid="cursor">
            {names.get(id) ?? id}: {cursorText(c)}
          </li>
        ))}
      </ul>
      {lastRun && (
        <p className="last-run" data-testid="last-run">
          {names.get(lastRun.authorId) ?? lastRun.authorId} ran at {time(lastRun.timestamp)}
        </p>
      )}
      <h3>Chat</h3>
      <ol data-testid="chat-list" className="chat" ref={list}>
        {state.chat.map((m) => (
          <li key={m.id} data-testid="chat-message" data-author={m.authorId}>
            <span className="muted">{time(m.timestamp)}</span> <strong>{m.authorName}</strong>: {m.content}
          </li>
        ))}
      </ol>
      <form className="chat-form" onSubmit={submit}>
        <input
          data-testid="chat-input"
          value={draft}
          maxLength={4000}
          placeholder="Message"
          onChange={(e) => setDraft(e.target.value)}
        />
        <button type="submit" data-testid="chat-send" disabled={!draft.trim()}>
          Send
        </button>
      </form>
      {error && <p className="error">{error}</p>}
    </aside>
  );
}
