// Tests for the MPTCP option codec: byte-exact fixtures (many from the public captures in shared/pcaps,
// decoded values checked against tcpdump's .out text), every illegal length, bounds, and round trips.
import { test, describe } from 'node:test';
import assert from 'node:assert/strict';
import fc from 'fast-check';
import {
  TCPOPT_MPTCP,
  MptcpSubtype,
  OptionStatus,
  OPTION_STATUS_LABELS,
  MPTCP_SUBTYPE_LABELS,
  JoinForm,
  MptcpOption,
  decodeMptcpOption,
  dssBaseLength,
} from '../src/wire/mptcp-options.js';
import { encodeMptcpOption, mptcpOptionLength, mptcpOptionToSpec, type MptcpOptionSpec } from '../src/wire/mptcp-encode.js';
import { describeMptcpOption } from '../src/wire/mptcp-describe.js';

const PAD_BEFORE = 7;
const PAD_AFTER = 5;

function hexToBytes(hex: string): Uint8Array {
  const s = hex.replace(/\s+/g, '');
  const out = new Uint8Array(s.length / 2);
  for (let i = 0; i < out.length; i++) out[i] = parseInt(s.slice(2 * i, 2 * i + 2), 16);
  return out;
}
function bytesToHex(b: Uint8Array): string {
  let s = '';
  for (const x of b) s += x.toString(16).padStart(2, '0');
  return s;
}

/** The option inside a larger buffer, so offsets are not accidentally 0 and neighbours are not zero. */
function place(opt: Uint8Array): { buf: Uint8Array; off: number } {
  const buf = new Uint8Array(PAD_BEFORE + opt.length + PAD_AFTER).fill(0xee);
  buf.set(opt, PAD_BEFORE);
  return { buf, off: PAD_BEFORE };
}

function decodeHex(hex: string, version = 1): { status: OptionStatus; o: MptcpOption; buf: Uint8Array; off: number } {
  const opt = hexToBytes(hex);
  const { buf, off } = place(opt);
  const o = new MptcpOption();
  const status = decodeMptcpOption(buf, off, opt[1], o, version);
  return { status, o, buf, off };
}

/** Expected 64-bit field as its two halves, from a hex string or a bigint (tcpdump prints decimals). */
function pair(name: string, v: string | bigint): Record<string, number> {
  const n = typeof v === 'bigint' ? v : BigInt('0x' + v);
  return { [name + 'Hi']: Number(n >> 32n), [name + 'Lo']: Number(n & 0xffffffffn) };
}

interface Fixture {
  name: string;
  hex: string;
  version?: 0 | 1;
  /** Expected fields; *Off values are relative to the option's start (-1 stays -1). */
  expect: Record<string, number | boolean>;
  /** Exact describeMptcpOption(o, buf) text; from tcpdump's .out where the capture is named. */
  text?: string;
}

