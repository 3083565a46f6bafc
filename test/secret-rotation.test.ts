/**
 * A MySQL password rotated under a warm process (lib/wire/mysql-pool.ts,
 * lib/wire/secrets.ts' mysqlUrlReader): real MariaDB, a user of the test's
 * own whose password is changed as root, and the secret it is read from
 * (Secrets Manager, through the real AWS SDK against test/fake-aws.ts)
 * updated. The next query must succeed, having re-read the secret once.
 */
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { join } from 'node:path';
import { after, before, test } from 'node:test';
import { loadConfig } from '../lib/base/config.ts';
import { pino } from 'pino';
import { Runtime } from '../lib/runtime.ts';
import { awsSources, mysqlUrlReader, resolveSecrets } from '../lib/wire/secrets.ts';
import { fakeAws, type FakeAws } from './fake-aws.ts';

const SOCKET = join(process.env.OFFLOG_DATA_DIR ?? '.data/test', 'mysql', 'mysqld.sock');
const PORT = Number(new URL(process.env.OFFLOG_MYSQL_URL!).port);
const USER = `rot_${randomBytes(3).toString('hex')}`;
const SECRET_ID = `offlog/test/${USER}`;

/** As root through the server's own socket, as local/services.sh does. */
const root = (sql: string): string => execFileSync('mariadb', ['--no-defaults', `--socket=${SOCKET}`, '--user=root', '--batch', '--skip-column-names', '-e', sql], { encoding: 'utf8' });
const secretFor = (password: string): string => JSON.stringify({ username: USER, password, host: '127.0.0.1', port: PORT, dbname: 'offlog', engine: 'mysql' });
/** Ends every session of the user, as wait_timeout or a failover would: the next query needs a new connection. */
const dropSessions = (): void => {
  for (const id of root(`SELECT id FROM information_schema.processlist WHERE user = '${USER}'`).split('\n').filter(Boolean)) root(`KILL CONNECTION ${id}`);
};

let aws: FakeAws;
const secrets: Record<string, string> = { [SECRET_ID]: secretFor('first-password-1') };
const saved: Record<string, string | undefined> = {};
const runtimes: Runtime[] = [];

before(async () => {
  root(`CREATE USER '${USER}'@'127.0.0.1' IDENTIFIED BY 'first-password-1'; GRANT SELECT, INSERT, UPDATE, DELETE, CREATE, ALTER, INDEX, DROP ON offlog.* TO '${USER}'@'127.0.0.1'`);
  aws = await fakeAws({ secrets });
  for (const [k, v] of Object.entries(aws.env)) {
    saved[k] = process.env[k];
    process.env[k] = v;
  }
});
after(async () => {
  await Promise.all(runtimes.map((rt) => rt.close()));
  for (const [k, v] of Object.entries(saved)) {
    if (v === undefined) delete process.env[k];
    else process.env[k] = v;
  }
  await aws.close();
  root(`DROP USER IF EXISTS '${USER}'@'127.0.0.1'`);
});

/** A runtime built as handlers/runtime.ts builds one: the URL from the secret, and the secret's reader kept for a re-read. */
async function warmRuntime(lines: string[] = []): Promise<Runtime> {
  const env = { OFFLOG_MYSQL_URL_SECRET: SECRET_ID, OFFLOG_TABLE_PREFIX: `${USER}_`, ...aws.env };
  const config = loadConfig(await resolveSecrets(env, awsSources(env)));
  const rt = new Runtime(config, pino({ level: 'info' }, { write: (line: string) => lines.push(line) }), { mysqlUrl: mysqlUrlReader(env, awsSources(env)) });
  runtimes.push(rt);
  return rt;
}

const secretReads = (): number => aws.calls.filter((c) => c === `secretsmanager:${SECRET_ID}`).length;

test('the password rotated (server and secret): the next query re-reads the secret once and succeeds', async () => {
  const lines: string[] = [];
  const rt = await warmRuntime(lines);
  assert.equal(secretReads(), 1, 'read once at start');
  await rt.store.migrate();
  assert.equal(await rt.store.watermark(), null);

  root(`ALTER USER '${USER}'@'127.0.0.1' IDENTIFIED BY 'second-password-2'`);
  secrets[SECRET_ID] = secretFor('second-password-2');
  dropSessions();
  await new Promise((r) => setTimeout(r, 200)); // the pool sees its connections end

  assert.equal(await rt.store.watermark(), null, 'the next query succeeds');
  assert.equal(secretReads(), 2, 'the secret was read again, once');
  assert.equal(rt.store.passwordRotations, 1);
  assert.deepEqual(lines.map((l) => JSON.parse(l) as { level: number; msg: string }).filter((l) => /password/.test(l.msg)).map((l) => [l.level, l.msg]),
    [[40, 'MySQL refused the password; the re-read MySQL URL differs (a rotation): new connections use it']], 'said once, as a warning');
  // And the new pool is the one used from now on: a connection of its own, under the new password, works.
  dropSessions();
  await new Promise((r) => setTimeout(r, 200));
  const [rows] = await rt.store.pool.query<import('mysql2/promise').RowDataPacket[]>('SELECT CURRENT_USER() AS u');
  assert.equal(rows[0]!.u, `${USER}@127.0.0.1`);
  assert.equal(secretReads(), 2, 'no further read while the password holds');
});

test('a password the server refuses while the secret is unchanged: the refusal surfaces, and the secret is not read on every query', async () => {
  const lines: string[] = [];
  const rt = await warmRuntime(lines);
  await rt.store.watermark();
  const reads = secretReads();
  root(`ALTER USER '${USER}'@'127.0.0.1' IDENTIFIED BY 'third-password-3'`); // the secret still says second-password-2
  dropSessions();
  await new Promise((r) => setTimeout(r, 200));
  for (let i = 0; i < 3; i++) {
    await assert.rejects(rt.store.watermark(), (e: Error & { code?: string }) => e.code === 'ER_ACCESS_DENIED_ERROR' && e.message.includes(USER));
  }
  assert.equal(secretReads(), reads + 1, 'one re-read for three refusals (at most one per 10 s)');
  assert.equal(rt.store.passwordRotations, 0);
  assert.equal(lines.filter((l) => /the MySQL URL read again is unchanged: fix the secret or the user/.test(l)).length, 1, 'said once, as an error');
});
