import { useEffect, useRef } from 'react';

/** Calls `fn` at most every `ms`, always with the latest arguments (trailing call guaranteed). */
export function useThrottledCallback<A extends unknown[]>(fn: (...args: A) => void, ms: number): (...args: A) => void {
  const fnRef = useRef(fn);
  fnRef.current = fn;
  const state = useRef<{ timer: ReturnType<typeof setTimeout> | undefined; last: number; args: A | undefined }>({
    timer: undefined,
    last: 0,
    args: undefined,
  });
  useEffect(
    () => () => {
      if (state.current.timer !== undefined) clearTimeout(state.current.timer);
    },
    [],
  );
  const call = useRef((...args: A) => {
    const s = state.current;
    s.args = args;
    if (s.timer !== undefined) return;
    const wait = Math.max(0, s.last + ms - performance.now());
    s.timer = setTimeout(() => {
      s.timer = undefined;
      s.last = performance.now();
      const a = s.args;
      s.args = undefined;
      if (a) fnRef.current(...a);
    }, wait);
  });
  return call.current;
}

/** Line and column (1-based) of a character offset in `text`. */
export function lineCol(text: string, offset: number): { line: number; col: number } {
  let line = 1;
  let lineStart = 0;
  for (let i = 0; i < offset && i < text.length; i++) {
    if (text.charCodeAt(i) === 10) {
      line++;
      lineStart = i + 1;
    }
  }
  return { line, col: offset - lineStart + 1 };
}