const OK_FIXTURES: Fixture[] = [
  // ---- MP_CAPABLE
  {
    name: 'v0 SYN, client key (mptcp-v0 #1)', hex: '1e0c0081 9c9eabd1e46a33b2',
    expect: {
      subtype: 0, length: 12, version: 0, flags: 0x81, checksumRequired: true, extensibility: false, noJoinToSource: false,
      hmacSha: true, hasSenderKey: true, ...pair('senderKey', '9c9eabd1e46a33b2'), senderKeyOff: 4, hasReceiverKey: false,
      receiverKeyOff: -1, hasDataLength: false, hasChecksum: false,
    },
    text: 'capable v0 flags [AH] {0x9c9eabd1e46a33b2}',
  },
  {
    name: 'v0 SYN/ACK, server key (mptcp-v0 #2)', hex: '1e0c0081 967d2770b6960552',
    expect: { version: 0, ...pair('senderKey', '967d2770b6960552'), senderKeyOff: 4, hasReceiverKey: false },
  },
  {
    name: 'v0 third ACK, both keys (mptcp-v0 #3)', hex: '1e140081 9c9eabd1e46a33b2 967d2770b6960552',
    expect: {
      length: 20, ...pair('senderKey', '9c9eabd1e46a33b2'), senderKeyOff: 4, hasReceiverKey: true,
      ...pair('receiverKey', '967d2770b6960552'), receiverKeyOff: 12, hasDataLength: false,
    },
    text: 'capable v0 flags [AH] {0x9c9eabd1e46a33b2,0x967d2770b6960552}',
  },
  {
    name: 'v0 SYN/ACK (mptcp-fclose #4)', hex: '1e0c0081 d005b1ab34bad344',
    expect: { version: 0, ...pair('senderKey', 'd005b1ab34bad344') },
  },
  {
    name: 'v0 flags byte 0x20 is reserved, not C', hex: '1e0c0021 d005b1ab34bad344',
    expect: { version: 0, flags: 0x21, noJoinToSource: false, hmacSha: true, checksumRequired: false },
  },
  {
    name: 'v1 SYN without key (mptcp-v1 #1)', hex: '1e040101',
    expect: { subtype: 0, length: 4, version: 1, flags: 1, hmacSha: true, checksumRequired: false, hasSenderKey: false, senderKeyOff: -1 },
    text: 'capable v1 flags [H]',
  },
  {
    name: 'v1 SYN/ACK, server key (mptcp-v1 #2)', hex: '1e0c0101 29a6c86981ad933c',
    expect: { version: 1, ...pair('senderKey', '29a6c86981ad933c'), senderKeyOff: 4, hasReceiverKey: false },
    text: 'capable v1 flags [H] {0x29a6c86981ad933c}',
  },
  {
    name: 'v1 third ACK (mptcp-v1 #3)', hex: '1e140101 1fdb5df328bc3def 29a6c86981ad933c',
    expect: { ...pair('senderKey', '1fdb5df328bc3def'), ...pair('receiverKey', '29a6c86981ad933c'), receiverKeyOff: 12, hasDataLength: false },
  },
  {
    name: 'v1 first data, both keys + data-level length (mptcp-v1 #4)', hex: '1e160101 1fdb5df328bc3def 29a6c86981ad933c 2000',
    expect: {
      length: 22, ...pair('senderKey', '1fdb5df328bc3def'), ...pair('receiverKey', '29a6c86981ad933c'),
      hasDataLength: true, dataLength: 8192, hasChecksum: false,
    },
    text: 'capable v1 flags [H] {0x1fdb5df328bc3def,0x29a6c86981ad933c,data_len=8192}',
  },
  {
    name: 'v1 first data (linux-v1 #4)', hex: '1e160101 15eed87ecb7d8aea 546054e621704ae7 07d0',
    expect: { ...pair('receiverKey', '546054e621704ae7'), dataLength: 2000 },
  },
  {
    name: 'v1 first data with checksum (length 24)', hex: '1e180181 15eed87ecb7d8aea 546054e621704ae7 07d0 beef',
    expect: { length: 24, checksumRequired: true, hasDataLength: true, dataLength: 2000, hasChecksum: true, checksum: 0xbeef },
    text: 'capable v1 flags [AH] {0x15eed87ecb7d8aea,0x546054e621704ae7,data_len=2000,csum=0xbeef}',
  },
  {
    name: 'v1 SYN/ACK with A, B, C, H and D..G bits', hex: '1e0c01ff 0000000000000001',
    expect: { flags: 0xff, checksumRequired: true, extensibility: true, noJoinToSource: true, hmacSha: true, ...pair('senderKey', '0000000000000001') },
  },
  {
    name: 'future version 3 SYN', hex: '1e040301',
    expect: { version: 3, hasSenderKey: false },
  },
  // ---- MP_JOIN
  {
    name: 'join SYN (mptcp-v0 #8)', hex: '1e0c1000 e47f0142 1b665a18',
    expect: { subtype: 1, joinForm: JoinForm.Syn, backup: false, hasAddrId: true, addrId: 0, token: 0xe47f0142, nonce: 0x1b665a18, hasHmac: false, hmacOff: -1 },
    text: 'join id 0 token 0xe47f0142 nonce 0x1b665a18',
  },
  {
    name: 'join SYN/ACK (mptcp-v0 #9)', hex: '1e101001 5ab680c7884af03d 33abe9d5',
    expect: { joinForm: JoinForm.SynAck, addrId: 1, hasHmac: true, ...pair('hmac', '5ab680c7884af03d'), hmacOff: 4, hmacLength: 8, nonce: 0x33abe9d5, token: 0 },
    text: 'join id 1 hmac 0x5ab680c7884af03d nonce 0x33abe9d5',
  },
  {
    name: 'join ACK (mptcp-v0 #10)', hex: '1e181000 cb7b87f5e5f0502f43b535fb70ef6607df2e6c7a',
    expect: { joinForm: JoinForm.Ack, hasAddrId: false, hasHmac: true, hmacOff: 4, hmacLength: 20, ...pair('hmac', 'cb7b87f5e5f0502f'), reserved: 0 },
    text: 'join hmac 0xcb7b87f5e5f0502f43b535fb70ef6607df2e6c7a',
  },
  {
    name: 'join SYN (linux-v1 #6)', hex: '1e0c1001 d41b3875 129e3b4f',
    expect: { joinForm: JoinForm.Syn, addrId: 1, token: 0xd41b3875, nonce: 0x129e3b4f },
  },
  {
    name: 'join SYN/ACK (linux-v1 #7)', hex: '1e101000 3783f4feb0ea490e 01386ead',
    expect: { joinForm: JoinForm.SynAck, addrId: 0, ...pair('hmac', '3783f4feb0ea490e'), nonce: 0x01386ead },
  },
  {
    name: 'join ACK (linux-v1 #8)', hex: '1e181000 918ed02afd83ed76feb4c2c3e50a61756ce260b7',
    expect: { joinForm: JoinForm.Ack, hmacLength: 20 },
  },
  {
    name: 'join SYN backup with reserved bits', hex: '1e0c1b05 0c84b3eb 8319c689',
    expect: { backup: true, reserved: 5, addrId: 5, token: 0x0c84b3eb },
    text: 'join backup id 5 token 0x0c84b3eb nonce 0x8319c689',
  },
  {
    name: 'join ACK reserved 12 bits', hex: '1e181abc 0000000000000000000000000000000000000000',
    expect: { joinForm: JoinForm.Ack, reserved: 0xabc, backup: false },
  },
  // ---- DSS
  {
    name: 'DSS 32-bit ack + mapping + checksum (mptcp-v0 #4)', hex: '1e142005 d52abeca d1b97490 00000001 0029 082f',
    expect: {
      subtype: 2, dssFlags: 0x05, hasDataAck: true, dataAck64: false, hasMapping: true, dsn64: false, dataFin: false,
      dataAckHi: 0, dataAckLo: 3576348362, dsnHi: 0, dsnLo: 3518592144, ssn: 1, dataLevelLength: 41, hasChecksum: true, checksum: 0x082f,
    },
    text: 'dss ack 3576348362 seq 3518592144 subseq 1 len 41 csum 0x82f',
  },
  {
    name: 'DSS 32-bit ack only (mptcp-v0 #5)', hex: '1e082001 d1b974b9',
    expect: { hasDataAck: true, dataAckLo: 3518592185, hasMapping: false, hasChecksum: false },
    text: 'dss ack 3518592185',
  },
  {
    name: 'DSS DATA_FIN with checksum (mptcp-v0 #259)', hex: '1e142015 d1b99601 d52ad2cb 00000000 0001 0a51',
    expect: { dataFin: true, dataAckLo: 3518600705, dsnLo: 3576353483, ssn: 0, dataLevelLength: 1, checksum: 0x0a51 },
    text: 'dss fin ack 3518600705 seq 3576353483 subseq 0 len 1 csum 0xa51',
  },
  {
    name: 'DSS (mptcp-fclose #6)', hex: '1e142005 c9dc1c61 b1712fb6 00000001 0001 9e91',
    expect: { dataAckLo: 3386645601, dsnLo: 2976985014, checksum: 0x9e91 },
    text: 'dss ack 3386645601 seq 2976985014 subseq 1 len 1 csum 0x9e91',
  },
  {
    name: 'DSS 64-bit ack only (mptcp-v1 #5)', hex: '1e0c2003 c8072fb90edab04e',
    expect: { dssFlags: 3, dataAck64: true, ...pair('dataAck', 14413541604287230030n), hasMapping: false },
    text: 'dss ack 14413541604287230030',
  },
  {
    name: 'DSS 64-bit ack + 64-bit mapping, no checksum (mptcp-v1 #7)', hex: '1e1a200f c8072fb90edab04e a28e87fddd1d30f2 00000001 2000',
    expect: {
      dssFlags: 0x0f, ...pair('dataAck', 14413541604287230030n), dsn64: true, ...pair('dsn', 11713449205243392242n),
      ssn: 1, dataLevelLength: 8192, hasChecksum: false,
    },
    text: 'dss ack 14413541604287230030 seq 11713449205243392242 subseq 1 len 8192',
  },
  {
    name: 'DSS DATA_FIN 64-bit (mptcp-v1 #16)', hex: '1e1a201f a28e87fddd1d50f2 c8072fb90edad86a 00000000 0001',
    expect: { dataFin: true, ...pair('dataAck', 11713449205243400434n), ...pair('dsn', 14413541604287240298n), ssn: 0, dataLevelLength: 1 },
    text: 'dss fin ack 11713449205243400434 seq 14413541604287240298 subseq 0 len 1',
  },
  {
    name: 'DSS 32-bit ack + 64-bit mapping (ptcpdump #6)', hex: '1e16200d ab765998 3602a57d9b3646a0 00000006 0004',
    expect: { dssFlags: 0x0d, dataAck64: false, dataAckLo: 2876660120, ...pair('dsn', 3891854986895050400n), ssn: 6, dataLevelLength: 4 },
    text: 'dss ack 2876660120 seq 3891854986895050400 subseq 6 len 4',
  },
  {
    name: 'DSS (linux-v1 #10)', hex: '1e16200d cdff61a7 e927ac067b61e761 000007d1 07d0',
    expect: { dataAckLo: 0xcdff61a7, ...pair('dsn', 'e927ac067b61e761'), ssn: 2001, dataLevelLength: 2000 },
  },
  {
    name: 'DSS with no flags (length 4)', hex: '1e042000',
    expect: { dssFlags: 0, hasDataAck: false, hasMapping: false, dataFin: false },
    text: 'dss',
  },
  {
    name: 'DSS DATA_FIN flag only', hex: '1e042010', expect: { dataFin: true, hasMapping: false },
  },
  {
    name: 'DSS a and m without A and M: ignored widths, kept flags', hex: '1e04200a',
    expect: { dssFlags: 0x0a, dataAck64: true, dsn64: true, hasDataAck: false, hasMapping: false },
  },
  {
    name: 'DSS 32-bit mapping only, no checksum (14)', hex: '1e0e2004 00000010 00000020 0030',
    expect: { hasDataAck: false, hasMapping: true, dsnLo: 16, ssn: 32, dataLevelLength: 48, hasChecksum: false },
  },
  {
    name: 'DSS 32-bit mapping only, checksum (16)', hex: '1e102004 00000010 00000020 0030 ffff',
    expect: { hasMapping: true, hasChecksum: true, checksum: 0xffff },
  },
  {
    name: 'DSS everything 64-bit with checksum (28)', hex: '1e1c201f ffffffffffffffff 0000000100000000 ffffffff ffff 1234',
    expect: {
      dataFin: true, ...pair('dataAck', 0xffffffffffffffffn), ...pair('dsn', 0x100000000n), ssn: 0xffffffff,
      dataLevelLength: 0xffff, hasChecksum: true, checksum: 0x1234,
    },
  },
  {
    name: 'DSS reserved bits kept', hex: '1e082fe1 00000001',
    expect: { reserved: 0x7f, dssFlags: 1, dataAckLo: 1 },
  },
  // ---- ADD_ADDR
  {
    name: 'ADD_ADDR v0 IPv4 (mptcp-v0 #4)', hex: '1e083401 0a010202', version: 0,
    expect: { subtype: 3, addAddrVersion: 0, ipVersion: 4, addrId: 1, addrOff: 4, addr4: 0x0a010202, hasPort: false, echo: false, hasHmac: false },
    text: 'add-addr v0-ip4 id 1 10.1.2.2',
  },
  {
    name: 'ADD_ADDR v0 IPv4 + port', hex: '1e0a3402 c0a80001 1f90', version: 0,
    expect: { ipVersion: 4, addrId: 2, addr4: 0xc0a80001, hasPort: true, port: 8080 },
  },
  {
    name: 'ADD_ADDR v0 IPv6', hex: '1e143603 20010db8000000000000000000000001', version: 0,
    expect: { ipVersion: 6, addrId: 3, addrOff: 4, addr4: 0, hasPort: false },
    text: 'add-addr v0-ip6 id 3 2001:db8:0:0:0:0:0:1',
  },
  {
    name: 'ADD_ADDR v0 IPv6 + port', hex: '1e163604 20010db8000000000000000000000002 0050', version: 0,
    expect: { ipVersion: 6, hasPort: true, port: 80 },
  },
  {
    name: 'ADD_ADDR v1 IPv4 + HMAC (mptcp-aa-echo #1)', hex: '1e103001 0a000201 f8295862f645df19',
    expect: { addAddrVersion: 1, ipVersion: 4, addrId: 1, addr4: 0x0a000201, echo: false, hasHmac: true, ...pair('hmac', 'f8295862f645df19'), hmacOff: 8, hasPort: false },
    text: 'add-addr v1 id 1 10.0.2.1 hmac 0xf8295862f645df19',
  },
  {
    name: 'ADD_ADDR v1 echo (mptcp-aa-echo #2)', hex: '1e083101 0a000201',
    expect: { echo: true, hasHmac: false, hmacOff: -1, addr4: 0x0a000201, addrId: 1 },
    text: 'add-addr v1-echo id 1 10.0.2.1',
  },
  {
    name: 'ADD_ADDR v1 (mptcp-aa-v1 #13)', hex: '1e103001 c0a888e1 669928744366716c',
    expect: { addr4: 0xc0a888e1, ...pair('hmac', '669928744366716c') },
    text: 'add-addr v1 id 1 192.168.136.225 hmac 0x669928744366716c',
  },
  {
    name: 'ADD_ADDR v1 IPv4 + port + HMAC (18)', hex: '1e123004 0a000001 1388 0102030405060708',
    expect: { ipVersion: 4, hasPort: true, port: 5000, hasHmac: true, hmacOff: 10, ...pair('hmac', '0102030405060708') },
    text: 'add-addr v1 id 4 10.0.0.1 port 5000 hmac 0x0102030405060708',
  },
  {
    name: 'ADD_ADDR v1 IPv4 echo + port (10)', hex: '1e0a3105 0a000001 1389',
    expect: { ipVersion: 4, echo: true, hasPort: true, port: 5001, hasHmac: false },
  },
  {
    name: 'ADD_ADDR v1 IPv6 echo (20)', hex: '1e143106 fe800000000000000000000000000001',
    expect: { ipVersion: 6, echo: true, addrOff: 4, hasPort: false, hasHmac: false },
  },
  {
    name: 'ADD_ADDR v1 IPv6 echo + port (22)', hex: '1e163107 fe800000000000000000000000000001 01bb',
    expect: { ipVersion: 6, echo: true, hasPort: true, port: 443 },
  },
  {
    name: 'ADD_ADDR v1 IPv6 + HMAC (28)', hex: '1e1c3008 fe800000000000000000000000000001 1122334455667788',
    expect: { ipVersion: 6, echo: false, hasPort: false, hasHmac: true, hmacOff: 20, ...pair('hmac', '1122334455667788') },
  },
  {
    name: 'ADD_ADDR v1 IPv6 + port + HMAC (30), reserved bits', hex: '1e1e3e09 fe800000000000000000000000000001 0016 1122334455667788',
    expect: { ipVersion: 6, reserved: 7, echo: false, hasPort: true, port: 22, hmacOff: 22 },
  },
  // ---- REMOVE_ADDR
  {
    name: 'REMOVE_ADDR one id (mptcp-v0 #210)', hex: '1e044000',
    expect: { subtype: 4, addrIdCount: 1, addrIdsOff: 3, reserved: 0 },
    text: 'rem-addr id 0',
  },
  {
    name: 'REMOVE_ADDR three ids', hex: '1e064f01 0203',
    expect: { addrIdCount: 3, addrIdsOff: 3, reserved: 0xf },
    text: 'rem-addr id 1 id 2 id 3',
  },
  // ---- MP_PRIO
  {
    name: 'MP_PRIO v1 form (3), backup', hex: '1e0351',
    expect: { subtype: 5, length: 3, backup: true, hasAddrId: false },
    text: 'mp-prio backup',
  },
  {
    name: 'MP_PRIO v0 form (4) with address id', hex: '1e045007',
    expect: { backup: false, hasAddrId: true, addrId: 7 },
    text: 'mp-prio non-backup id 7',
  },
  // ---- MP_FAIL
  {
    name: 'MP_FAIL', hex: '1e0c6000 0000000100000002',
    expect: { subtype: 6, ...pair('dsn', 0x100000002n), dsn64: true },
    text: 'mp-fail seq 4294967298',
  },
  // ---- MP_FASTCLOSE
  {
    name: 'MP_FASTCLOSE (mptcp-fclose #10)', hex: '1e0c7000 d005b1ab34bad344',
    expect: { subtype: 7, hasReceiverKey: true, ...pair('receiverKey', 'd005b1ab34bad344'), receiverKeyOff: 4, hasSenderKey: false },
    text: 'fast-close key 0xd005b1ab34bad344',
  },
  // ---- MP_TCPRST
  {
    name: 'MP_TCPRST no flags (mptcp-tcprst #1)', hex: '1e048000',
    expect: { subtype: 8, rstFlags: 0, rstTransient: false, reason: 0 },
    text: 'tcprst flags [none] reason Unspecified error',
  },
  {
    name: 'MP_TCPRST T flag (mptcp-tcprst #2)', hex: '1e048101',
    expect: { rstFlags: 1, rstTransient: true, reason: 1 },
    text: 'tcprst flags [T] reason MPTCP-specific error',
  },
  {
    name: 'MP_TCPRST all flags, unknown reason', hex: '1e048f2a',
    expect: { rstFlags: 0xf, rstTransient: true, reason: 42 },
    text: 'tcprst flags [UVWT] reason 42',
  },
];

