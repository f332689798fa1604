// A real redis-server for tests, on loopback, on a free port, stopped by PID. Under CI=true a missing redis-server
// is a failure (.ci/run installs it); elsewhere the caller skips.
import { spawn, spawnSync, type ChildProcess } from 'node:child_process';
import net from 'node:net';

export function redisAvailable(): string | undefined {
  const r = spawnSync('redis-server', ['--version'], { encoding: 'utf8' });
  return r.status === 0 ? undefined : 'redis-server is not installed (Debian package redis-server)';
}

async function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const s = net.createServer();
    s.once('error', reject);
    s.listen(0, '127.0.0.1', () => { const p = (s.address() as net.AddressInfo).port; s.close(() => resolve(p)); });
  });
}

export interface RedisProc { port: number; url: string; password?: string; stop(): Promise<void>; child: ChildProcess }

export async function startRedis(opts: { password?: string; port?: number } = {}): Promise<RedisProc> {
  const port = opts.port ?? await freePort();
  const args = ['--bind', '127.0.0.1', '--port', String(port), '--save', '', '--appendonly', 'no', '--protected-mode', 'no'];
  if (opts.password) args.push('--requirepass', opts.password);
  const child = spawn('redis-server', args, { stdio: ['ignore', 'pipe', 'pipe'] });
  let out = '';
  child.stdout!.on('data', (d: Buffer) => { out += d.toString(); });
  await new Promise<void>((resolve, reject) => {
    const t = setTimeout(() => reject(new Error(`redis-server did not start: ${out.slice(-500)}`)), 5000);
    const check = setInterval(() => {
      if (/Ready to accept connections/.test(out)) { clearTimeout(t); clearInterval(check); resolve(); }
    }, 20);
    child.once('exit', (code) => { clearTimeout(t); clearInterval(check); reject(new Error(`redis-server exited (${code}): ${out.slice(-500)}`)); });
  });
  const stop = async () => {
    if (child.exitCode !== null || child.signalCode !== null) return;
    const gone = new Promise((r) => child.once('exit', r));
    child.kill('SIGTERM');
    await gone;
  };
  process.once('exit', () => { if (child.exitCode === null) child.kill('SIGKILL'); });
  return { port, url: `redis://127.0.0.1:${port}`, password: opts.password, stop, child };
}
