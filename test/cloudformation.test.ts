/**
 * serverless.yml as a real account would get it: the CloudFormation template
 * that `osls package` writes, read back and checked setting by setting, for a
 * stage with a VPC (token in SSM, MySQL URL in Secrets Manager, 3 pollers)
 * and one without (JWT authorizer, MySQL URL in SSM, defaults). And the
 * stages that must not package: ingest open by accident, `local` deployed.
 */
import assert from 'node:assert/strict';
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, test } from 'node:test';
import { cleanEnv, oslsPackage, run } from './osls.ts';

type Resource = { Type: string; Properties: any };
type Template = { Resources: Record<string, Resource> };

const work = mkdtempSync(join(tmpdir(), 'offlog-cfn-'));
const SERVERS = { OFFLOG_GEARMAN_SERVERS: '10.0.1.10:4730,10.0.2.10:4730', OFFLOG_MEMCACHED_SERVERS: 'offlog.abc123.cfg.euw1.cache.amazonaws.com:11211' };
const WITH_VPC = {
  ...SERVERS,
  OFFLOG_VPC_SUBNET_IDS: 'subnet-0a1b2c3d, subnet-0e4f5a6b',
  OFFLOG_VPC_SECURITY_GROUP_IDS: 'sg-0123abcd',
  OFFLOG_INGEST_TOKEN_PARAMETER: '/offlog/prod/ingest-token',
  OFFLOG_MYSQL_URL_SECRET: 'offlog/prod/mysql',
  OFFLOG_MEMCACHED_TLS: 'true',
  OFFLOG_WORKER_POLLERS: '3',
  OFFLOG_HTTP_RATE_LIMIT: '50',
  OFFLOG_HTTP_BURST_LIMIT: '100',
};
const WITHOUT_VPC = {
  ...SERVERS,
  OFFLOG_INGEST_JWT_ISSUER: 'https://cognito-idp.eu-west-1.amazonaws.com/eu-west-1_AbCdEf',
  OFFLOG_INGEST_JWT_AUDIENCE: 'client-one,client-two',
  OFFLOG_MYSQL_URL_PARAMETER: '/offlog/staging/mysql-url',
};
let vpc: Template;
let noVpc: Template;

before(async () => {
  await oslsPackage(join(work, 'vpc'), WITH_VPC, 'prod');
  await oslsPackage(join(work, 'novpc'), WITHOUT_VPC, 'staging');
  const read = (dir: string) => JSON.parse(readFileSync(join(work, dir, 'cloudformation-template-update-stack.json'), 'utf8')) as Template;
  [vpc, noVpc] = [read('vpc'), read('novpc')];
});
after(() => rmSync(work, { recursive: true, force: true }));

const of = (t: Template, type: string) => Object.entries(t.Resources).filter(([, r]) => r.Type === type);
const fn = (t: Template, name: string) => t.Resources[`${name}LambdaFunction`]!.Properties;
const FUNCTIONS = ['Ingest', 'Worker', 'Flush'];

test('VPC: every function in the given subnets and security groups, with the ENI policy; no VpcConfig and no ENI policy without', () => {
  for (const name of FUNCTIONS) {
    assert.deepEqual(fn(vpc, name).VpcConfig, { SubnetIds: ['subnet-0a1b2c3d', 'subnet-0e4f5a6b'], SecurityGroupIds: ['sg-0123abcd'] }, name);
    assert.equal(fn(noVpc, name).VpcConfig, undefined, name);
  }
  const managed = (t: Template) => JSON.stringify(t.Resources.IamRoleLambdaExecution!.Properties.ManagedPolicyArns ?? []);
  assert.match(managed(vpc), /AWSLambdaVPCAccessExecutionRole/);
  assert.doesNotMatch(managed(noVpc), /AWSLambdaVPCAccessExecutionRole/);
});