function checkFields(o: MptcpOption, off: number, expect: Record<string, number | boolean>, name: string): void {
  const rec = o as unknown as Record<string, unknown>;
  for (const [k, v] of Object.entries(expect)) {
    assert.ok(k in rec, `${name}: no field ${k}`);
    const want = k.endsWith('Off') && typeof v === 'number' && v >= 0 ? v + off : v;
    assert.equal(rec[k], want, `${name}: ${k}`);
  }
}

describe('constants', () => {
  test('kind, labels', () => {
    assert.equal(TCPOPT_MPTCP, 30);
    assert.deepEqual([...OPTION_STATUS_LABELS], ['ok', 'bad_length', 'unknown_subtype', 'bad_field']);
    assert.equal(OPTION_STATUS_LABELS[OptionStatus.BadField], 'bad_field');
    assert.equal(MPTCP_SUBTYPE_LABELS.length, 9);
    assert.equal(MPTCP_SUBTYPE_LABELS[MptcpSubtype.MpTcpRst], 'mp_tcprst');
  });
});

describe('fixtures decode byte-exact', () => {
  for (const f of OK_FIXTURES) {
    test(f.name, () => {
      const { status, o, buf, off } = decodeHex(f.hex, f.version ?? 1);
      assert.equal(status, OptionStatus.Ok, OPTION_STATUS_LABELS[status]);
      assert.equal(o.status, OptionStatus.Ok);
      assert.equal(o.length, hexToBytes(f.hex).length);
      checkFields(o, off, f.expect, f.name);
      if (f.text !== undefined) assert.equal(describeMptcpOption(o, buf), f.text);
      // encode(decode(x)) === x
      const spec = mptcpOptionToSpec(o, buf);
      const outBuf = new Uint8Array(64).fill(0x55);
      const n = encodeMptcpOption(spec, outBuf, 3);
      assert.equal(bytesToHex(outBuf.subarray(3, 3 + n)), f.hex.replace(/\s+/g, ''));
      assert.equal(outBuf[2], 0x55, 'encode wrote before off');
      assert.equal(outBuf[3 + n], 0x55, 'encode wrote past its length');
      assert.equal(mptcpOptionLength(spec), n);
    });
  }

  test('the key offsets point at the key bytes', () => {
    const { o, buf } = decodeHex('1e140101 1fdb5df328bc3def 29a6c86981ad933c');
    assert.equal(bytesToHex(buf.subarray(o.senderKeyOff, o.senderKeyOff + 8)), '1fdb5df328bc3def');
    assert.equal(bytesToHex(buf.subarray(o.receiverKeyOff, o.receiverKeyOff + 8)), '29a6c86981ad933c');
  });

  test('the join ACK HMAC offset covers all 160 bits', () => {
    const { o, buf } = decodeHex('1e181000 cb7b87f5e5f0502f43b535fb70ef6607df2e6c7a');
    assert.equal(bytesToHex(buf.subarray(o.hmacOff, o.hmacOff + o.hmacLength)), 'cb7b87f5e5f0502f43b535fb70ef6607df2e6c7a');
  });

  test('REMOVE_ADDR ids are read in place', () => {
    const { o, buf } = decodeHex('1e064f01 0203');
    assert.deepEqual([...buf.subarray(o.addrIdsOff, o.addrIdsOff + o.addrIdCount)], [1, 2, 3]);
  });

  test('IPv6 address offset', () => {
    const { o, buf } = decodeHex('1e1c3008 fe800000000000000000000000000001 1122334455667788');
    assert.equal(bytesToHex(buf.subarray(o.addrOff, o.addrOff + 16)), 'fe800000000000000000000000000001');
  });

  test('the spec owns its bytes: changing the packet afterwards does not change it', () => {
    const buf = Buffer.from('1e181000cb7b87f5e5f0502f43b535fb70ef6607df2e6c7a', 'hex');
    const o = new MptcpOption();
    assert.equal(decodeMptcpOption(buf, 0, 24, o), OptionStatus.Ok);
    const spec = mptcpOptionToSpec(o, buf);
    buf.fill(0);
    assert.ok(spec.subtype === MptcpSubtype.MpJoin && spec.hmac !== undefined);
    assert.equal(bytesToHex(spec.hmac), 'cb7b87f5e5f0502f43b535fb70ef6607df2e6c7a');
  });

  test('a reused record carries nothing over from the previous option', () => {
    const o = new MptcpOption();
    const a = place(hexToBytes('1e160101 1fdb5df328bc3def 29a6c86981ad933c 2000'));
    assert.equal(decodeMptcpOption(a.buf, a.off, 22, o), OptionStatus.Ok);
    const b = place(hexToBytes('1e082001 d1b974b9'));
    assert.equal(decodeMptcpOption(b.buf, b.off, 8, o), OptionStatus.Ok);
    const fresh = new MptcpOption();
    decodeMptcpOption(b.buf, b.off, 8, fresh);
    assert.deepEqual({ ...o }, { ...fresh });
    assert.equal(o.hasSenderKey, false);
    assert.equal(o.senderKeyOff, -1);
  });

  test('the version argument selects the ADD_ADDR layout', () => {
    // The v0 option read as v1: the nibble 4 means E=0, so an HMAC is required and length 8 is wrong.
    assert.equal(decodeHex('1e083401 0a010202', 1).status, OptionStatus.BadLength);
    // The v1 echo read as v0: IPVer 1 is neither 4 nor 6.
    assert.equal(decodeHex('1e083101 0a000201', 0).status, OptionStatus.BadField);
    // Version only matters for ADD_ADDR: a DSS decodes the same either way.
    assert.deepEqual({ ...decodeHex('1e082001 d1b974b9', 0).o }, { ...decodeHex('1e082001 d1b974b9', 1).o });
    // Default is v1.
    const opt = place(hexToBytes('1e083101 0a000201'));
    const o = new MptcpOption();
    assert.equal(decodeMptcpOption(opt.buf, opt.off, 8, o), OptionStatus.Ok);
    assert.equal(o.echo, true);
  });
});

