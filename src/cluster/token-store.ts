// The shared token store of a tier of balancers: token -> (VIP, backend, MPTCP version) and steered subflow ->
// backend, on Redis through ioredis. Never on the packet path: the packet worker hands writes over in batches and
// asks for held joins asynchronously. Store trouble degrades to local-only steering; it never throws at callers.
import { createRequire } from 'node:module';
import type { Redis } from 'ioredis';

// Loaded on first use: ioredis takes a few hundred ms to load, and `mplb run` without a store (and its packet worker,
// which imports this module's helpers) must not pay for it at every start.
const requireLazily = createRequire(import.meta.url);
const loadRedis = (): typeof Redis => (requireLazily('ioredis') as typeof import('ioredis')).Redis;

export interface TokenStoreOptions {
  /** redis://[user:password@]host:port[/db] */
  url: string;
  /** Keys are `${keyPrefix}t:<token>` and `${keyPrefix}f:<subflow>`; balancers of one tier share it. */
  keyPrefix: string;
  password?: string;
  connectTimeoutMs: number;
  /** A command not answered by then fails (the store counts as slow). */
  commandTimeoutMs: number;
}

/** What the store holds for a token or a subflow (ids as the engine spells them: canonical "addr:port"). */
export interface StoreEntry { vip: string; backend: string; version: number }

/** Why a read gave nothing usable. */
export type ReadOutcome = 'found' | 'absent' | 'ambiguous' | 'invalid' | 'error';

export interface StoreCounters {
  writes: number;
  writeErrors: number;
  reads: number;
  readErrors: number;
  /** Values that did not parse (a hostile or foreign writer): refused. */
  invalidValues: number;
  /** set-if-absent found another balancer's different entry for the token. */
  collisions: number;
  reconnects: number;
}

/** Longest value accepted from the store: anything larger is not ours. */
const MAX_VALUE_BYTES = 200;
/** Marks a token two balancers learned for different backends: joins for it get the unknown-token answer. */
const AMBIGUOUS = 'ambiguous';

/** `v1|<vip>|<backend>|<version>`: small, and refused when it is anything else. */
export function encodeEntry(e: StoreEntry): string {
  return `v1|${e.vip}|${e.backend}|${e.version}`;
}

export function decodeEntry(s: string | null): StoreEntry | 'ambiguous' | 'invalid' | null {
  if (s === null) return null;
  if (s.length > MAX_VALUE_BYTES) return 'invalid';
  if (s === AMBIGUOUS) return 'ambiguous';
  const p = s.split('|');
  if (p.length !== 4 || p[0] !== 'v1' || (p[3] !== '0' && p[3] !== '1') || p[1] === '' || p[2] === '') return 'invalid';
  return { vip: p[1], backend: p[2], version: Number(p[3]) };
}

export const tokenKey = (prefix: string, token: number): string => `${prefix}t:${(token >>> 0).toString(16).padStart(8, '0')}`;
export const flowKey = (prefix: string, subflow: string): string => `${prefix}f:${subflow}`;

export type StoreState = 'connecting' | 'up' | 'down';

export class TokenStore {
  readonly counters: StoreCounters = { writes: 0, writeErrors: 0, reads: 0, readErrors: 0, invalidValues: 0, collisions: 0, reconnects: 0 };
  private readonly redis: Redis;
  private stateValue: StoreState = 'connecting';
  private closed = false;
  /** Called when the store comes back after being down (live tokens are published again then). */
  onUp?: () => void;
  /** Called on every change between up and not up. */
  onState?: (up: boolean) => void;

