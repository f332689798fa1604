// MPTCP option text for debugging, tests and replay, close to tcpdump's print-mptcp.c output. Cold path: allocates.
import { JoinForm, MPTCP_SUBTYPE_LABELS, MptcpOption, MptcpSubtype, OPTION_STATUS_LABELS, OptionStatus, TCPRST_REASON_LABELS } from './mptcp-options.js';
import { keyToBigInt, keyToHex, toHex8 } from './tokens.js';

function hex64(hi: number, lo: number): string {
  return '0x' + keyToHex(hi, lo);
}
function seqText(is64: boolean, hi: number, lo: number): string {
  return is64 ? keyToBigInt(hi, lo).toString() : String(lo);
}
function ipText(o: MptcpOption, buf: Uint8Array | undefined): string {
  if (o.ipVersion === 4) return `${o.addr4 >>> 24}.${(o.addr4 >>> 16) & 0xff}.${(o.addr4 >>> 8) & 0xff}.${o.addr4 & 0xff}`;
  if (buf === undefined) return `ipv6@${o.addrOff}`;
  const parts: string[] = [];
  for (let i = 0; i < 16; i += 2) parts.push(((buf[o.addrOff + i] << 8) | buf[o.addrOff + i + 1]).toString(16));
  return parts.join(':');
}

/**
 * Short human text for a decoded option, e.g. "capable v1 flags [H] {0x29a6c86981ad933c}" or
 * "join id 0 token 0xe47f0142 nonce 0x1b665a18". Pass the buffer it was decoded from to print the
 * MP_JOIN ACK's full HMAC, REMOVE_ADDR ids and IPv6 addresses.
 */
export function describeMptcpOption(o: MptcpOption, buf?: Uint8Array): string {
  if (o.status === OptionStatus.UnknownSubtype) return `mptcp subtype ${o.subtype} len ${o.length}`;
  if (o.status !== OptionStatus.Ok) {
    const name = o.subtype >= 0 && o.subtype < MPTCP_SUBTYPE_LABELS.length ? MPTCP_SUBTYPE_LABELS[o.subtype] : 'mptcp';
    return `${name} len ${o.length} [${OPTION_STATUS_LABELS[o.status]}]`;
  }
  switch (o.subtype) {
    case MptcpSubtype.MpCapable: {
      let f = '';
      if (o.checksumRequired) f += 'A';
      if (o.extensibility) f += 'B';
      if (o.noJoinToSource) f += 'C';
      if (o.hmacSha) f += 'H';
      const parts: string[] = [];
      if (o.hasSenderKey) parts.push(hex64(o.senderKeyHi, o.senderKeyLo));
      if (o.hasReceiverKey) parts.push(hex64(o.receiverKeyHi, o.receiverKeyLo));
      if (o.hasDataLength) parts.push(`data_len=${o.dataLength}`);
      if (o.hasChecksum) parts.push(`csum=0x${o.checksum.toString(16)}`);
      return `capable v${o.version} flags [${f || 'none'}]` + (parts.length ? ` {${parts.join(',')}}` : '');
    }
    case MptcpSubtype.MpJoin: {
      const b = o.backup ? ' backup' : '';
      if (o.joinForm === JoinForm.Syn) return `join${b} id ${o.addrId} token 0x${toHex8(o.token)} nonce 0x${toHex8(o.nonce)}`;
      if (o.joinForm === JoinForm.SynAck) return `join${b} id ${o.addrId} hmac ${hex64(o.hmacHi, o.hmacLo)} nonce 0x${toHex8(o.nonce)}`;
      if (buf === undefined) return `join hmac ${hex64(o.hmacHi, o.hmacLo)}...`;
      let h = '0x';
      for (let i = 0; i < 20; i++) h += buf[o.hmacOff + i].toString(16).padStart(2, '0');
      return `join hmac ${h}`;
    }
    case MptcpSubtype.Dss: {
      let s = 'dss';
      if (o.dataFin) s += ' fin';
      if (o.hasDataAck) s += ' ack ' + seqText(o.dataAck64, o.dataAckHi, o.dataAckLo);
      if (o.hasMapping) {
        s += ` seq ${seqText(o.dsn64, o.dsnHi, o.dsnLo)} subseq ${o.ssn} len ${o.dataLevelLength}`;
        if (o.hasChecksum) s += ` csum 0x${o.checksum.toString(16)}`;
      }
      return s;
    }
    case MptcpSubtype.AddAddr: {
      const kind = o.addAddrVersion === 0 ? `v0-ip${o.ipVersion}` : o.echo ? 'v1-echo' : 'v1';
      let s = `add-addr ${kind} id ${o.addrId} ${ipText(o, buf)}`;
      if (o.hasPort) s += ` port ${o.port}`;
      if (o.hasHmac) s += ` hmac ${hex64(o.hmacHi, o.hmacLo)}`;
      return s;
    }
    case MptcpSubtype.RemoveAddr: {
      if (buf === undefined) return `rem-addr ${o.addrIdCount} ids`;
      let s = 'rem-addr';
      for (let i = 0; i < o.addrIdCount; i++) s += ` id ${buf[o.addrIdsOff + i]}`;
      return s;
    }
    case MptcpSubtype.MpPrio:
      return `mp-prio ${o.backup ? 'backup' : 'non-backup'}` + (o.hasAddrId ? ` id ${o.addrId}` : '');
    case MptcpSubtype.MpFail:
      return `mp-fail seq ${keyToBigInt(o.dsnHi, o.dsnLo)}`;
    case MptcpSubtype.MpFastclose:
      return `fast-close key ${hex64(o.receiverKeyHi, o.receiverKeyLo)}`;
    case MptcpSubtype.MpTcpRst: {
      let f = '';
      if (o.rstFlags & 8) f += 'U';
      if (o.rstFlags & 4) f += 'V';
      if (o.rstFlags & 2) f += 'W';
      if (o.rstFlags & 1) f += 'T';
      const r = o.reason < TCPRST_REASON_LABELS.length ? TCPRST_REASON_LABELS[o.reason] : String(o.reason);
      return `tcprst flags [${f || 'none'}] reason ${r}`;
    }
    default:
      return `mptcp subtype ${o.subtype} len ${o.length}`;
  }
}
