/**
 * Secrets at cold start (lib/wire/secrets.ts): the MySQL URL from SSM or
 * Secrets Manager, the ingest token from SSM, through the real AWS SDK
 * clients against a local stand-in of the two APIs.
 */
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { ConfigError } from '../lib/base/errors.ts';
import { awsSources, mysqlUrlFromSecret, resolveSecrets } from '../lib/wire/secrets.ts';
import { fakeAwsInEnv } from './fake-aws.ts';

const URL_IN_SSM = 'mysql://flush:s3cret@db.internal:3306/offlog';
const aws = fakeAwsInEnv({
    parameters: { '/offlog/prod/mysql-url': URL_IN_SSM, '/offlog/prod/ingest-token': 'token-from-ssm-0123456789' },
    secrets: { 'offlog/prod/mysql': JSON.stringify({ username: 'flush', password: 'p@ss:/word', host: 'db.internal', port: 3307, dbname: 'offlog', engine: 'mysql' }) },
  });

test('nothing named: the environment is returned as it is, and AWS is not asked', async () => {
  const env = { OFFLOG_MYSQL_URL: 'mysql://a:b@h/db', OFFLOG_MYSQL_URL_PARAMETER: '' };
  const before = aws().calls.length;
  assert.deepEqual(await resolveSecrets(env, awsSources(aws().env)), env);
  assert.equal(aws().calls.length, before);
});

test('the MySQL URL from an SSM parameter and the ingest token from another win over plain values', async () => {
  const env = await resolveSecrets(
    { OFFLOG_MYSQL_URL: 'mysql://local:local@127.0.0.1/offlog', OFFLOG_MYSQL_URL_PARAMETER: '/offlog/prod/mysql-url', OFFLOG_INGEST_TOKEN_PARAMETER: '/offlog/prod/ingest-token' },
    awsSources(aws().env),
  );
  assert.equal(env.OFFLOG_MYSQL_URL, URL_IN_SSM);
  assert.equal(env.OFFLOG_INGEST_TOKEN, 'token-from-ssm-0123456789');
  assert.ok(aws().calls.includes('ssm:/offlog/prod/mysql-url') && aws().calls.includes('ssm:/offlog/prod/ingest-token'));
});

test('a Secrets Manager secret in the RDS JSON shape becomes a URL with the password escaped', async () => {
  const env = await resolveSecrets({ OFFLOG_MYSQL_URL_SECRET: 'offlog/prod/mysql' }, awsSources(aws().env));
  assert.equal(env.OFFLOG_MYSQL_URL, 'mysql://flush:p%40ss%3A%2Fword@db.internal:3307/offlog');
  assert.equal(mysqlUrlFromSecret('mysql://u:p@h:1/d'), 'mysql://u:p@h:1/d', 'a plain URL is taken as it is');
  assert.equal(
    mysqlUrlFromSecret(JSON.stringify({ username: 'u', password: 'p', host: 'db.c1a2b3.eu-west-1.rds.amazonaws.com', dbname: 'offlog' })),
    'mysql://u:p@db.c1a2b3.eu-west-1.rds.amazonaws.com:3306/offlog?ssl=Amazon%20RDS',
    'an RDS host gets TLS against the RDS certificate authorities',
  );
  assert.equal(mysqlUrlFromSecret('{"url":"mysql://u:p@h:1/d"}'), 'mysql://u:p@h:1/d');
  assert.throws(() => mysqlUrlFromSecret('{"username":"u","password":"p","host":"h"}'), /the secret's JSON has no "dbname"/);
});

test('a missing parameter, two MySQL sources, or a malformed name: a ConfigError naming the variable', async () => {
  await assert.rejects(resolveSecrets({ OFFLOG_MYSQL_URL_PARAMETER: '/offlog/nope' }, awsSources(aws().env)), (e: Error) =>
    e instanceof ConfigError && /^OFFLOG_MYSQL_URL_PARAMETER: cannot read "\/offlog\/nope": no parameter \/offlog\/nope/.test(e.message));
  await assert.rejects(resolveSecrets({ OFFLOG_MYSQL_URL_PARAMETER: '/a', OFFLOG_MYSQL_URL_SECRET: 'b' }), /both set/);
  await assert.rejects(resolveSecrets({ OFFLOG_INGEST_TOKEN_PARAMETER: 'has space' }), /^ConfigError: OFFLOG_INGEST_TOKEN_PARAMETER: "has space" is not/);
});
