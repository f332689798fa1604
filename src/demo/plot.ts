// Hand-written SVG line charts (no dependency): axes with "nice" ticks, labels, legend, optional error bars.

export interface PlotSeries {
  name: string;
  color: string;
  points: Array<[number, number]>;
  /** Stroke width (default 2). */
  width?: number;
  opacity?: number;
  dash?: string;
  /** Circles at the points (default false). */
  markers?: boolean;
  /** Vertical bars per point: [x, low, high]. */
  errorBars?: Array<[number, number, number]>;
  /** Listed in the legend (default true). */
  legend?: boolean;
}

export interface ChartOptions {
  title: string;
  subtitle?: string;
  xLabel: string;
  yLabel: string;
  series: PlotSeries[];
  /** Horizontal reference lines (e.g. link capacities). */
  hLines?: Array<{ y: number; label: string; color?: string }>;
  xMin?: number;
  xMax?: number;
  yMin?: number;
  yMax?: number;
  width?: number;
  height?: number;
}

export function escapeXml(s: string): string {
  return s.replace(/[<>&"']/g, (c) => ({ '<': '&lt;', '>': '&gt;', '&': '&amp;', '"': '&quot;', "'": '&apos;' })[c]!);
}

/** Tick step of about range/target, rounded to 1, 2, 2.5 or 5 times a power of ten. */
export function niceStep(range: number, target = 6): number {
  if (!(range > 0) || !Number.isFinite(range)) return 1;
  const raw = range / target;
  const p = 10 ** Math.floor(Math.log10(raw));
  for (const m of [1, 2, 2.5, 5, 10]) if (raw <= m * p) return m * p;
  return 10 * p;
}

export function niceTicks(min: number, max: number, target = 6): number[] {
  const step = niceStep(max - min, target);
  const out: number[] = [];
  const first = Math.ceil(min / step - 1e-9) * step;
  for (let v = first; v <= max + step * 1e-9 && out.length < 50; v += step) out.push(Number(v.toFixed(10)));
  return out;
}

function fmtTick(v: number): string {
  return Number.isInteger(v) ? String(v) : String(Number(v.toPrecision(4)));
}

const f1 = (v: number) => (Math.round(v * 10) / 10).toString();

export function lineChart(o: ChartOptions): string {
  const legend = o.series.filter((s) => s.legend !== false);
  // Room on the right for the legend: about 7 px per character at 12 px.
  const legendW = legend.length ? 60 + 7 * Math.max(...legend.map((s) => s.name.length)) : 30;
  const W = o.width ?? 600 + legendW, H = o.height ?? 440;
  const m = { left: 70, right: legendW, top: o.subtitle ? 62 : 46, bottom: 56 };
  const pw = W - m.left - m.right, ph = H - m.top - m.bottom;
  const xs: number[] = [], ys: number[] = [];
  for (const s of o.series) {
    for (const [x, y] of s.points) if (Number.isFinite(x) && Number.isFinite(y)) { xs.push(x); ys.push(y); }
    for (const [, lo, hi] of s.errorBars ?? []) if (Number.isFinite(lo) && Number.isFinite(hi)) ys.push(lo, hi);
  }
  for (const h of o.hLines ?? []) ys.push(h.y);
  const xMin = o.xMin ?? (xs.length ? Math.min(...xs) : 0);
  let xMax = o.xMax ?? (xs.length ? Math.max(...xs) : 1);
  if (xMax <= xMin) xMax = xMin + 1;
  const yMin = o.yMin ?? 0;
  const yTop = ys.length ? Math.max(...ys) : 1;
  // Headroom so the top line does not sit on the frame; the axis ends on a tick.
  const yStep = niceStep((o.yMax ?? yTop * 1.08) - yMin);
  const yMax = o.yMax ?? Math.max(yMin + yStep, Math.ceil((yTop * 1.08) / yStep) * yStep);
  const X = (x: number) => m.left + ((x - xMin) / (xMax - xMin)) * pw;
  const Y = (y: number) => m.top + ph - ((y - yMin) / (yMax - yMin)) * ph;
  const out: string[] = [];
  out.push(`<svg xmlns="http://www.w3.org/2000/svg" width="${W}" height="${H}" viewBox="0 0 ${W} ${H}" font-family="Helvetica, Arial, sans-serif" font-size="12">`);
  out.push(`<rect x="0" y="0" width="${W}" height="${H}" fill="#ffffff"/>`);
  out.push(`<text x="${m.left}" y="24" font-size="16" font-weight="bold">${escapeXml(o.title)}</text>`);
  if (o.subtitle) out.push(`<text x="${m.left}" y="44" font-size="12" fill="#555555">${escapeXml(o.subtitle)}</text>`);
  // Grid and ticks.
  for (const t of niceTicks(yMin, yMax)) {
    const y = f1(Y(t));
    out.push(`<line x1="${m.left}" y1="${y}" x2="${m.left + pw}" y2="${y}" stroke="#e5e5e5" stroke-width="1"/>`);
    out.push(`<text x="${m.left - 8}" y="${y}" text-anchor="end" dominant-baseline="middle" fill="#333333">${fmtTick(t)}</text>`);
  }
  for (const t of niceTicks(xMin, xMax)) {
    const x = f1(X(t));
    out.push(`<line x1="${x}" y1="${m.top}" x2="${x}" y2="${m.top + ph}" stroke="#f0f0f0" stroke-width="1"/>`);
    out.push(`<line x1="${x}" y1="${m.top + ph}" x2="${x}" y2="${m.top + ph + 5}" stroke="#333333" stroke-width="1"/>`);
    out.push(`<text x="${x}" y="${m.top + ph + 18}" text-anchor="middle" fill="#333333">${fmtTick(t)}</text>`);
  }
  // Axes.
  out.push(`<line x1="${m.left}" y1="${m.top}" x2="${m.left}" y2="${m.top + ph}" stroke="#333333" stroke-width="1.2"/>`);
  out.push(`<line x1="${m.left}" y1="${m.top + ph}" x2="${m.left + pw}" y2="${m.top + ph}" stroke="#333333" stroke-width="1.2"/>`);
  out.push(`<text x="${m.left + pw / 2}" y="${H - 14}" text-anchor="middle" font-size="13">${escapeXml(o.xLabel)}</text>`);
  out.push(`<text transform="translate(18 ${m.top + ph / 2}) rotate(-90)" text-anchor="middle" font-size="13">${escapeXml(o.yLabel)}</text>`);
  // Reference lines.
  for (const h of o.hLines ?? []) {
    if (h.y < yMin || h.y > yMax) continue;
    const y = f1(Y(h.y));
    out.push(`<line x1="${m.left}" y1="${y}" x2="${m.left + pw}" y2="${y}" stroke="${h.color ?? '#999999'}" stroke-width="1" stroke-dasharray="6 4"/>`);
    out.push(`<text x="${m.left + pw - 4}" y="${Number(y) - 5}" text-anchor="end" font-size="11" fill="${h.color ?? '#777777'}">${escapeXml(h.label)}</text>`);
  }
  // Data, clipped to the plot area.
  // A few pixels of slack so markers on the frame are not cut in half.
  out.push(`<clipPath id="plot"><rect x="${m.left - 6}" y="${m.top - 6}" width="${pw + 12}" height="${ph + 12}"/></clipPath>`);
  out.push('<g clip-path="url(#plot)">');
  for (const s of o.series) {
    const pts = s.points.filter(([x, y]) => Number.isFinite(x) && Number.isFinite(y));
    const paint = `stroke="${s.color}"${s.opacity !== undefined ? ` stroke-opacity="${s.opacity}"` : ''}`;
    const attrs = `${paint} stroke-width="${s.width ?? 2}"${s.dash ? ` stroke-dasharray="${s.dash}"` : ''}`;
    if (pts.length > 1) out.push(`<polyline fill="none" stroke-linejoin="round" ${attrs} points="${pts.map(([x, y]) => `${f1(X(x))},${f1(Y(y))}`).join(' ')}"/>`);
    for (const [x, lo, hi] of s.errorBars ?? []) {
      if (!Number.isFinite(lo) || !Number.isFinite(hi)) continue;
      const cx = f1(X(x));
      out.push(`<line x1="${cx}" y1="${f1(Y(lo))}" x2="${cx}" y2="${f1(Y(hi))}" ${paint} stroke-width="1.2"/>`);
      for (const v of [lo, hi]) out.push(`<line x1="${f1(X(x) - 4)}" y1="${f1(Y(v))}" x2="${f1(X(x) + 4)}" y2="${f1(Y(v))}" ${paint} stroke-width="1.2"/>`);
    }
    if (s.markers) for (const [x, y] of pts) out.push(`<circle cx="${f1(X(x))}" cy="${f1(Y(y))}" r="3.5" fill="${s.color}"${s.opacity !== undefined ? ` fill-opacity="${s.opacity}"` : ''}/>`);
  }
  out.push('</g>');
  // Legend, right of the plot.
  legend.forEach((s, i) => {
    const x = m.left + pw + 16, y = m.top + 10 + i * 22;
    out.push(`<line x1="${x}" y1="${y}" x2="${x + 26}" y2="${y}" stroke="${s.color}" stroke-width="${s.width ?? 2}"${s.dash ? ` stroke-dasharray="${s.dash}"` : ''}/>`);
    if (s.markers) out.push(`<circle cx="${x + 13}" cy="${y}" r="3.5" fill="${s.color}"/>`);
    out.push(`<text x="${x + 34}" y="${y}" dominant-baseline="middle">${escapeXml(s.name)}</text>`);
  });
  out.push('</svg>');
  return out.join('\n') + '\n';
}
