import { useState } from 'react';
import type { ExecuteOptions, QueryHandle } from '@chat2sql/realtime';
import { useCollaborativeSession, useRealtimeClient } from '@chat2sql/realtime/react';
import { identityOptions, type PageConfig } from './config';
import { ConnectionBar } from './ConnectionBar';
import { QueryPanel } from './QueryPanel';
import { ResultsTable } from './ResultsTable';
import { CollabPanel } from './CollabPanel';
import { useSessionExecution } from './tracker';
import { useSharedText } from './sharedText';
import { lineCol, useThrottledCallback } from './hooks';

/**
 * Rows as arrays (compact: a million rows stay light) in chunks of 1000. Nothing here iterates a handle's events
 * (rows go to row stores, state to `useQueryState`): no event buffer at all.
 */
const RUN_OPTIONS: ExecuteOptions = { rowFormat: 'arrays', chunkSize: 1000, buffer: false };

const DEFAULT_QUERY = `SELECT c.name, c.country, count(o.id) AS orders, round(sum(o.amount), 2) AS total
FROM customers c JOIN orders o ON o.customer_id = c.id
GROUP BY c.id ORDER BY total DESC LIMIT 20`;

function Header({ config }: { config: PageConfig }) {
  const who = config.token ? 'token' : config.user ? `${config.name ?? config.user} (${config.user})` : 'anonymous';
  return (
    <header>
      <h1>Chat2SQL Realtime</h1>
      <span className="muted" data-testid="identity">
        {who}
      </span>
    </header>
  );
}

/** No session: queries on `/ws/query`. */
function SoloApp({ config }: { config: PageConfig }) {
  // The client's identity (url, path, user, name) is the same on every render: one client for the page's life.
  const client = useRealtimeClient({ url: config.url, path: '/ws/query', ...identityOptions(config) });
  // The execution shown: made by a click, so the table's `useStreamingData` attaches before any of its events.
  const [handle, setHandle] = useState<QueryHandle | null>(null);
  const [text, setText] = useState(DEFAULT_QUERY);
  const run = () => {
    if (!text.trim()) return;
    // Alone, a new run replaces the previous one: stop that one on the database too.
    if (handle && !handle.state.outcome) void handle.cancel().catch(() => {});
    setHandle(client.executeQuery(text, RUN_OPTIONS));
  };
  return (
    <div className="app solo">
      <Header config={config} />
      <ConnectionBar client={client} label="/ws/query" />
      <main>
        <QueryPanel handle={handle} text={text} onTextChange={setText} onRun={run} />
        <ResultsTable source={handle} />
      </main>
    </div>
  );
}

/** `?session=`: everything on `/ws/collaboration/{id}`; the editor is the shared text, runs are shared. */
function SessionApp({ config, sessionId }: { config: PageConfig; sessionId: string }) {
  const { session, sessionState, sendChatMessage, updateCursor } = useCollaborativeSession(sessionId, {
    url: config.url,
    ...identityOptions(config),
  });
  const { shown, showPending } = useSessionExecution(session);
  const shared = useSharedText(session, sessionState);
  const [runError, setRunError] = useState<string | undefined>(undefined);

  const sendCursor = useThrottledCallback((value: string, offset: number) => updateCursor(lineCol(value, offset)), 100);

  const run = () => {
    const query = shared.text;
    if (!query.trim()) return;
    setRunError(undefined);
    const handle = session.executeQuery(query, RUN_OPTIONS);
    // Until its `shared_execution` arrives, show this handle (pending/queued, or why it was refused).
    showPending(handle);
    void handle.done.then((outcome) => {
      if (outcome.status === 'rejected') setRunError(outcome.error.message);
    });
  };

  const author = sessionState.participants.find((p) => p.id === sessionState.queryAuthor)?.name;
  const note = [
    `shared text v${shared.version}${author ? `, last edit by ${author}` : ''}`,
    shared.notice,
    runError && `run refused: ${runError}`,
  ]
    .filter(Boolean)
    .join(' · ');

  return (
    <div className="app session">
      <Header config={config} />
      <ConnectionBar client={session.client} label={`session ${sessionId}`} />
      <div className="columns">
        <main>
          <QueryPanel
            handle={shown.handle}
            text={shared.text}
            onTextChange={shared.setText}
            onCursor={sendCursor}
            onRun={run}
            note={note}
          />
          <ResultsTable source={shown.rows} />
        </main>
        <CollabPanel state={sessionState} onSend={sendChatMessage} />
      </div>
    </div>
  );
}

export function App({ config }: { config: PageConfig }) {
  return config.sessionId ? <SessionApp config={config} sessionId={config.sessionId} /> : <SoloApp config={config} />;
}