test('IAM: its own log groups, putting events on its own bus, and reading exactly the named parameter or secret; nothing else', () => {
  const statements = (t: Template) => t.Resources.IamRoleLambdaExecution!.Properties.Policies[0].PolicyDocument.Statement as { Action: string[]; Resource: unknown[] }[];
  const sub = (s: string) => ({ 'Fn::Sub': s });
  const logs = (stage: string) => [
    { Effect: 'Allow', Action: ['logs:CreateLogStream', 'logs:CreateLogGroup', 'logs:TagResource'], Resource: [sub(`arn:\${AWS::Partition}:logs:\${AWS::Region}:\${AWS::AccountId}:log-group:/aws/lambda/offlog-${stage}*:*`)] },
    { Effect: 'Allow', Action: ['logs:PutLogEvents'], Resource: [sub(`arn:\${AWS::Partition}:logs:\${AWS::Region}:\${AWS::AccountId}:log-group:/aws/lambda/offlog-${stage}*:*:*`)] },
  ];
  const bus = (stage: string) => ({ Effect: 'Allow', Action: ['events:PutEvents'], Resource: [sub(`arn:\${AWS::Partition}:events:\${AWS::Region}:\${AWS::AccountId}:event-bus/offlog-${stage}`)] });
  assert.deepEqual(statements(vpc), [
    ...logs('prod'),
    bus('prod'),
    { Effect: 'Allow', Action: ['ssm:GetParameter'], Resource: [sub('arn:${AWS::Partition}:ssm:${AWS::Region}:${AWS::AccountId}:parameter/offlog/prod/ingest-token')] },
    { Effect: 'Allow', Action: ['secretsmanager:GetSecretValue'], Resource: [sub('arn:${AWS::Partition}:secretsmanager:${AWS::Region}:${AWS::AccountId}:secret:offlog/prod/mysql-??????')] },
  ]);
  assert.deepEqual(statements(noVpc), [
    ...logs('staging'),
    bus('staging'),
    { Effect: 'Allow', Action: ['ssm:GetParameter'], Resource: [sub('arn:${AWS::Partition}:ssm:${AWS::Region}:${AWS::AccountId}:parameter/offlog/staging/mysql-url')] },
  ]);
  assert.equal(of(vpc, 'AWS::IAM::Role').length, 1, 'one role');
});

test('concurrency: the flush reserved at 1; the worker at its number of pollers, each a schedule every minute', () => {
  assert.equal(fn(vpc, 'Flush').ReservedConcurrentExecutions, 1);
  assert.equal(fn(noVpc, 'Flush').ReservedConcurrentExecutions, 1);
  const pollers = (t: Template) =>
    of(t, 'AWS::Events::Rule')
      .filter(([, r]) => r.Properties.Targets[0].Arn['Fn::GetAtt'][0] === 'WorkerLambdaFunction')
      .map(([, r]) => [r.Properties.ScheduleExpression, JSON.parse(r.Properties.Targets[0].Input)]);
  assert.deepEqual(pollers(vpc), [1, 2, 3].map((poller) => ['rate(1 minute)', { poller }]));
  assert.equal(fn(vpc, 'Worker').ReservedConcurrentExecutions, 3);
  assert.deepEqual(pollers(noVpc), [['rate(1 minute)', { poller: 1 }]]);
  assert.equal(fn(noVpc, 'Worker').ReservedConcurrentExecutions, 1);
  assert.equal(fn(vpc, 'Ingest').ReservedConcurrentExecutions, undefined, 'ingest scales with traffic (throttled at the API)');
  const flushRule = of(vpc, 'AWS::Events::Rule').find(([, r]) => r.Properties.Targets[0].Arn['Fn::GetAtt'][0] === 'FlushLambdaFunction')!;
  assert.equal(flushRule[1].Properties.ScheduleExpression, 'rate(10 minutes)');
});