describe('unknown subtypes and short options', () => {
  test('subtypes 9..15 are UnknownSubtype, not errors', () => {
    for (let st = 9; st <= 15; st++) {
      const { status, o } = decodeHex(`1e04${(st << 4).toString(16)}000`);
      assert.equal(status, OptionStatus.UnknownSubtype);
      assert.equal(o.subtype, st);
      assert.equal(o.length, 4);
    }
    assert.equal(describeMptcpOption(decodeHex('1e05f00000').o), 'mptcp subtype 15 len 5');
    assert.throws(() => mptcpOptionToSpec(decodeHex('1e04f000').o, new Uint8Array(8)), RangeError);
  });

  test('CVE-2017-13040: a 3-byte DSS (mptcp-dss-oobr) is BadLength and reads nothing past it', () => {
    // The option ends the TCP header and the capture: nothing follows it in the buffer.
    const tail = hexToBytes('080a239ebd3400000000 1e0320');
    const { proxy, reads } = tracked(tail);
    const o = new MptcpOption();
    assert.equal(decodeMptcpOption(proxy, 10, 3, o), OptionStatus.BadLength);
    assert.equal(o.subtype, MptcpSubtype.Dss);
    assert.equal(o.status, OptionStatus.BadLength);
    assert.ok(reads.every((i) => i >= 10 && i < 13), `read outside: ${reads}`);
    // tcpdump -v prints "mptcp 3 dss[bad opt]" for it.
    assert.equal(describeMptcpOption(o), 'dss len 3 [bad_length]');
    assert.throws(() => mptcpOptionToSpec(o, tail), RangeError);
  });

  test('length 0, 1 and 2 have no subtype byte', () => {
    for (const len of [0, 1, 2]) {
      const { buf, off } = place(hexToBytes('1e022000'));
      const o = new MptcpOption();
      assert.equal(decodeMptcpOption(buf, off, len, o), OptionStatus.BadLength);
      assert.equal(o.subtype, -1);
    }
  });

  test('a window past the end of the buffer is BadLength, not a read of undefined', () => {
    const buf = hexToBytes('1e0c0081 9c9eabd1e46a33b2');
    const o = new MptcpOption();
    assert.equal(decodeMptcpOption(buf.subarray(0, 11), 0, 12, o), OptionStatus.BadLength);
    assert.equal(decodeMptcpOption(buf, -1, 12, o), OptionStatus.BadLength);
    assert.equal(decodeMptcpOption(buf, 0, 12, o), OptionStatus.Ok);
  });
});

