// Shared by the bench runner and the sections run alone: number formatting and target verdicts.
import type { BenchResult } from './engine.bench.js';

export function fmt(n: number): string {
  if (!Number.isFinite(n)) return String(n);
  if (Math.abs(n) >= 1e6) return `${(n / 1e6).toFixed(2)} M`;
  if (Math.abs(n) >= 1e4) return `${(n / 1e3).toFixed(1)} k`;
  return String(Math.round(n * 1000) / 1000);
}

/** "met", "missed", or "-" against a target like ">= 10000000", "<= 1.10" or ">= 50% of nft_dnat" (a peer). */
export function verdict(r: BenchResult): string {
  const rel = /^(>=|<=)\s*([\d.]+)%\s+of\s+(\w+)/.exec(r.target);
  if (rel) {
    const peer = r.peers[rel[3]];
    if (!peer) return `- (peer ${rel[3]} not measured)`;
    const pct = (r.value / peer) * 100, t = Number(rel[2]);
    const ok = rel[1] === '>=' ? pct >= t : pct <= t;
    return `${ok ? 'met' : 'missed'} (${pct.toFixed(0)}% of ${rel[3]})`;
  }
  const m = /^(>=|<=)\s*([\d.]+)/.exec(r.target);
  if (!m) return '-';
  const t = Number(m[2]);
  const ok = m[1] === '>=' ? r.value >= t : r.value <= t;
  const ratio = m[1] === '>=' ? r.value / t : t / r.value;
  return ok ? 'met' : `missed (${(ratio * 100).toFixed(0)}% of target)`;
}
