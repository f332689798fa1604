// IP address text <-> bytes for the cold path (config, output). The hot path works on packet bytes only.
import { isIPv4, isIPv6 } from 'node:net';

export interface IpAddress { family: 4 | 6; bytes: Uint8Array }

/**
 * Dotted-quad IPv4 text -> 4 bytes, or null: what net.isIPv4 accepts (four decimal parts 0-255, no leading zeros),
 * without its regular expression (a 2,000-VIP config parses about 20,000 addresses at start).
 */
function parseIpv4(text: string): Uint8Array | null {
  const n = text.length;
  if (n < 7 || n > 15) return null;
  const b = new Uint8Array(4);
  let part = 0, value = 0, digits = 0;
  for (let i = 0; i <= n; i++) {
    const c = i < n ? text.charCodeAt(i) : 46;
    if (c === 46) {
      if (digits === 0 || part > 3) return null;
      b[part++] = value;
      value = 0;
      digits = 0;
    } else if (c >= 48 && c <= 57) {
      if (digits > 0 && value === 0) return null; // a leading zero
      value = value * 10 + (c - 48);
      if (value > 255) return null;
      digits++;
    } else return null;
  }
  return part === 4 ? b : null;
}

/** Parses an IPv4 or IPv6 address; returns null when the text is not one. */
export function parseIp(text: string): IpAddress | null {
  const v4 = parseIpv4(text);
  if (v4) return { family: 4, bytes: v4 };
  if (isIPv4(text)) {
    const b = new Uint8Array(4);
    const parts = text.split('.');
    for (let i = 0; i < 4; i++) b[i] = Number(parts[i]);
    return { family: 4, bytes: b };
  }
  if (isIPv6(text)) {
    let t = text;
    const zone = t.indexOf('%');
    if (zone >= 0) t = t.slice(0, zone);
    const b = new Uint8Array(16);
    // An embedded IPv4 tail (::ffff:1.2.3.4) becomes two groups.
    const lastColon = t.lastIndexOf(':');
    const tail = t.slice(lastColon + 1);
    if (tail.includes('.')) {
      const v4 = parseIp(tail)!.bytes;
      t = t.slice(0, lastColon + 1) + ((v4[0] << 8) | v4[1]).toString(16) + ':' + ((v4[2] << 8) | v4[3]).toString(16);
    }
    const halves = t.split('::');
    const head = halves[0] ? halves[0].split(':') : [];
    const rest = halves.length > 1 && halves[1] ? halves[1].split(':') : [];
    const groups = new Array<number>(8).fill(0);
    head.forEach((g, i) => { groups[i] = parseInt(g, 16); });
    rest.forEach((g, i) => { groups[8 - rest.length + i] = parseInt(g, 16); });
    for (let i = 0; i < 8; i++) { b[2 * i] = groups[i] >> 8; b[2 * i + 1] = groups[i] & 0xff; }
    return { family: 6, bytes: b };
  }
  return null;
}

/** Formats addrLen (4 or 16) bytes at off as text (IPv6 compressed per RFC 5952). */
export function formatIp(buf: Uint8Array, off: number, addrLen: number): string {
  if (addrLen === 4) return `${buf[off]}.${buf[off + 1]}.${buf[off + 2]}.${buf[off + 3]}`;
  const g: number[] = [];
  for (let i = 0; i < 8; i++) g.push((buf[off + 2 * i] << 8) | buf[off + 2 * i + 1]);
  // Longest run of >= 2 zero groups becomes '::'.
  let bestStart = -1, bestLen = 0;
  for (let i = 0; i < 8;) {
    if (g[i] !== 0) { i++; continue; }
    let j = i;
    while (j < 8 && g[j] === 0) j++;
    if (j - i > bestLen && j - i >= 2) { bestStart = i; bestLen = j - i; }
    i = j;
  }
  const hex = (a: number[]) => a.map((x) => x.toString(16)).join(':');
  if (bestStart < 0) return hex(g);
  return `${hex(g.slice(0, bestStart))}::${hex(g.slice(bestStart + bestLen))}`;
}

/** "addr:port" with IPv6 in brackets. */
export function formatEndpoint(buf: Uint8Array, off: number, addrLen: number, port: number): string {
  const a = formatIp(buf, off, addrLen);
  return addrLen === 4 ? `${a}:${port}` : `[${a}]:${port}`;
}

/** Parses "1.2.3.4:80", "[::1]:80", or an address alone (port undefined). Null when malformed. */
export function parseEndpoint(text: string): { addr: IpAddress; port: number | undefined } | null {
  let host = text, portText: string | undefined;
  const m6 = /^\[([^\]]+)\](?::(\d+))?$/.exec(text);
  if (m6) { host = m6[1]; portText = m6[2]; }
  else if (!isIPv6(text)) {
    const i = text.lastIndexOf(':');
    if (i >= 0) { host = text.slice(0, i); portText = text.slice(i + 1); }
  }
  const addr = parseIp(host);
  if (!addr) return null;
  if (portText === undefined) return { addr, port: undefined };
  if (!/^\d{1,5}$/.test(portText)) return null;
  const port = Number(portText);
  if (port < 1 || port > 65535) return null;
  return { addr, port };
}