/** Legal lengths per subtype and the first bytes that select the form. */
function legalLengths(b2: number, b3: number, version: 0 | 1): Set<number> {
  const subtype = b2 >> 4;
  const nib = b2 & 0xf;
  const all = (from: number) => new Set(Array.from({ length: 41 - from }, (_, i) => i + from));
  switch (subtype) {
    case 0: return new Set(nib === 0 ? [12, 20] : [4, 12, 20, 22, 24]);
    case 1: return new Set([12, 16, 24]);
    case 2: {
      // Written out from the RFC's field sizes, independently of dssBaseLength.
      const A = b3 & 1, a = b3 & 2, M = b3 & 4, m = b3 & 8;
      const base = 4 + (A ? (a ? 8 : 4) : 0) + (M ? (m ? 8 : 4) + 4 + 2 : 0);
      return new Set(M ? [base, base + 2] : [base]);
    }
    case 3:
      if (version === 0) return new Set(nib === 4 ? [8, 10] : nib === 6 ? [20, 22] : []);
      return new Set(nib & 1 ? [8, 10, 20, 22] : [16, 18, 28, 30]);
    case 4: return all(4);
    case 5: return new Set([3, 4]);
    case 6: case 7: return new Set([12]);
    case 8: return new Set([4]);
    default: return all(3);
  }
}

describe('every illegal length is BadLength (0..40)', () => {
  const cases: { name: string; b2: number; b3: number; version: 0 | 1 }[] = [
    { name: 'MP_CAPABLE v0', b2: 0x00, b3: 0x81, version: 1 },
    { name: 'MP_CAPABLE v1', b2: 0x01, b3: 0x01, version: 1 },
    { name: 'MP_CAPABLE v15', b2: 0x0f, b3: 0x01, version: 1 },
    { name: 'MP_JOIN', b2: 0x10, b3: 0x00, version: 1 },
    { name: 'MP_JOIN backup', b2: 0x11, b3: 0x03, version: 1 },
    ...Array.from({ length: 32 }, (_, f) => ({ name: `DSS flags 0x${f.toString(16)}`, b2: 0x20, b3: f, version: 1 as const })),
    { name: 'DSS flags with reserved bits', b2: 0x2f, b3: 0xe5, version: 1 },
    { name: 'ADD_ADDR v0 IPv4', b2: 0x34, b3: 1, version: 0 },
    { name: 'ADD_ADDR v0 IPv6', b2: 0x36, b3: 1, version: 0 },
    { name: 'ADD_ADDR v1 HMAC', b2: 0x30, b3: 1, version: 1 },
    { name: 'ADD_ADDR v1 echo', b2: 0x31, b3: 1, version: 1 },
    { name: 'ADD_ADDR v1 HMAC, reserved bits', b2: 0x3e, b3: 1, version: 1 },
    { name: 'REMOVE_ADDR', b2: 0x40, b3: 1, version: 1 },
    { name: 'MP_PRIO', b2: 0x51, b3: 1, version: 1 },
    { name: 'MP_FAIL', b2: 0x60, b3: 0, version: 1 },
    { name: 'MP_FASTCLOSE', b2: 0x70, b3: 0, version: 1 },
    { name: 'MP_TCPRST', b2: 0x81, b3: 1, version: 1 },
  ];
  for (const c of cases) {
    test(c.name, () => {
      const legal = legalLengths(c.b2, c.b3, c.version);
      const o = new MptcpOption();
      for (let len = 0; len <= 40; len++) {
        const opt = new Uint8Array(Math.max(len, 4)).fill(0xa5);
        opt[0] = 30;
        opt[1] = len;
        opt[2] = c.b2;
        opt[3] = c.b3;
        const buf = new Uint8Array(PAD_BEFORE + len + PAD_AFTER).fill(0xee);
        buf.set(opt.subarray(0, len), PAD_BEFORE);
        const st = decodeMptcpOption(buf, PAD_BEFORE, len, o, c.version);
        const want = legal.has(len) ? OptionStatus.Ok : OptionStatus.BadLength;
        assert.equal(OPTION_STATUS_LABELS[st], OPTION_STATUS_LABELS[want], `${c.name} length ${len}`);
      }
    });
  }

  test('ADD_ADDR v0 with IPVer other than 4 or 6 is BadField at its would-be lengths', () => {
    for (const ipver of [0, 1, 5, 7, 15]) {
      for (const len of [8, 10, 20, 22]) {
        const opt = new Uint8Array(len);
        opt.set([30, len, 0x30 | ipver, 1]);
        assert.equal(decodeMptcpOption(opt, 0, len, new MptcpOption(), 0), OptionStatus.BadField);
      }
    }
  });

  test('dssBaseLength matches the RFC field sizes', () => {
    assert.equal(dssBaseLength(0), 4);
    assert.equal(dssBaseLength(0x01), 8);
    assert.equal(dssBaseLength(0x03), 12);
    assert.equal(dssBaseLength(0x04), 14);
    assert.equal(dssBaseLength(0x05), 18);
    assert.equal(dssBaseLength(0x0d), 22);
    assert.equal(dssBaseLength(0x0f), 26);
    assert.equal(dssBaseLength(0x1f), 26);
  });
});

