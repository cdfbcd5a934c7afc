import { useCallback, useEffect, useRef, useState } from 'react';
import type { CollaborationSession, CollaborationState } from '@chat2sql/realtime';

const DEBOUNCE_MS = 250;

export interface SharedText {
  readonly text: string;
  /** A local edit: shown at once, sent (debounced) as `update_query` with `baseVersion`. */
  readonly setText: (text: string) => void;
  /** The version the editor's text is based on. */
  readonly version: number;
  /** The last conflict or failure, for the user. */
  readonly notice: string | undefined;
}

/**
 * The editor IS the session's shared query text.
 *
 * - Local edits are sent debounced, one update at a time, based on the version the text was derived from.
 * - A remote update replaces the editor text (also discarding a local edit not sent yet: the server's text wins).
 * - A conflict (someone else's update landed first) takes the server's text.
 *
 * The SDK's `updateQuery` sends the latest version it knows as `baseVersion`; this hook makes sure that is the
 * version the edit was made on (it never sends an edit made on text a newer remote update has replaced).
 */
export function useSharedText(session: CollaborationSession, state: CollaborationState): SharedText {
  const [text, setTextState] = useState(state.query);
  const [notice, setNotice] = useState<string | undefined>(undefined);
  const textRef = useRef(text);
  const base = useRef(state.queryVersion);
  const [version, setVersion] = useState(state.queryVersion);
  const timer = useRef<ReturnType<typeof setTimeout> | undefined>(undefined);
  const inFlight = useRef(false);
  const dirty = useRef(false);

  const adopt = useCallback((query: string, v: number) => {
    if (timer.current !== undefined) clearTimeout(timer.current);
    timer.current = undefined;
    dirty.current = false;
    base.current = v;
    setVersion(v);
    textRef.current = query;
    setTextState(query);
  }, []);

  const flush = useCallback(async () => {
    timer.current = undefined;
    if (!dirty.current) return;
    if (inFlight.current) {
      timer.current = setTimeout(() => void flush(), DEBOUNCE_MS);
      return;
    }
    const s = session.state;
    if (s.queryVersion > base.current) {
      // Someone else's text landed since this edit began: theirs wins.
      setNotice(`your edit was replaced by a newer version (${s.queryVersion})`);
      adopt(s.query, s.queryVersion);
      return;
    }
    dirty.current = false;
    inFlight.current = true;
    const sentBase = base.current;
    const result = await session.updateQuery(textRef.current);
    inFlight.current = false;
    switch (result.status) {
      case 'applied':
        base.current = Math.max(base.current, sentBase + 1);
        setVersion(base.current);
        setNotice(undefined);
        break;
      case 'conflict':
        setNotice(`conflict: version ${result.currentVersion} was written first; took the server's text`);
        adopt(result.currentQuery, result.currentVersion);
        break;
      case 'failed':
        dirty.current = true; // keep the text; the next edit retries
        setNotice(`update failed: ${result.error.message}`);
        break;
      case 'superseded':
        break;
    }
  }, [session, adopt]);

  const setText = useCallback(
    (next: string) => {
      textRef.current = next;
      setTextState(next);
      dirty.current = true;
      if (timer.current !== undefined) clearTimeout(timer.current);
      timer.current = setTimeout(() => void flush(), DEBOUNCE_MS);
    },
    [flush],
  );

  // Remote state: a newer version from someone else replaces the editor; our own echo only moves the version.
  const { query, queryVersion, queryAuthor, participantId, joined } = state;
  useEffect(() => {
    if (!joined || queryVersion <= base.current) return;
    if (queryAuthor !== null && queryAuthor === participantId) {
      base.current = queryVersion;
      setVersion(queryVersion);
      return;
    }
    adopt(query, queryVersion);
  }, [query, queryVersion, queryAuthor, participantId, joined, adopt]);

  useEffect(
    () => () => {
      if (timer.current !== undefined) clearTimeout(timer.current);
    },
    [],
  );

  return { text, setText, version, notice };
}
