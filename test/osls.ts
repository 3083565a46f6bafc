/** Runs the real `osls` CLI of this repo, as a user would: `osls package`, `osls invoke local`. */
import { spawn } from 'node:child_process';
import { fileURLToPath } from 'node:url';

export const REPO = fileURLToPath(new URL('..', import.meta.url));

export interface Run { code: number | null; stdout: string; stderr: string; ms: number }

/** Runs a command to its end (or kills it after `timeoutMs`) and collects its output. */
export function run(cmd: string, args: string[], options: { cwd?: string; env?: Record<string, string | undefined>; input?: string; timeoutMs?: number } = {}): Promise<Run> {
  const started = Date.now();
  return new Promise((resolve, reject) => {
    const child = spawn(cmd, args, { cwd: options.cwd ?? REPO, env: options.env ?? process.env, stdio: ['pipe', 'pipe', 'pipe'] });
    let stdout = '';
    let stderr = '';
    child.stdout.on('data', (c: Buffer) => (stdout += c.toString()));
    child.stderr.on('data', (c: Buffer) => (stderr += c.toString()));
    const timer = setTimeout(() => child.kill('SIGKILL'), options.timeoutMs ?? 120_000);
    child.on('error', reject);
    child.on('close', (code) => {
      clearTimeout(timer);
      resolve({ code, stdout, stderr, ms: Date.now() - started });
    });
    // A child that exits before reading its input (`unshare -n true`) closes the pipe: EPIPE then is no failure.
    child.stdin.on('error', () => undefined);
    child.stdin.end(options.input ?? '');
  });
}

/** The environment without any OFFLOG_* of the caller's: each run names exactly the settings it packages with. */
export function cleanEnv(extra: Record<string, string> = {}): Record<string, string | undefined> {
  const env = Object.fromEntries(Object.entries(process.env).filter(([k]) => !k.startsWith('OFFLOG_')));
  return { ...env, ...extra };
}

let isolated: Promise<boolean> | undefined;
/** Whether this machine can run a command in a network namespace of its own (root on Linux can): no network at all. */
const canIsolate = (): Promise<boolean> => (isolated ??= run('unshare', ['-n', 'true']).then((r) => r.code === 0, () => false));

/**
 * `osls package --package <dir>`: the zips and the CloudFormation template
 * land in `dir`. Run without network where the machine allows it, and never
 * with AWS credentials: packaging must need neither. Throws with the output
 * when it fails.
 */
export async function oslsPackage(dir: string, env: Record<string, string> = {}, stage?: string): Promise<Run> {
  const args = ['package', '--package', dir, ...(stage ? ['--stage', stage] : [])];
  const noAws = { AWS_ACCESS_KEY_ID: undefined, AWS_SECRET_ACCESS_KEY: undefined, AWS_SESSION_TOKEN: undefined, AWS_PROFILE: undefined };
  const [cmd, argv] = (await canIsolate()) ? ['unshare', ['-n', 'node_modules/.bin/osls', ...args]] : ['node_modules/.bin/osls', args];
  const r = await run(cmd, argv, { env: { ...cleanEnv(env), ...noAws } });
  if (r.code !== 0) throw new Error(`osls ${args.join(' ')} exited ${r.code}:\n${r.stdout}\n${r.stderr}`);
  return r;
}