// ---------------------------------------------------------------------------------------------------------
// Bounds and robustness properties.

/** A proxy over `bytes` that records every indexed read. */
function tracked(bytes: Uint8Array): { proxy: Uint8Array; reads: number[] } {
  const reads: number[] = [];
  const proxy = new Proxy(bytes, {
    get(target, prop) {
      if (typeof prop === 'string' && /^[0-9]+$/.test(prop)) reads.push(Number(prop));
      const v = Reflect.get(target, prop, target) as unknown;
      return typeof v === 'function' ? (v as (...a: unknown[]) => unknown).bind(target) : v;
    },
  });
  return { proxy, reads };
}

describe('properties', () => {
  test('random bytes at random offsets and lengths: never throws, reads only inside the window', () => {
    fc.assert(
      fc.property(
        fc.uint8Array({ minLength: 0, maxLength: 60 }),
        fc.nat(60),
        fc.nat(45),
        fc.constantFrom(0 as const, 1 as const),
        (bytes, offRaw, len, version) => {
          const off = bytes.length === 0 ? 0 : offRaw % (bytes.length + 1);
          const { proxy, reads } = tracked(bytes);
          const o = new MptcpOption();
          const st = decodeMptcpOption(proxy, off, len, o, version);
          assert.ok(st >= OptionStatus.Ok && st <= OptionStatus.BadField);
          for (const i of reads) assert.ok(i >= off && i < off + len && i < bytes.length, `read ${i} outside [${off}, ${off + len})`);
          describeMptcpOption(o, bytes); // must not throw either
        },
      ),
      { numRuns: 3000 },
    );
  });

  test('random MPTCP-shaped options: bytes outside the window do not change the result', () => {
    fc.assert(
      fc.property(
        fc.integer({ min: 0, max: 40 }),
        fc.uint8Array({ minLength: 40, maxLength: 40 }),
        fc.uint8Array({ minLength: 48, maxLength: 48 }),
        fc.uint8Array({ minLength: 48, maxLength: 48 }),
        fc.constantFrom(0 as const, 1 as const),
        (len, body, sentinelsA, sentinelsB, version) => {
          // Option at the end of a buffer, then the same option with other neighbours before and after.
          const a = new Uint8Array(8 + len + 40);
          a.set(sentinelsA.subarray(0, 8), 0);
          a.set(body.subarray(0, len), 8);
          a.set(sentinelsA.subarray(8, 48), 8 + len);
          if (len >= 1) a[8] = 30;
          if (len >= 2) a[9] = len;
          const b = a.slice();
          b.set(sentinelsB.subarray(0, 8), 0);
          b.set(sentinelsB.subarray(8, 48), 8 + len);
          const atEnd = a.slice(0, 8 + len);
          const oa = new MptcpOption();
          const ob = new MptcpOption();
          const oe = new MptcpOption();
          const sa = decodeMptcpOption(a, 8, len, oa, version);
          const sb = decodeMptcpOption(b, 8, len, ob, version);
          const se = decodeMptcpOption(atEnd, 8, len, oe, version);
          assert.equal(sa, sb);
          assert.equal(sa, se);
          assert.deepEqual({ ...oa }, { ...ob });
          assert.deepEqual({ ...oa }, { ...oe });
        },
      ),
      { numRuns: 3000 },
    );
  });

  test('any random option that decodes Ok re-encodes to the same bytes', () => {
    let oks = 0;
    fc.assert(
      fc.property(
        fc.integer({ min: 3, max: 40 }),
        fc.uint8Array({ minLength: 40, maxLength: 40 }),
        fc.integer({ min: 0, max: 8 }),
        fc.constantFrom(0 as const, 1 as const),
        (len, body, subtype, version) => {
          const opt = body.slice(0, len);
          opt[0] = 30;
          opt[1] = len;
          opt[2] = (subtype << 4) | (opt[2] & 0xf);
          const o = new MptcpOption();
          if (decodeMptcpOption(opt, 0, len, o, version) !== OptionStatus.Ok) return;
          oks++;
          const out = new Uint8Array(len);
          assert.equal(encodeMptcpOption(mptcpOptionToSpec(o, opt), out, 0), len);
          assert.equal(bytesToHex(out), bytesToHex(opt));
        },
      ),
      { numRuns: 5000 },
    );
    assert.ok(oks > 300, `only ${oks} random options decoded Ok: the property tested too little`);
  });

  test('mutated legal options that still decode Ok re-encode to the same bytes', () => {
    fc.assert(
      fc.property(
        fc.constantFrom(...OK_FIXTURES),
        fc.array(fc.tuple(fc.nat(), fc.integer({ min: 0, max: 255 })), { minLength: 1, maxLength: 4 }),
        (f, edits) => {
          const opt = hexToBytes(f.hex);
          for (const [pos, val] of edits) opt[2 + (pos % (opt.length - 2))] = val;
          const o = new MptcpOption();
          const st = decodeMptcpOption(opt, 0, opt.length, o, f.version ?? 1);
          if (st !== OptionStatus.Ok) return;
          const out = new Uint8Array(opt.length + 8);
          const n = encodeMptcpOption(mptcpOptionToSpec(o, opt), out, 8);
          assert.equal(n, opt.length);
          assert.equal(bytesToHex(out.subarray(8)), bytesToHex(opt));
        },
      ),
      { numRuns: 3000 },
    );
  });

  test('encode -> decode -> encode round trip over arbitrary specs, fields preserved', () => {
    fc.assert(
      fc.property(specArb, (spec) => {
        const buf = new Uint8Array(48);
        const n = encodeMptcpOption(spec, buf, 2);
        assert.equal(buf[2], 30);
        assert.equal(buf[3], n);
        const o = new MptcpOption();
        const version = spec.subtype === MptcpSubtype.AddAddr ? (spec.version ?? 1) : 1;
        assert.equal(decodeMptcpOption(buf, 2, n, o, version), OptionStatus.Ok);
        const back = mptcpOptionToSpec(o, buf);
        assert.deepEqual(back, normalize(spec));
        const buf2 = new Uint8Array(48);
        assert.equal(encodeMptcpOption(back, buf2, 2), n);
        assert.equal(bytesToHex(buf2), bytesToHex(buf));
      }),
      { numRuns: 3000 },
    );
  });
});

