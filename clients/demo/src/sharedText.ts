import { useCallback, useEffect, useRef, useState } from 'react';
import type { CollaborationSession, CollaborationState } from '@chat2sql/realtime';

const DEBOUNCE_MS = 250;

export interface SharedText {
  readonly text: string;
  /** A local edit: shown at once, sent (debounced) as `update_query` with the version it was made on. */
  readonly setText: (text: string) => void;
  /** The version of the shared text. */
  readonly version: number;
  /** The last conflict or failure, for the user. */
  readonly notice: string | undefined;
}

/**
 * The editor IS the session's shared query text.
 *
 * - Local edits are sent debounced with `baseVersion`: the version the editor last took the text from. The SDK
 *   sends one update at a time, skips over versions our own updates wrote, and resolves `conflict` when someone
 *   else's update replaced that version — so a debounced edit never overwrites a newer text.
 * - A remote update replaces the editor text (also discarding a local edit not sent yet: the server's text wins).
 * - A conflict takes the server's text.
 */
export function useSharedText(session: CollaborationSession, state: CollaborationState): SharedText {
  const [text, setTextState] = useState(state.query);
  const [notice, setNotice] = useState<string | undefined>(undefined);
  /** The version the editor's text was taken from (our own later versions are not conflicts: the SDK skips them). */
  const base = useRef(state.queryVersion);
  const timer = useRef<ReturnType<typeof setTimeout> | undefined>(undefined);

  const adopt = useCallback((query: string, version: number) => {
    if (timer.current !== undefined) clearTimeout(timer.current);
    timer.current = undefined;
    base.current = version;
    setTextState(query);
  }, []);

  const send = useCallback(
    async (next: string) => {
      timer.current = undefined;
      const result = await session.updateQuery(next, { baseVersion: base.current });
      if (result.status === 'applied') setNotice(undefined);
      else if (result.status === 'failed') setNotice(`update failed: ${result.error.message}`);
      else if (result.status === 'conflict' && result.currentVersion > base.current) {
        setNotice(`conflict: version ${result.currentVersion} was written first; took the server's text`);
        adopt(result.currentQuery, result.currentVersion);
      }
    },
    [session, adopt],
  );

  const setText = useCallback(
    (next: string) => {
      setTextState(next);
      if (timer.current !== undefined) clearTimeout(timer.current);
      timer.current = setTimeout(() => void send(next), DEBOUNCE_MS);
    },
    [send],
  );

  // Someone else's newer version replaces the editor text; our own echoes change nothing.
  const { query, queryVersion, queryAuthor, participantId, joined } = state;
  useEffect(() => {
    if (!joined || queryVersion <= base.current || queryAuthor === participantId) return;
    adopt(query, queryVersion);
  }, [query, queryVersion, queryAuthor, participantId, joined, adopt]);

  useEffect(
    () => () => {
      if (timer.current !== undefined) clearTimeout(timer.current);
    },
    [],
  );

  return { text, setText, version: queryVersion, notice };
}
