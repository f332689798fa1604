// A fast reader for the plain subset of YAML that config files are made of (block mappings and sequences, simple
// keys, plain and simply quoted one-line scalars, comments), for `mplb run`'s start: the yaml library takes about half
// a second for a 2,000-VIP file. Anything outside the subset (flow collections, anchors, aliases, tags, block and
// multi-line scalars, floats, duplicate keys, tabs, documents...) returns undefined, and the caller parses the text
// with the yaml library, which also reports errors: this never throws and never gives a different value from it
// (test/config.test.ts compares the two on generated documents).

interface Line { indent: number; text: string; no: number }

const KEY = /^[A-Za-z_][A-Za-z0-9_]*$/;
/** Plain scalars read here: no indicator first, no spaces, no characters YAML gives a meaning to. */
const PLAIN = /^[A-Za-z0-9_./+-][A-Za-z0-9_./+:@=-]*$/;
/** Words the core schema reads as null or booleans (as keys they would not be strings). */
const SPECIAL_KEY = /^(?:~|null|Null|NULL|true|True|TRUE|false|False|FALSE|y|n|yes|no|on|off)$/;
const INT = /^[-+]?[0-9]+$/;
/** Core-schema forms left to the yaml library (floats, infinities, NaN, octal and hex integers). */
const OTHER_NUMBER = /^(?:[-+]?(?:\.[0-9]+|[0-9]+(?:\.[0-9]*)?)(?:[eE][-+]?[0-9]+)?|[-+]?\.(?:inf|Inf|INF)|\.(?:nan|NaN|NAN)|0o[0-7]+|0x[0-9a-fA-F]+)$/;

class Outside extends Error {}
const outside = (): never => { throw new Outside(); };

/** The value of a one-line scalar (after "key: " or "- "), or Outside. */
function scalar(raw: string): unknown {
  let v = raw;
  const q = v[0];
  if (q === '"' || q === "'") {
    const end = v.indexOf(q, 1);
    if (end < 0) outside();
    const inner = v.slice(1, end);
    // Escapes (\ in double quotes, '' in single quotes) are left to the library.
    if (q === '"' && inner.includes('\\')) outside();
    const rest = v.slice(end + 1);
    if (rest !== '' && !/^\s+#/.test(rest)) outside();
    if (q === "'" && rest.startsWith("'")) outside();
    return inner;
  }
  const hash = v.search(/\s#/);
  if (hash >= 0) v = v.slice(0, hash);
  v = v.trimEnd();
  // Empty flow collections (allowedHosts: []); anything else in brackets is left to the library.
  if (v === '[]') return [];
  if (v === '{}') return {};
  if (v === '' || v === '~' || v === 'null' || v === 'Null' || v === 'NULL') return null;
  if (v === 'true' || v === 'True' || v === 'TRUE') return true;
  if (v === 'false' || v === 'False' || v === 'FALSE') return false;
  if (!PLAIN.test(v) || v.endsWith(':') || v === '-') outside();
  // As the yaml library's core schema reads it.
  if (INT.test(v)) return parseInt(v, 10);
  if (OTHER_NUMBER.test(v)) outside();
  return v;
}

/** Parses `text` if it is in the subset; undefined otherwise (then use the yaml library). */
export function parseYamlSubset(text: string): unknown {
  if (/[\t\r\u0000-\u0008\u000b\u000c\u000e-\u001f\u007f-\u009f\ufeff]/.test(text)) return undefined;
  const lines: Line[] = [];
  const all = text.split('\n');
  for (let i = 0; i < all.length; i++) {
    const l = all[i];
    const t = l.trimStart();
    if (t === '' || t[0] === '#') continue;
    // Directives, document markers and flow collections at a line's start.
    if (t.startsWith('---') || t.startsWith('...') || t[0] === '%' || t[0] === '{' || t[0] === '[') return undefined;
    lines.push({ indent: l.length - t.length, text: t.trimEnd(), no: i });
  }
  if (lines.length === 0) return undefined;
  let at = 0;

  const isItem = (l: Line) => l.text === '-' || l.text.startsWith('- ');

  function block(indent: number): unknown {
    const l = lines[at];
    return isItem(l) ? sequence(indent) : mapping(indent);
  }

  /** The value after "key:" or "-" with nothing else on the line: a nested block, or null. */
  function nested(parent: number, allowSameIndentItems: boolean): unknown {
    const n = lines[at];
    if (n && n.indent > parent) return block(n.indent);
    // "key:" followed by "- item" lines at the key's own indentation is a sequence too.
    if (n && allowSameIndentItems && n.indent === parent && isItem(n)) return sequence(parent);
    return null;
  }

  function mapping(indent: number): Record<string, unknown> {
    const out: Record<string, unknown> = {};
    while (at < lines.length) {
      const l = lines[at];
      if (l.indent < indent) break;
      if (l.indent > indent || isItem(l)) outside();
      let key: string, rest: string;
      const q = l.text[0];
      if (q === '"' || q === "'") {
        // A quoted key without escapes ("198.19.0.1:80": ...).
        const end = l.text.indexOf(q, 1);
        if (end < 0 || l.text[end + 1] !== ':') outside();
        key = l.text.slice(1, end);
        if ((q === '"' && key.includes('\\')) || key === '__proto__') outside();
        rest = l.text.slice(end + 2);
      } else {
        const colon = l.text.indexOf(':');
        if (colon <= 0) outside();
        key = l.text.slice(0, colon);
        if (!KEY.test(key) || SPECIAL_KEY.test(key) || key === '__proto__') outside();
        rest = l.text.slice(colon + 1);
      }
      if (Object.hasOwn(out, key)) outside();
      at++;
      if (rest.trim() === '' || /^\s+#/.test(rest)) out[key] = nested(indent, true);
      else if (rest[0] !== ' ') outside();
      else {
        const v = rest.trimStart();
        if (/^[&*!|>?]/.test(v) || ((v[0] === '[' || v[0] === '{') && !/^(\[\]|\{\})(\s+#.*)?$/.test(v))) outside();
        out[key] = scalar(v);
      }
    }
    return out;
  }

  function sequence(indent: number): unknown[] {
    const out: unknown[] = [];
    while (at < lines.length) {
      const l = lines[at];
      if (l.indent < indent || (l.indent === indent && !isItem(l))) break;
      if (l.indent > indent) outside();
      const after = l.text.slice(1);
      const rest = after.trimStart();
      if (rest === '' || rest[0] === '#') { at++; out.push(nested(indent, false)); continue; }
      if (/^[-&*!|>?]/.test(rest) || ((rest[0] === '[' || rest[0] === '{') && !/^(\[\]|\{\})(\s+#.*)?$/.test(rest))) outside();
      const colon = rest.search(/:(\s|$)/);
      if (colon > 0 && !rest.startsWith('"') && !rest.startsWith("'")) {
        // "- key: value": a mapping whose keys line up with this first one.
        lines[at] = { indent: l.indent + 1 + (after.length - rest.length), text: rest, no: l.no };
        out.push(mapping(lines[at].indent));
      } else {
        at++;
        out.push(scalar(rest));
      }
    }
    return out;
  }

  try {
    const doc = block(lines[0].indent);
    return at === lines.length && lines[0].indent === 0 ? doc : undefined;
  } catch (e) {
    if (e instanceof Outside) return undefined;
    throw e;
  }
}