// Arbitrary specs, each encodable.
const u8 = fc.integer({ min: 0, max: 255 });
const u16 = fc.integer({ min: 0, max: 0xffff });
const u32 = fc.integer({ min: 0, max: 0xffffffff });
const u64 = fc.bigInt({ min: 0n, max: (1n << 64n) - 1n });
const u32n = fc.bigInt({ min: 0n, max: 0xffffffffn });
const opt = <T>(a: fc.Arbitrary<T>) => fc.option(a, { nil: undefined });

const capableArb: fc.Arbitrary<MptcpOptionSpec> = fc
  .record({ version: fc.integer({ min: 0, max: 15 }), flags: u8, form: fc.integer({ min: 0, max: 4 }), k1: u64, k2: u64, dl: u16, cs: u16, a: fc.boolean(), h: fc.boolean() })
  .map(({ version, flags, form, k1, k2, dl, cs, a, h }) => {
    if (version === 0 && form !== 1 && form !== 2) form = 1;
    return {
      subtype: MptcpSubtype.MpCapable as const, version, flags, checksumRequired: a, hmacSha: h,
      ...(form >= 1 ? { senderKey: k1 } : {}), ...(form >= 2 ? { receiverKey: k2 } : {}),
      ...(form >= 3 ? { dataLength: dl } : {}), ...(form >= 4 ? { checksum: cs } : {}),
    };
  });
const joinArb: fc.Arbitrary<MptcpOptionSpec> = fc.oneof(
  fc.record({ backup: fc.boolean(), addrId: u8, token: u32, nonce: u32, reserved: fc.integer({ min: 0, max: 7 }) })
    .map((r) => ({ subtype: MptcpSubtype.MpJoin as const, form: JoinForm.Syn as const, ...r })),
  fc.record({ backup: fc.boolean(), addrId: u8, hmac: fc.uint8Array({ minLength: 8, maxLength: 8 }), nonce: u32, reserved: fc.integer({ min: 0, max: 7 }) })
    .map((r) => ({ subtype: MptcpSubtype.MpJoin as const, form: JoinForm.SynAck as const, ...r })),
  fc.record({ hmac: fc.uint8Array({ minLength: 20, maxLength: 20 }), reserved: fc.integer({ min: 0, max: 0xfff }) })
    .map((r) => ({ subtype: MptcpSubtype.MpJoin as const, form: JoinForm.Ack as const, ...r })),
);
const dssArb: fc.Arbitrary<MptcpOptionSpec> = fc
  .record({
    dataFin: fc.boolean(), ackWide: fc.boolean(), ack64: u64, ack32: u32n, hasAck: fc.boolean(),
    dsnWide: fc.boolean(), dsn64v: u64, dsn32: u32n, hasMap: fc.boolean(), ssn: u32, dll: u16, cs: opt(u16),
    reserved: fc.integer({ min: 0, max: 0x7f }),
  })
  .map((r) => ({
    subtype: MptcpSubtype.Dss as const,
    dataFin: r.dataFin,
    dataAck64: r.ackWide,
    dsn64: r.dsnWide,
    reserved: r.reserved,
    ...(r.hasAck ? { dataAck: r.ackWide ? r.ack64 : r.ack32 } : {}),
    ...(r.hasMap
      ? { mapping: { dsn: r.dsnWide ? r.dsn64v : r.dsn32, ssn: r.ssn, dataLevelLength: r.dll, ...(r.cs !== undefined ? { checksum: r.cs } : {}) } }
      : {}),
  }));
const addAddrArb: fc.Arbitrary<MptcpOptionSpec> = fc
  .record({
    version: fc.constantFrom(0 as const, 1 as const), addrId: u8, v6: fc.boolean(), a: fc.uint8Array({ minLength: 16, maxLength: 16 }),
    port: opt(u16), echo: fc.boolean(), hmac: u64, reserved: fc.integer({ min: 0, max: 7 }),
  })
  .map((r) => ({
    subtype: MptcpSubtype.AddAddr as const,
    version: r.version,
    addrId: r.addrId,
    address: r.a.slice(0, r.v6 ? 16 : 4),
    ...(r.port !== undefined ? { port: r.port } : {}),
    ...(r.version === 1 ? { echo: r.echo, reserved: r.reserved, ...(r.echo ? {} : { hmac: r.hmac }) } : {}),
  }));
const otherArb: fc.Arbitrary<MptcpOptionSpec> = fc.oneof(
  fc.record({ ids: fc.uint8Array({ minLength: 1, maxLength: 37 }), reserved: fc.integer({ min: 0, max: 15 }) })
    .map((r) => ({ subtype: MptcpSubtype.RemoveAddr as const, addrIds: r.ids, reserved: r.reserved })),
  fc.record({ backup: fc.boolean(), addrId: opt(u8), reserved: fc.integer({ min: 0, max: 7 }) })
    .map((r) => ({ subtype: MptcpSubtype.MpPrio as const, backup: r.backup, reserved: r.reserved, ...(r.addrId !== undefined ? { addrId: r.addrId } : {}) })),
  fc.record({ dsn: u64, reserved: fc.integer({ min: 0, max: 0xfff }) }).map((r) => ({ subtype: MptcpSubtype.MpFail as const, ...r })),
  fc.record({ receiverKey: u64, reserved: fc.integer({ min: 0, max: 0xfff }) }).map((r) => ({ subtype: MptcpSubtype.MpFastclose as const, ...r })),
  fc.record({ flags: fc.integer({ min: 0, max: 15 }), reason: u8 }).map((r) => ({ subtype: MptcpSubtype.MpTcpRst as const, ...r })),
);
const specArb: fc.Arbitrary<MptcpOptionSpec> = fc.oneof(capableArb, joinArb, dssArb, addAddrArb, otherArb);

