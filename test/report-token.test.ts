/**
 * A deployed report API is closed by its token kept in SSM
 * (OFFLOG_REPORT_TOKEN_PARAMETER): read at cold start through the real SSM
 * client (against the local stand-in), and then every /api read needs it.
 */
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { handleReport } from '../lib/report/api.ts';
import { awsSources, resolveSecrets } from '../lib/wire/secrets.ts';
import { fakeAwsInEnv } from './fake-aws.ts';
import { testRuntime } from './support.ts';

const TOKEN = 'report-token-from-ssm-0123';
const aws = fakeAwsInEnv({ parameters: { '/offlog/prod/report-token': TOKEN } });

test('the report token comes from the SSM parameter named; /api answers 401 without it and 200 with it', async () => {
  const env = await resolveSecrets({ OFFLOG_REPORT_TOKEN_PARAMETER: '/offlog/prod/report-token', OFFLOG_REPORT_TOKEN: 'a-plain-value-loses-0000' }, awsSources(aws().env));
  assert.equal(env.OFFLOG_REPORT_TOKEN, TOKEN, 'the parameter wins over a plain value');
  assert.deepEqual(aws().calls, ['ssm:/offlog/prod/report-token']);

  const rt = testRuntime({ OFFLOG_REPORT_TOKEN: env.OFFLOG_REPORT_TOKEN! });
  try {
    await rt.store.migrate();
    const read = (headers: Record<string, string>) => handleReport({ method: 'GET', path: '/api/actions', query: {}, headers }, rt.reportDeps);
    assert.equal((await read({})).statusCode, 401);
    assert.equal((await read({ authorization: 'Bearer a-plain-value-loses-0000' })).statusCode, 401);
    assert.equal((await read({ authorization: `Bearer ${TOKEN}` })).statusCode, 200);
  } finally {
    await rt.close();
  }
});

test('a parameter name that is not one is refused, naming the variable', async () => {
  await assert.rejects(resolveSecrets({ OFFLOG_REPORT_TOKEN_PARAMETER: 'no spaces allowed' }, awsSources(aws().env)), /OFFLOG_REPORT_TOKEN_PARAMETER: "no spaces allowed" is not an SSM parameter name/);
});
