import type { ChangeEvent, KeyboardEvent, RefObject, SyntheticEvent } from 'react';
import type { QueryHandle, QueryState } from '@chat2sql/realtime';
import { useQueryState } from '@chat2sql/realtime/react';

const ACTIVE = new Set(['pending', 'queued', 'running', 'streaming']);

function describeStatus(s: QueryState | null): string {
  if (!s) return 'idle';
  switch (s.status) {
    case 'pending':
      return 'sending…';
    case 'queued':
      return 'queued (waiting for a worker)';
    case 'running':
      return 'started';
    case 'streaming':
      return 'streaming rows';
    case 'completed': {
      const r = s.result;
      if (!r) return 'completed';
      return `completed: ${r.rowCount.toLocaleString('en-US')} rows in ${r.durationMs} ms${r.truncated ? ' (truncated by the row cap)' : ''}`;
    }
    case 'error': {
      const e = s.error as { code?: string; message?: string; sqlstate?: string | null; position?: number | null } | undefined;
      const where = e?.position ? ` at character ${e.position}` : '';
      return `error (${e?.code ?? 'unknown'}${e?.sqlstate ? `, SQLSTATE ${e.sqlstate}` : ''}): ${e?.message ?? ''}${where}`;
    }
    case 'cancelled':
      return 'cancelled';
    case 'rejected':
      return `rejected: ${(s.error as { message?: string } | undefined)?.message ?? ''}`;
    case 'lost':
      return `lost: ${(s.error as { message?: string } | undefined)?.message ?? ''}`;
  }
}

interface QueryPanelProps {
  /** The execution shown (its state is rendered at most every 80 ms while rows stream in). */
  handle: QueryHandle | null;
  text: string;
  onTextChange: (text: string) => void;
  onCursor?: (text: string, selectionStart: number) => void;
  onRun: () => void;
  editorRef?: RefObject<HTMLTextAreaElement | null>;
  /** Shown above the editor (e.g. who changed the shared text last). */
  note?: string;
  readOnly?: boolean;
}

/** The editor, Run / Cancel, the progress bar with the current step, and the execution's status. */
export function QueryPanel({ handle, text, onTextChange, onCursor, onRun, editorRef, note, readOnly }: QueryPanelProps) {
  const state = useQueryState(handle, { notifyIntervalMs: 80 });
  const active = state !== null && ACTIVE.has(state.status);
  const progress = state ? (state.status === 'completed' ? 100 : state.progress) : 0;
  const cursor = (e: SyntheticEvent<HTMLTextAreaElement>) => onCursor?.(e.currentTarget.value, e.currentTarget.selectionStart);
  const onKeyDown = (e: KeyboardEvent<HTMLTextAreaElement>) => {
    if ((e.ctrlKey || e.metaKey) && e.key === 'Enter') {
      e.preventDefault();
      onRun();
    }
  };
  return (
    <section className="query" aria-label="query">
      {note && <div className="note" data-testid="editor-note">{note}</div>}
      <textarea
        ref={editorRef}
        data-testid="editor"
        className="editor"
        spellCheck={false}
        value={text}
        readOnly={readOnly}
        placeholder="SELECT … (Ctrl+Enter runs)"
        onChange={(e: ChangeEvent<HTMLTextAreaElement>) => {
          onTextChange(e.target.value);
          cursor(e);
        }}
        onSelect={cursor}
        onClick={cursor}
        onKeyUp={cursor}
        onKeyDown={onKeyDown}
      />
      <div className="controls">
        <button type="button" data-testid="run" onClick={onRun} disabled={!text.trim()}>
          Run
        </button>
        <button type="button" data-testid="cancel" onClick={() => void handle?.cancel()} disabled={!active}>
          Cancel
        </button>
        <progress data-testid="progress" max={100} value={progress} data-progress={progress} />
        <span className="step" data-testid="progress-step">
          {state ? `${Math.round(progress)}% · ${state.step}` : ''}
        </span>
      </div>
      <div className={`status status-${state?.status ?? 'idle'}`} data-testid="status" data-status={state?.status ?? 'idle'}>
        {describeStatus(state)}
        {state?.executionId && <span className="execution-id"> · execution {state.executionId}</span>}
      </div>
    </section>
  );
}