/** What mptcpOptionToSpec should give back for `spec`: defaults filled in, convenience booleans folded. */
function normalize(spec: MptcpOptionSpec): MptcpOptionSpec {
  switch (spec.subtype) {
    case MptcpSubtype.MpCapable: {
      let flags = spec.flags ?? 0;
      if (spec.checksumRequired) flags |= 0x80;
      if (spec.extensibility) flags |= 0x40;
      if (spec.noJoinToSource) flags |= 0x20;
      if (spec.hmacSha) flags |= 0x01;
      const { checksumRequired: _a, extensibility: _b, noJoinToSource: _c, hmacSha: _h, ...rest } = spec;
      return { ...rest, flags };
    }
    case MptcpSubtype.RemoveAddr:
      return { ...spec, addrIds: Uint8Array.from(spec.addrIds) };
    case MptcpSubtype.MpTcpRst:
      return { subtype: spec.subtype, flags: (spec.flags ?? 0) | (spec.transient ? 1 : 0), reason: spec.reason };
    default:
      return spec;
  }
}

describe('encoder', () => {
  test('writes kind and length, returns bytes written, exact forms', () => {
    const buf = new Uint8Array(40);
    assert.equal(encodeMptcpOption({ subtype: MptcpSubtype.MpCapable, version: 1, hmacSha: true }, buf, 0), 4);
    assert.equal(bytesToHex(buf.subarray(0, 4)), '1e040101');
    assert.equal(
      encodeMptcpOption({ subtype: MptcpSubtype.MpJoin, form: JoinForm.Syn, addrId: 1, token: 0xd41b3875, nonce: 0x129e3b4f }, buf, 0),
      12,
    );
    assert.equal(bytesToHex(buf.subarray(0, 12)), '1e0c1001d41b3875129e3b4f');
    // 32-bit widths are chosen when the values fit, 64-bit otherwise (RFC 8684 §3.3.1 lets either be sent).
    const n = encodeMptcpOption(
      { subtype: MptcpSubtype.Dss, dataAck: 0xab765998n, mapping: { dsn: 0x3602a57d9b3646a0n, ssn: 6, dataLevelLength: 4 } },
      buf,
      0,
    );
    assert.equal(bytesToHex(buf.subarray(0, n)), '1e16200dab7659983602a57d9b3646a0000000060004');
    assert.equal(encodeMptcpOption({ subtype: MptcpSubtype.MpTcpRst, transient: true, reason: 1 }, buf, 0), 4);
    assert.equal(bytesToHex(buf.subarray(0, 4)), '1e048101');
    assert.equal(
      encodeMptcpOption({ subtype: MptcpSubtype.AddAddr, version: 0, addrId: 1, address: Uint8Array.of(10, 1, 2, 2) }, buf, 0),
      8,
    );
    assert.equal(bytesToHex(buf.subarray(0, 8)), '1e0834010a010202');
  });

  test('rejects specs that are not encodable, with RangeError', () => {
    const buf = new Uint8Array(40);
    const bad: MptcpOptionSpec[] = [
      { subtype: MptcpSubtype.MpCapable, version: 0 }, // v0 has no key-less SYN
      { subtype: MptcpSubtype.MpCapable, version: 0, senderKey: 1n, receiverKey: 2n, dataLength: 3 }, // v0 has no 22
      { subtype: MptcpSubtype.MpCapable, version: 1, receiverKey: 2n },
      { subtype: MptcpSubtype.MpCapable, version: 1, senderKey: 1n, dataLength: 3 },
      { subtype: MptcpSubtype.MpCapable, version: 1, senderKey: 1n, receiverKey: 2n, checksum: 3 },
      { subtype: MptcpSubtype.MpCapable, version: 16 },
      { subtype: MptcpSubtype.MpCapable, version: 1, senderKey: 1n << 64n },
      { subtype: MptcpSubtype.MpCapable, version: 1, senderKey: -1n },
      { subtype: MptcpSubtype.MpJoin, form: JoinForm.SynAck, hmac: new Uint8Array(20) },
      { subtype: MptcpSubtype.MpJoin, form: JoinForm.Ack, hmac: new Uint8Array(8) },
      { subtype: MptcpSubtype.MpJoin, form: JoinForm.Ack, hmac: new Uint8Array(20), addrId: 1 },
      { subtype: MptcpSubtype.MpJoin, form: JoinForm.Syn, addrId: 256 },
      { subtype: MptcpSubtype.MpJoin, form: JoinForm.Syn, token: 2 ** 32 },
      { subtype: MptcpSubtype.MpJoin, form: JoinForm.Syn, nonce: 1.5 },
      { subtype: MptcpSubtype.MpJoin, form: JoinForm.None as unknown as JoinForm.Syn },
      { subtype: MptcpSubtype.Dss, dataAck: 1n << 32n, dataAck64: false },
      { subtype: MptcpSubtype.Dss, mapping: { dsn: 1n << 32n, ssn: 0, dataLevelLength: 0 }, dsn64: false },
      { subtype: MptcpSubtype.Dss, mapping: { dsn: 0n, ssn: 0, dataLevelLength: 0x10000 } },
      { subtype: MptcpSubtype.Dss, reserved: 0x80 },
      { subtype: MptcpSubtype.AddAddr, addrId: 1, address: new Uint8Array(4) }, // v1 without echo needs an hmac
      { subtype: MptcpSubtype.AddAddr, addrId: 1, address: new Uint8Array(4), echo: true, hmac: 1n },
      { subtype: MptcpSubtype.AddAddr, addrId: 1, address: new Uint8Array(5), echo: true },
      { subtype: MptcpSubtype.AddAddr, version: 0, addrId: 1, address: new Uint8Array(4), hmac: 1n },
      { subtype: MptcpSubtype.AddAddr, version: 0, addrId: 1, address: new Uint8Array(4), port: 65536 },
      { subtype: MptcpSubtype.RemoveAddr, addrIds: [] },
      { subtype: MptcpSubtype.RemoveAddr, addrIds: [300] },
      { subtype: MptcpSubtype.MpPrio, reserved: 8 },
      { subtype: MptcpSubtype.MpFail, dsn: 1n << 64n },
      { subtype: MptcpSubtype.MpTcpRst, reason: 256 },
      { subtype: 9 } as unknown as MptcpOptionSpec,
    ];
    for (const spec of bad) {
      assert.throws(() => encodeMptcpOption(spec, buf, 0), RangeError, JSON.stringify(spec, (_k, v) => (typeof v === 'bigint' ? String(v) : v)));
    }
  });

  test('rejects a buffer too small or a bad offset, writing nothing', () => {
    const spec: MptcpOptionSpec = { subtype: MptcpSubtype.MpFastclose, receiverKey: 0xd005b1ab34bad344n };
    const buf = new Uint8Array(13).fill(0x77);
    assert.throws(() => encodeMptcpOption(spec, buf, 2), RangeError);
    assert.throws(() => encodeMptcpOption(spec, buf, -1), RangeError);
    assert.ok(buf.every((x) => x === 0x77));
    assert.equal(encodeMptcpOption(spec, buf, 1), 12);
    assert.equal(bytesToHex(buf.subarray(1)), '1e0c7000d005b1ab34bad344');
  });
});