  constructor(readonly opts: TokenStoreOptions) {
    this.redis = new (loadRedis())(opts.url, {
      password: opts.password,
      keyPrefix: undefined,
      connectTimeout: opts.connectTimeoutMs,
      commandTimeout: opts.commandTimeoutMs,
      // Fail fast while the store is down instead of queueing: steering goes local-only, packets never wait.
      enableOfflineQueue: false,
      maxRetriesPerRequest: 0,
      enableAutoPipelining: true,
      lazyConnect: true,
      // Reconnect with backoff, capped: 100 ms, 200 ms, ... 5 s.
      retryStrategy: (times) => Math.min(100 * 2 ** Math.min(times - 1, 6), 5000),
    });
    this.redis.on('ready', () => {
      const wasDown = this.stateValue === 'down';
      this.setState('up');
      if (wasDown) this.onUp?.();
    });
    // KEYS: token keys; ARGV: ttl, the ambiguous marker, then one value per key. Codes: PUB_* below.
    this.redis.defineCommand('mplbPublish', { lua: PUBLISH_LUA });
    this.redis.on('reconnecting', () => { this.counters.reconnects++; });
    this.redis.on('close', () => { if (!this.closed) this.setState('down'); });
    // ioredis reports connection errors here; without a listener they would be thrown as unhandled.
    this.redis.on('error', (e: Error) => { this.lastError = e.message; if (this.stateValue === 'connecting') this.setState('down'); });
  }

  /** The last connection error (for logs and the dashboard). */
  lastError = '';

  private setState(s: StoreState): void {
    const was = this.stateValue === 'up';
    this.stateValue = s;
    if (was !== (s === 'up')) this.onState?.(s === 'up');
  }

  get state(): StoreState { return this.stateValue; }
  get up(): boolean { return this.stateValue === 'up'; }

  /** Connects once; a store that is down at start is retried in the background (never fatal). */
  async connect(): Promise<void> {
    try { await this.redis.connect(); } catch { this.setState('down'); }
  }

  /** Set-if-absent of one token -> entry (publishBatch of one): 'ok', 'collision' (now marked ambiguous), or 'error'. */
  async publishToken(token: number, e: StoreEntry, ttlMs: number): Promise<PublishResult> {
    return (await this.publishBatch([{ token, entry: e }], ttlMs))[0];
  }

  /**
   * Set-if-absent of many tokens in one round trip and one command: a Lua script does, for each key, set-if-absent,
   * the same entry's refresh, or collision marking, atomically (no other balancer's write can come between the
   * check and the marking). Per item: 'ok', 'collision' or
   * 'error' (the whole batch failed: the store is down or the command timed out).
   */
  async publishBatch(items: ReadonlyArray<{ token: number; entry: StoreEntry }>, ttlMs: number): Promise<PublishResult[]> {
    if (items.length === 0) return [];
    if (!this.up) { this.counters.writeErrors += items.length; return items.map(() => 'error'); }
    const args: string[] = [String(items.length)];
    for (const it of items) args.push(tokenKey(this.opts.keyPrefix, it.token));
    args.push(String(ttlMs), AMBIGUOUS);
    for (const it of items) args.push(encodeEntry(it.entry));
    this.counters.writes += items.length;
    try {
      const codes = await (this.redis as unknown as { mplbPublish(...a: string[]): Promise<number[]> }).mplbPublish(...args);
      return items.map((_, i) => {
        const c = codes[i];
        if (c === PUB_SET || c === PUB_SAME) return 'ok';
        if (c === PUB_INVALID) this.counters.invalidValues++;
        this.counters.collisions++;
        return 'collision';
      });
    } catch {
      this.counters.writeErrors += items.length;
      return items.map(() => 'error');
    }
  }

  /**
   * Pipelined writes off the packet path: refresh TTLs, set subflow entries, delete or shorten closed ones. The ops
   * that fail (a command timed out on a stalled server) are tried again after a backoff, at most `tries` times in
   * all: each op sets an absolute state, so running one twice is harmless, and a lost subflow entry would send a
   * moved subflow to the wrong server.
   */
  async writeBatch(ops: ReadonlyArray<StoreWrite>, tries = WRITE_TRIES): Promise<boolean> {
    let todo = ops;
    for (let attempt = 1; todo.length > 0; attempt++) {
      if (!this.up) { this.counters.writeErrors += todo.length; return false; }
      const p = this.redis.pipeline();
      for (const op of todo) {
        if (op.op === 'set') p.set(op.key, op.value, 'PX', op.ttlMs);
        else if (op.op === 'expire') p.pexpire(op.key, op.ttlMs);
        else p.del(op.key);
      }
      this.counters.writes += todo.length;
      let failed: StoreWrite[];
      try {
        const res = await p.exec();
        failed = todo.filter((_, i) => !res || res[i]?.[0]);
      } catch {
        failed = [...todo];
      }
      this.counters.writeErrors += failed.length;
      if (failed.length === 0) return true;
      if (attempt >= tries || this.closed) return false;
      todo = failed;
      await new Promise((res) => setTimeout(res, this.opts.commandTimeoutMs * attempt * 2).unref());
    }
    return true;
  }

