import { useCallback, useEffect, useRef, useState } from 'react';
import type { Column, QueryHandle, RowFormat, RowStore } from '@chat2sql/realtime';
import { useStreamingData } from '@chat2sql/realtime/react';

const ROW_HEIGHT = 24;
const OVERSCAN = 8;
/** Browsers cap an element's height (Chrome ~33M px, Firefox ~17M px): beyond this, scrolling is scaled. */
const MAX_SCROLL_PX = 8_000_000;

function cell(value: unknown): { text: string; cls: string } {
  if (value === null || value === undefined) return { text: 'NULL', cls: 'null' };
  if (typeof value === 'number' || typeof value === 'bigint') return { text: String(value), cls: 'num' };
  if (typeof value === 'boolean') return { text: String(value), cls: 'bool' };
  if (typeof value === 'string') return { text: value, cls: '' };
  return { text: JSON.stringify(value), cls: 'json' };
}

function valueAt(row: unknown, index: number, column: Column, format: RowFormat | undefined): unknown {
  if (format === 'arrays' || Array.isArray(row)) return (row as unknown[])[index];
  return (row as Record<string, unknown> | null)?.[column.name];
}

/**
 * The rows of the current execution, virtualised: only the rows in view (plus a few) are in the DOM, placed
 * by scrollTop with a fixed row height, so a million rows scroll as smoothly as a hundred. Rows are read in
 * place from the store (never copied); re-renders are throttled while chunks stream in.
 */
export function ResultsTable({ source }: { source: QueryHandle | RowStore | null }) {
  // Re-renders at most every 60 ms while chunks stream in (a shared execution's store: every 50 ms, the SDK's).
  const { streamingData: snap, rows } = useStreamingData(source, { notifyIntervalMs: 60 });
  const count = rows.length;
  const columns = snap.columns;
  const viewport = useRef<HTMLDivElement>(null);
  const [scrollTop, setScrollTop] = useState(0);
  const [height, setHeight] = useState(400);
  const frame = useRef<number | undefined>(undefined);

  useEffect(() => {
    const el = viewport.current;
    if (!el) return;
    const ro = new ResizeObserver(() => setHeight(el.clientHeight));
    ro.observe(el);
    setHeight(el.clientHeight);
    return () => ro.disconnect();
  }, []);
  useEffect(() => () => {
    if (frame.current !== undefined) cancelAnimationFrame(frame.current);
  }, []);
  // A new execution starts at the top.
  useEffect(() => {
    if (viewport.current) viewport.current.scrollTop = 0;
    setScrollTop(0);
  }, [snap.executionId]);

  const onScroll = useCallback(() => {
    if (frame.current !== undefined) return;
    frame.current = requestAnimationFrame(() => {
      frame.current = undefined;
      if (viewport.current) setScrollTop(viewport.current.scrollTop);
    });
  }, []);

  const bodyHeight = Math.max(0, height - ROW_HEIGHT); // minus the sticky header
  const realHeight = count * ROW_HEIGHT;
  const spacer = Math.min(realHeight, MAX_SCROLL_PX);
  // Scaled scrolling: scrollTop 0..(spacer - view) maps onto 0..(realHeight - view).
  const ratio = spacer > bodyHeight ? Math.max(1, (realHeight - bodyHeight) / (spacer - bodyHeight)) : 1;
  const realTop = scrollTop * ratio;
  const first = Math.max(0, Math.floor(realTop / ROW_HEIGHT) - OVERSCAN);
  const last = Math.min(count, Math.ceil((realTop + bodyHeight) / ROW_HEIGHT) + OVERSCAN);
  const offset = scrollTop - (realTop - first * ROW_HEIGHT);
  const template = `6em repeat(${Math.max(1, columns.length)}, minmax(8em, 1fr))`;

  const visible = [];
  for (let i = first; i < last; i++) {
    const row = rows[i];
    visible.push(
      <div key={i} className="tr" role="row" data-testid="result-row" data-index={i} style={{ gridTemplateColumns: template }}>
        <span className="td rownum" role="cell">
          {i + 1}
        </span>
        {columns.map((c, j) => {
          const { text, cls } = cell(valueAt(row, j, c, snap.rowFormat));
          return (
            <span key={c.name + j} className={`td ${cls}`} role="cell" title={text.length > 40 ? text : undefined}>
              {text}
            </span>
          );
        })}
      </div>,
    );
  }

  return (
    <section className="results" aria-label="results">
      <div className="results-meta">
        <span data-testid="row-count" data-rows={count}>
          {count.toLocaleString('en-US')} rows
        </span>
        {snap.chunkCount > 0 && <span> in {snap.chunkCount} chunks</span>}
        {snap.totalRows !== null && !snap.completed && (
          <span data-testid="total-rows" data-exact={snap.totalRowsExact}>
            {' '}
            of {snap.totalRowsExact ? '' : '≈'}
            {snap.totalRows.toLocaleString('en-US')}
          </span>
        )}
        {snap.completed && snap.totalRows !== null && <span> · complete</span>}
      </div>
      <div className="viewport" ref={viewport} onScroll={onScroll} role="table" data-testid="results" aria-rowcount={count}>
        <div className="tr th" role="row" style={{ gridTemplateColumns: template }}>
          <span className="td rownum">#</span>
          {columns.map((c, j) => (
            <span key={c.name + j} className="td" role="columnheader" title={c.type}>
              {c.name} <small>{c.type}</small>
            </span>
          ))}
        </div>
        <div className="spacer" style={{ height: spacer }}>
          <div className="window" style={{ transform: `translateY(${offset}px)` }}>
            {visible}
          </div>
        </div>
        {count === 0 && <div className="empty">{columns.length ? 'no rows yet' : 'run a query to see rows here'}</div>}
      </div>
    </section>
  );
}
