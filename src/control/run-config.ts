// The `mplb run` config file (YAML): the engine's settings plus the device. Refused with the field path and reason.
import { readFileSync } from 'node:fs';
import { parse as parseYaml, YAMLParseError } from 'yaml';
import { ConfigError, validateEngineConfig, type EngineConfig } from '../engine/config.js';

export interface DeviceConfig {
  /** TUN interface name (max 15 characters). Default "mplb0". */
  name: string;
  /** TUN MTU. Default 1500. */
  mtu: number;
}

export interface RunConfig { device: DeviceConfig; engine: EngineConfig }

export const DEVICE_DEFAULTS: DeviceConfig = { name: 'mplb0', mtu: 1500 };

const ENGINE_KEYS = ['vips', 'policy', 'mptcpAware', 'unknownTokenAnswer', 'tables', 'timeouts', 'hashSeed'];

export function validateRunConfig(doc: unknown): RunConfig {
  if (typeof doc !== 'object' || doc === null || Array.isArray(doc)) throw new ConfigError('(root)', 'must be a mapping with at least "vips"');
  const d = doc as Record<string, unknown>;
  for (const k of Object.keys(d)) {
    if (k !== 'device' && !ENGINE_KEYS.includes(k)) throw new ConfigError(k, `unknown field (allowed: device, ${ENGINE_KEYS.join(', ')})`);
  }
  const dev = (d.device ?? {}) as Record<string, unknown>;
  if (typeof dev !== 'object' || Array.isArray(dev)) throw new ConfigError('device', 'must be a mapping');
  for (const k of Object.keys(dev)) if (k !== 'name' && k !== 'mtu') throw new ConfigError(`device.${k}`, 'unknown field (allowed: name, mtu)');
  const name = dev.name ?? DEVICE_DEFAULTS.name;
  if (typeof name !== 'string' || !/^[A-Za-z0-9_.-]{1,15}$/.test(name)) throw new ConfigError('device.name', `must be an interface name of 1-15 letters, digits, '_', '.', '-', got ${JSON.stringify(name)}`);
  const mtu = dev.mtu ?? DEVICE_DEFAULTS.mtu;
  if (typeof mtu !== 'number' || !Number.isInteger(mtu) || mtu < 576 || mtu > 65535) throw new ConfigError('device.mtu', `must be an integer 576-65535, got ${JSON.stringify(mtu)}`);
  const engineDoc = Object.fromEntries(Object.entries(d).filter(([k]) => k !== 'device'));
  return { device: { name, mtu }, engine: validateEngineConfig(engineDoc) };
}

/** Reads and validates a YAML config file; YAML syntax errors name the line and column. */
export function loadRunConfig(file: string): RunConfig {
  let text: string;
  try { text = readFileSync(file, 'utf8'); } catch (e) { throw new ConfigError(file, `cannot read: ${(e as Error).message}`); }
  let doc: unknown;
  try { doc = parseYaml(text); } catch (e) {
    if (e instanceof YAMLParseError) throw new ConfigError(file, `YAML syntax: ${e.message.split('\n')[0]}`);
    throw e;
  }
  return validateRunConfig(doc);
}