  async lookupToken(token: number): Promise<{ outcome: ReadOutcome; entry?: StoreEntry }> {
    return this.lookup(tokenKey(this.opts.keyPrefix, token));
  }

  async lookupFlow(subflow: string): Promise<{ outcome: ReadOutcome; entry?: StoreEntry }> {
    return this.lookup(flowKey(this.opts.keyPrefix, subflow));
  }

  /** One entry by its key (tokenKey / flowKey). */
  async lookup(key: string): Promise<{ outcome: ReadOutcome; entry?: StoreEntry }> {
    if (!this.up) return { outcome: 'error' };
    this.counters.reads++;
    try {
      const d = decodeEntry(await this.redis.get(key));
      if (d === null) return { outcome: 'absent' };
      if (d === 'ambiguous') return { outcome: 'ambiguous' };
      if (d === 'invalid') { this.counters.invalidValues++; return { outcome: 'invalid' }; }
      return { outcome: 'found', entry: d };
    } catch {
      this.counters.readErrors++;
      return { outcome: 'error' };
    }
  }

  async close(): Promise<void> {
    this.closed = true;
    this.stateValue = 'down';
    try { await this.redis.quit(); } catch { this.redis.disconnect(); }
  }
}

/** One pipelined write; keys from tokenKey / flowKey. */
export type StoreWrite =
  | { op: 'set'; key: string; value: string; ttlMs: number }
  | { op: 'expire'; key: string; ttlMs: number }
  | { op: 'del'; key: string };

/** The `tokenStore` section of the config, validated (src/control/run-config.ts), password resolved. */
export interface TokenStoreConfig {
  url: string;
  keyPrefix: string;
  /** Resolved at start: MPLB_TOKEN_STORE_PASSWORD, else the first line of passwordFile, else none (or in the URL). */
  password?: string;
  passwordFile?: string;
  connectTimeoutMs: number;
  commandTimeoutMs: number;
  /** Longest a held join or subflow waits for the store before the unknown-token answer / the policy. */
  holdMs: number;
  /** Store lookups per held join within holdMs (a join can arrive just before its token is published). */
  holdTries: number;
  holdMaxPackets: number;
  holdMaxBytes: number;
  /** Lifetime of a live connection's entries, refreshed every third of it. */
  ttlMs: number;
}

export type PublishResult = 'ok' | 'collision' | 'error';
const PUB_SET = 1, PUB_SAME = 2, PUB_INVALID = 3;
const PUBLISH_LUA = `
local ttl, marker, n, out = ARGV[1], ARGV[2], #KEYS, {}
for i = 1, n do
  local k, v = KEYS[i], ARGV[i + 2]
  if redis.call('SET', k, v, 'PX', ttl, 'NX') then out[i] = ${PUB_SET}
  else
    local cur = redis.call('GET', k)
    if cur == v then redis.call('PEXPIRE', k, ttl); out[i] = ${PUB_SAME}
    else
      if cur ~= marker and string.sub(cur, 1, 3) ~= 'v1|' then out[i] = ${PUB_INVALID} else out[i] = 0 end
      redis.call('SET', k, marker, 'PX', ttl)
    end
  end
end
return out`;

/** Tries of a pipelined write batch (TokenStore.writeBatch). */
export const WRITE_TRIES = 3;

export const TOKEN_STORE_DEFAULTS: Omit<TokenStoreConfig, 'url'> = {
  keyPrefix: 'mplb:', connectTimeoutMs: 1000, commandTimeoutMs: 50, holdMs: 50, holdTries: 3,
  holdMaxPackets: 1024, holdMaxBytes: 1 << 20, ttlMs: 120_000,
};
