// Read-only views of the engine's tables for the admin API, replay and tests: connection records, subflow text,
// backend addresses, the backend a reply belongs to. Cold path: builds strings and objects.
import { formatEndpoint, formatIp } from '../wire/addr.js';
import { loadAddressWords, PacketView, parsePacket, ParseStatus } from '../wire/parse.js';
import { keyToHex, toHex8 } from '../wire/tokens.js';
import { ConnFlag, type ConnTable } from './conn-table.js';
import { FlowState, type FlowTable } from './flow-table.js';
import { hashTuple } from './hash.js';
import type { Services } from './services.js';

export interface ConnectionInfo {
  index: number;
  version: number;
  token: string;
  serverKey: string;
  clientKey: string | null;
  backend: number;
  vip: number;
  subflows: string[];
  ambiguous: boolean;
  lingering: boolean;
}

export class Introspection {
  // Its own packet view and address words: a lookup from the control plane never disturbs the engine's.
  private readonly view = new PacketView();
  private readonly a = new Uint32Array(8);

  constructor(
    private readonly services: Services,
    private readonly flows: FlowTable,
    private readonly conns: ConnTable,
    /** The flow-index seed (Engine's, a small integer). */
    private readonly seed: number,
  ) {}

  /** Backend of the flow a reply packet belongs to (its source is the VIP, its destination the client), or -1. */
  backendOfReply(buf: Uint8Array, off: number, len: number): number {
    const v = this.view;
    if (parsePacket(buf, off, len, v) !== ParseStatus.Ok) return -1;
    const a = this.a;
    // Swap roles: the reply's destination is the client.
    loadAddressWords(buf, v.dstAddrOff, v.addrLen, a, 0);
    loadAddressWords(buf, v.srcAddrOff, v.addrLen, a, 4);
    const vip = this.services.findVip(a, v.family, v.srcPort);
    if (vip < 0) return -1;
    const r = this.flows.lookupIn(hashTuple(a, 0, v.dstPort, a, 4, v.srcPort, this.seed), a, v.dstPort, vip);
    return r < 0 ? -1 : this.flows.backend(r);
  }

  /** "client:port>vip:port" of flow r. */
  flowDescription(r: number): string {
    const flows = this.flows, svc = this.services;
    const vip = flows.vip(r);
    const n = flows.state(r) & FlowState.V6 ? 16 : 4;
    const cb = new Uint8Array(16);
    for (let i = 0; i < 4; i++) {
      const w = flows.clientWord(r, i);
      cb[4 * i] = w >>> 24; cb[4 * i + 1] = (w >>> 16) & 0xff; cb[4 * i + 2] = (w >>> 8) & 0xff; cb[4 * i + 3] = w & 0xff;
    }
    return `${formatEndpoint(cb, 0, n, flows.clientPort(r))}>${formatEndpoint(svc.vipAddrBytes, vip * 16, n, svc.vipPort[vip])}`;
  }

  connectionInfo(c: number): ConnectionInfo {
    const conns = this.conns, k = conns.keys;
    const subflows: string[] = [];
    for (let f = conns.firstFlow[c]; f >= 0; f = this.flows.next(f)) subflows.push(this.flowDescription(f));
    const flags = conns.flags[c];
    return {
      index: c,
      version: flags & ConnFlag.V1 ? 1 : 0,
      token: toHex8(conns.token[c]),
      serverKey: keyToHex(k[c * 4], k[c * 4 + 1]),
      clientKey: flags & ConnFlag.HasClientKey ? keyToHex(k[c * 4 + 2], k[c * 4 + 3]) : null,
      backend: conns.backend[c],
      vip: conns.vip[c],
      subflows,
      ambiguous: (flags & ConnFlag.Ambiguous) !== 0,
      lingering: (flags & ConnFlag.Lingering) !== 0,
    };
  }

  /** Live connection indices. */
  *connectionIndices(): Generator<number> {
    for (let c = 0; c < this.conns.capacity; c++) if (this.conns.live[c]) yield c;
  }

  /** Backend b's address as text. */
  addressOf(b: number): string {
    const svc = this.services;
    const n = svc.vipFamily[svc.beVip[b]] === 4 ? 4 : 16;
    return formatIp(svc.beAddrBytes, b * 16, n);
  }
}