test('ingest: token from SSM (no authorizer) or a JWT authorizer; throttled at the API stage', () => {
  const route = (t: Template) => t.Resources.HttpApiRoutePostEvents!.Properties;
  assert.equal(route(vpc).AuthorizationType, undefined);
  assert.equal(fn(vpc, 'Ingest').Environment.Variables.OFFLOG_INGEST_TOKEN_PARAMETER, '/offlog/prod/ingest-token');
  assert.equal(fn(vpc, 'Ingest').Environment.Variables.OFFLOG_INGEST_TOKEN, '', 'no token in the template');
  assert.equal(fn(vpc, 'Worker').Environment.Variables.OFFLOG_INGEST_TOKEN_PARAMETER, undefined, 'only ingest is told where the token is');
  assert.equal(route(noVpc).AuthorizationType, 'JWT');
  const [[, authorizer]] = of(noVpc, 'AWS::ApiGatewayV2::Authorizer') as [[string, Resource]];
  assert.deepEqual(authorizer.Properties.JwtConfiguration, { Audience: ['client-one', 'client-two'], Issuer: 'https://cognito-idp.eu-west-1.amazonaws.com/eu-west-1_AbCdEf' });
  assert.deepEqual(vpc.Resources.HttpApiStage!.Properties.DefaultRouteSettings, { ThrottlingRateLimit: 50, ThrottlingBurstLimit: 100 });
  assert.deepEqual(noVpc.Resources.HttpApiStage!.Properties.DefaultRouteSettings, { ThrottlingRateLimit: 200, ThrottlingBurstLimit: 400 });
});

test('secrets: the MySQL URL is named, never written into the template', () => {
  for (const name of FUNCTIONS) {
    const v = fn(vpc, name).Environment.Variables;
    assert.equal(v.OFFLOG_MYSQL_URL, '');
    assert.equal(v.OFFLOG_MYSQL_URL_SECRET, 'offlog/prod/mysql');
    assert.equal(fn(noVpc, name).Environment.Variables.OFFLOG_MYSQL_URL_PARAMETER, '/offlog/staging/mysql-url');
    assert.equal(v.NODE_OPTIONS, '--enable-source-maps');
    assert.equal(v.OFFLOG_MEMCACHED_TLS, 'true', 'memcached over TLS when asked');
    assert.equal(fn(noVpc, name).Environment.Variables.OFFLOG_MEMCACHED_TLS, 'false');
  }
  assert.doesNotMatch(JSON.stringify(vpc), /mysql:\/\//);
});

test('names and logs per stage: offlog-<stage>-<function>, log groups kept 30 days in prod and 7 elsewhere', () => {
  for (const [t, stage, days] of [[vpc, 'prod', 30], [noVpc, 'staging', 7]] as const) {
    for (const name of FUNCTIONS) {
      assert.equal(fn(t, name).FunctionName, `offlog-${stage}-${name.toLowerCase()}`);
      const group = t.Resources[`${name}LogGroup`]!.Properties;
      assert.deepEqual([group.LogGroupName, group.RetentionInDays], [`/aws/lambda/offlog-${stage}-${name.toLowerCase()}`, days]);
    }
    assert.equal(t.Resources.HttpApi!.Properties.Name, `${stage}-offlog`);
  }
});

test('a deployed stage that would leave ingest open, or point at loopback servers, does not package; the message says how to opt out', async () => {
  const r = await run('node_modules/.bin/osls', ['package', '--stage', 'prod', '--package', join(work, 'refused')], { env: cleanEnv() });
  assert.notEqual(r.code, 0);
  const out = r.stdout + r.stderr;
  assert.match(out, /stage "prod" is not ready to package/);
  assert.match(out, /POST \/events of stage "prod" would be open to anyone\. Set OFFLOG_INGEST_TOKEN_PARAMETER .* or OFFLOG_INGEST_OPEN=true to deploy it open on purpose/);
  assert.match(out, /OFFLOG_GEARMAN_SERVERS is not set/);
  assert.match(out, /no MySQL URL/);

  const plain = await run('node_modules/.bin/osls', ['package', '--stage', 'prod', '--package', join(work, 'plain')], {
    env: cleanEnv({ ...SERVERS, OFFLOG_MYSQL_URL_PARAMETER: '/x', OFFLOG_INGEST_TOKEN: 'a-token-in-plain-text-000' }),
  });
  assert.notEqual(plain.code, 0);
  assert.match(plain.stdout + plain.stderr, /OFFLOG_INGEST_TOKEN would put the ingest token in the template in plain text/);

  const local = await run('node_modules/.bin/osls', ['deploy'], { env: cleanEnv() });
  assert.notEqual(local.code, 0);
  assert.match(local.stdout + local.stderr, /stage "local" is the local emulation's and is not deployed/);
});
