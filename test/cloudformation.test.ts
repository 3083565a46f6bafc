/**
 * serverless.yml as a real account would get it: the CloudFormation template
 * that `osls package` writes, read back and checked setting by setting, for a
 * stage with a VPC (tokens in SSM, MySQL URL in Secrets Manager, 3 pollers,
 * the VPC endpoints, an alarm topic) and one without (JWT authorizers, MySQL
 * URL in SSM, no reserved concurrency, x86_64, hour slices, a bigger flush).
 * And the stages that must not package: ingest or reports open by accident,
 * tokens in plain text, `local` deployed.
 */
import assert from 'node:assert/strict';
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, test } from 'node:test';
import { cleanEnv, oslsPackage, REPO, run } from './osls.ts';

type Resource = { Type: string; Properties: any; DependsOn?: string[] };
type Template = { Resources: Record<string, Resource> };

const work = mkdtempSync(join(tmpdir(), 'offlog-cfn-'));
const SERVERS = { OFFLOG_GEARMAN_SERVERS: '10.0.1.10:4730,10.0.2.10:4730', OFFLOG_MEMCACHED_SERVERS: 'offlog.abc123.cfg.euw1.cache.amazonaws.com:11211' };
const WITH_VPC = {
  ...SERVERS,
  OFFLOG_VPC_SUBNET_IDS: 'subnet-0a1b2c3d, subnet-0e4f5a6b',
  OFFLOG_VPC_SECURITY_GROUP_IDS: 'sg-0123abcd',
  OFFLOG_INGEST_TOKEN_PARAMETER: '/offlog/prod/ingest-token',
  OFFLOG_REPORT_TOKEN_PARAMETER: '/offlog/prod/report-token',
  OFFLOG_MYSQL_URL_SECRET: 'offlog/prod/mysql',
  OFFLOG_MEMCACHED_TLS: 'true',
  OFFLOG_WORKER_POLLERS: '3',
  OFFLOG_HTTP_RATE_LIMIT: '50',
  OFFLOG_HTTP_BURST_LIMIT: '100',
  OFFLOG_VPC_ID: 'vpc-0fedcba9',
  OFFLOG_VPC_ENDPOINTS: 'auto',
  OFFLOG_ALARM_TOPIC_ARN: 'arn:aws:sns:eu-west-1:123456789012:offlog-alarms',
};
const REPORT_ISSUER = 'https://login.example.com/realms/offlog';
const WITHOUT_VPC = {
  ...SERVERS,
  OFFLOG_INGEST_JWT_ISSUER: 'https://cognito-idp.eu-west-1.amazonaws.com/eu-west-1_AbCdEf',
  OFFLOG_INGEST_JWT_AUDIENCE: 'client-one,client-two',
  OFFLOG_REPORT_JWT_ISSUER: REPORT_ISSUER,
  OFFLOG_REPORT_JWT_AUDIENCE: 'dashboard',
  OFFLOG_MYSQL_URL_PARAMETER: '/offlog/staging/mysql-url',
  OFFLOG_RESERVED_CONCURRENCY: 'false',
  OFFLOG_ARCHITECTURE: 'x86_64',
  OFFLOG_SLICE_SECONDS: '3600',
  OFFLOG_FLUSH_OFFSET_MINUTES: '2',
  OFFLOG_FLUSH_MEMORY_MB: '2048',
  OFFLOG_FLUSH_TIMEOUT_SECONDS: '600',
  // `offlog worker` and `offlog watched` run as services elsewhere.
  OFFLOG_WORKER_POLLERS: '0',
  OFFLOG_WATCHED_POLLERS: '0',
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
const ALL = ['Ingest', 'Worker', 'Flush', 'Watched', 'Rollup', 'Report', 'Prune'];
const sub = (s: string) => ({ 'Fn::Sub': s });
const getAtt = (id: string, attr = 'Arn') => ({ 'Fn::GetAtt': [id, attr] });

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
  const logs = (stage: string) => [
    { Effect: 'Allow', Action: ['logs:CreateLogStream', 'logs:CreateLogGroup', 'logs:TagResource'], Resource: [sub(`arn:\${AWS::Partition}:logs:\${AWS::Region}:\${AWS::AccountId}:log-group:/aws/lambda/offlog-${stage}*:*`)] },
    { Effect: 'Allow', Action: ['logs:PutLogEvents'], Resource: [sub(`arn:\${AWS::Partition}:logs:\${AWS::Region}:\${AWS::AccountId}:log-group:/aws/lambda/offlog-${stage}*:*:*`)] },
  ];
  const bus = (stage: string) => ({ Effect: 'Allow', Action: ['events:PutEvents'], Resource: [sub(`arn:\${AWS::Partition}:events:\${AWS::Region}:\${AWS::AccountId}:event-bus/offlog-${stage}`)] });
  // Lambda itself sends a rollup that failed every attempt to the queue, with the function's role.
  const failures = { Effect: 'Allow', Action: 'sqs:SendMessage', Resource: getAtt('OffLogRollupFailures') };
  assert.deepEqual(statements(vpc), [
    ...logs('prod'),
    bus('prod'),
    {
      Effect: 'Allow', Action: ['ssm:GetParameter'],
      Resource: ['ingest-token', 'report-token'].map((p) => sub(`arn:\${AWS::Partition}:ssm:\${AWS::Region}:\${AWS::AccountId}:parameter/offlog/prod/${p}`)),
    },
    { Effect: 'Allow', Action: ['secretsmanager:GetSecretValue'], Resource: [sub('arn:${AWS::Partition}:secretsmanager:${AWS::Region}:${AWS::AccountId}:secret:offlog/prod/mysql-??????')] },
    failures,
  ]);
  assert.deepEqual(statements(noVpc), [
    ...logs('staging'),
    bus('staging'),
    { Effect: 'Allow', Action: ['ssm:GetParameter'], Resource: [sub('arn:${AWS::Partition}:ssm:${AWS::Region}:${AWS::AccountId}:parameter/offlog/staging/mysql-url')] },
    failures,
  ]);
  const assumedBy = (t: Template) => t.Resources.IamRoleLambdaExecution!.Properties.AssumeRolePolicyDocument.Statement.flatMap((st: { Principal: { Service: string[] } }) => st.Principal.Service);
  assert.deepEqual(assumedBy(vpc), ['lambda.amazonaws.com'], 'the functions\' role is theirs alone (the schedules have their own)');
  assert.equal(of(vpc, 'AWS::IAM::Role').length, 2, 'the functions\' role and the schedules\'');
});

test('runtime: Node 24 (the major the package promises), arm64 unless x86_64 is asked for; esbuild targets the same Node', () => {
  const engines = (JSON.parse(readFileSync(join(REPO, 'package.json'), 'utf8')) as { engines: { node: string } }).engines.node;
  const major = /^>=(\d+)$/.exec(engines)![1];
  for (const name of ALL) {
    assert.equal(fn(vpc, name).Runtime, `nodejs${major}.x`, name);
    assert.deepEqual(fn(vpc, name).Architectures, ['arm64'], name);
    assert.deepEqual(fn(noVpc, name).Architectures, ['x86_64'], name);
  }
  assert.match(readFileSync(join(REPO, 'serverless.yml'), 'utf8'), new RegExp(`^    target: node${major}$`, 'm'));
});

test('concurrency: reserved for the flush (1), the worker (its pollers), the rollup (2) and the report (5); none at all when reservations are off', () => {
  const reservedOf = (t: Template) => Object.fromEntries(ALL.map((name) => [name, fn(t, name).ReservedConcurrentExecutions]));
  assert.deepEqual(reservedOf(vpc), { Ingest: undefined, Worker: 3, Flush: 1, Watched: undefined, Rollup: 2, Report: 5, Prune: undefined });
  assert.deepEqual(reservedOf(noVpc), Object.fromEntries(ALL.map((name) => [name, undefined])), 'OFFLOG_RESERVED_CONCURRENCY=false: an account with a low quota can deploy');
  // The report reads keep a throttle of their own whatever the reservations.
  for (const t of [vpc, noVpc]) assert.deepEqual(t.Resources.HttpApiStage!.Properties.RouteSettings, { 'GET /api/{report}': { ThrottlingRateLimit: 20, ThrottlingBurstLimit: 40 } });
  assert.deepEqual(vpc.Resources.HttpApiStage!.DependsOn, ['HttpApiRouteGetApiReportVar'], 'route settings need their route');
});

test('schedules: EventBridge Scheduler, the flush on a cron aligned to the slices given its scheduled time as now; pollers never retried', () => {
  const schedules = (t: Template) => Object.fromEntries(of(t, 'AWS::Scheduler::Schedule').map(([, r]) => {
    const p = r.Properties;
    assert.deepEqual([p.FlexibleTimeWindow, p.ScheduleExpressionTimezone, p.State, p.Target.RoleArn], [{ Mode: 'OFF' }, 'UTC', 'ENABLED', getAtt('OffLogSchedulerRole')]);
    return [p.Name, [p.ScheduleExpression, p.Target.Arn['Fn::GetAtt'][0], JSON.parse(p.Target.Input), p.Target.RetryPolicy]];
  }));
  const poller = { MaximumRetryAttempts: 0, MaximumEventAgeInSeconds: 60 };
  const now = '<aws.scheduler.scheduled-time>';
  assert.deepEqual(schedules(vpc), {
    'offlog-prod-worker-1': ['rate(1 minute)', 'WorkerLambdaFunction', { poller: 1 }, poller],
    'offlog-prod-worker-2': ['rate(1 minute)', 'WorkerLambdaFunction', { poller: 2 }, poller],
    'offlog-prod-worker-3': ['rate(1 minute)', 'WorkerLambdaFunction', { poller: 3 }, poller],
    'offlog-prod-watched': ['rate(1 minute)', 'WatchedLambdaFunction', {}, poller],
    // 10-minute slices: one minute past each boundary (00:01, 00:11, …).
    'offlog-prod-flush': ['cron(1/10 * * * ? *)', 'FlushLambdaFunction', { now }, { MaximumRetryAttempts: 2, MaximumEventAgeInSeconds: 300 }],
    'offlog-prod-prune': ['rate(1 hour)', 'PruneLambdaFunction', { now }, { MaximumRetryAttempts: 0, MaximumEventAgeInSeconds: 300 }],
  });
  assert.equal(schedules(noVpc)['offlog-staging-flush']![0], 'cron(2 * * * ? *)', 'hour slices, offset 2 minutes');
  assert.deepEqual(Object.keys(schedules(noVpc)), ['offlog-staging-flush', 'offlog-staging-prune'], 'no pollers: the worker and the watched drain run as services');
  assert.deepEqual(noVpc.Resources.OffLogSchedulerRole!.Properties.Policies[0].PolicyDocument.Statement[0].Resource, [getAtt('FlushLambdaFunction'), getAtt('PruneLambdaFunction')]);
  // No schedule left on EventBridge rules: the only rule is the rollup's subscription.
  assert.deepEqual(of(vpc, 'AWS::Events::Rule').map(([, r]) => r.Properties.Targets[0].Arn['Fn::GetAtt'][0]), ['RollupLambdaFunction']);

  const role = vpc.Resources.OffLogSchedulerRole!.Properties;
  assert.deepEqual(role.AssumeRolePolicyDocument.Statement, [
    { Effect: 'Allow', Principal: { Service: 'scheduler.amazonaws.com' }, Action: 'sts:AssumeRole', Condition: { StringEquals: { 'aws:SourceAccount': { Ref: 'AWS::AccountId' } } } },
  ]);
  assert.deepEqual(role.Policies[0].PolicyDocument.Statement, [
    { Effect: 'Allow', Action: 'lambda:InvokeFunction', Resource: ['Worker', 'Watched', 'Flush', 'Prune'].map((n) => getAtt(`${n}LambdaFunction`)) },
  ]);
});

test('async invocations: pollers and prune never retried, the flush twice within 5 minutes, the rollup twice and then to its failure queue', () => {
  const config = (t: Template, name: string) => {
    const p = t.Resources[`${name}LambdaEvConf`]!.Properties;
    return [p.MaximumRetryAttempts, p.MaximumEventAgeInSeconds, p.DestinationConfig];
  };
  assert.deepEqual(config(vpc, 'Worker'), [0, 60, {}]);
  assert.deepEqual(config(vpc, 'Watched'), [0, 60, {}]);
  assert.deepEqual(config(vpc, 'Prune'), [0, 300, {}]);
  assert.deepEqual(config(vpc, 'Flush'), [2, 300, {}]);
  assert.deepEqual(config(vpc, 'Rollup'), [2, 21600, { OnFailure: { Destination: getAtt('OffLogRollupFailures') } }]);
  assert.deepEqual(vpc.Resources.OffLogRollupFailures!.Properties, { QueueName: 'offlog-prod-rollup-failures', MessageRetentionPeriod: 1209600, SqsManagedSseEnabled: true });
});

test('alarms: publishes that keep failing (OffLog/PublishFailures, two flushes in a row) and a rollup in the failure queue, to the topic given', () => {
  const alarm = (t: Template, id: string) => t.Resources[id]!.Properties;
  const publish = alarm(vpc, 'OffLogPublishFailuresAlarm');
  // The metric lib/base/metrics.ts emits once per flush: no dimensions, so one period per slice.
  assert.deepEqual(
    [publish.Namespace, publish.MetricName, publish.Dimensions, publish.Statistic, publish.Period, publish.EvaluationPeriods, publish.DatapointsToAlarm, publish.Threshold, publish.ComparisonOperator, publish.TreatMissingData],
    ['OffLog', 'PublishFailures', undefined, 'Sum', 600, 2, 2, 0, 'GreaterThanThreshold', 'notBreaching'],
  );
  assert.deepEqual([alarm(noVpc, 'OffLogPublishFailuresAlarm').Period, alarm(noVpc, 'OffLogPublishFailuresAlarm').EvaluationPeriods], [3600, 2], 'hour slices');
  assert.deepEqual(publish.AlarmActions, ['arn:aws:sns:eu-west-1:123456789012:offlog-alarms']);
  const dlq = alarm(vpc, 'OffLogRollupFailuresAlarm');
  assert.deepEqual([dlq.Namespace, dlq.MetricName, dlq.Dimensions, dlq.Threshold], ['AWS/SQS', 'ApproximateNumberOfMessagesVisible', [{ Name: 'QueueName', Value: getAtt('OffLogRollupFailures', 'QueueName') }], 0]);
  assert.equal(alarm(noVpc, 'OffLogPublishFailuresAlarm').AlarmActions, undefined, 'no topic: the alarm shows in the console only');
});

test('VPC endpoints (OFFLOG_VPC_ENDPOINTS=auto): events always, ssm and secretsmanager as named, in the subnets, open on 443 to the functions only', () => {
  const endpoints = of(vpc, 'AWS::EC2::VPCEndpoint').map(([, r]) => r.Properties);
  assert.deepEqual(endpoints.map((p) => p.ServiceName), ['events', 'ssm', 'secretsmanager'].map((x) => sub(`com.amazonaws.\${AWS::Region}.${x}`)));
  for (const p of endpoints) {
    assert.deepEqual([p.VpcEndpointType, p.VpcId, p.SubnetIds, p.SecurityGroupIds, p.PrivateDnsEnabled], ['Interface', 'vpc-0fedcba9', ['subnet-0a1b2c3d', 'subnet-0e4f5a6b'], [{ Ref: 'OffLogEndpointSecurityGroup' }], true]);
  }
  assert.deepEqual(vpc.Resources.OffLogEndpointSecurityGroup!.Properties.SecurityGroupIngress, [{ IpProtocol: 'tcp', FromPort: 443, ToPort: 443, SourceSecurityGroupId: 'sg-0123abcd' }]);
  assert.deepEqual(of(noVpc, 'AWS::EC2::VPCEndpoint'), []);
});

test('the flush: 1024 MB and 300 s by default, OFFLOG_FLUSH_MEMORY_MB and OFFLOG_FLUSH_TIMEOUT_SECONDS otherwise', () => {
  assert.deepEqual([fn(vpc, 'Flush').MemorySize, fn(vpc, 'Flush').Timeout], [1024, 300]);
  assert.deepEqual([fn(noVpc, 'Flush').MemorySize, fn(noVpc, 'Flush').Timeout], [2048, 600]);
  assert.deepEqual([fn(vpc, 'Worker').MemorySize, fn(vpc, 'Report').MemorySize], [512, 256], 'the others keep theirs');
});

test('reports: token from SSM (named to the report function only) or a JWT authorizer on the reads; the page itself needs neither', () => {
  const route = (t: Template, id: string) => t.Resources[id]!.Properties;
  const report = fn(vpc, 'Report').Environment.Variables;
  assert.deepEqual([report.OFFLOG_REPORT_TOKEN, report.OFFLOG_REPORT_TOKEN_PARAMETER], ['', '/offlog/prod/report-token']);
  for (const name of ALL.filter((n) => n !== 'Report')) assert.equal(fn(vpc, name).Environment.Variables.OFFLOG_REPORT_TOKEN_PARAMETER, undefined, name);
  assert.equal(route(vpc, 'HttpApiRouteGetApiReportVar').AuthorizationType, undefined);
  assert.equal(route(noVpc, 'HttpApiRouteGetApiReportVar').AuthorizationType, 'JWT');
  assert.equal(route(noVpc, 'HttpApiRouteGet').AuthorizationType, undefined, 'GET / is the page: no data, it asks for the token');
  const authorizers = Object.fromEntries(of(noVpc, 'AWS::ApiGatewayV2::Authorizer').map(([, r]) => [r.Properties.Name, r.Properties.JwtConfiguration]));
  assert.deepEqual(authorizers.offlogReport, { Audience: ['dashboard'], Issuer: REPORT_ISSUER });
  assert.deepEqual(route(noVpc, 'HttpApiRouteGetApiReportVar').AuthorizerId, { Ref: 'HttpApiAuthorizerOfflogReport' });
});

test('ingest: token from SSM (no authorizer) or a JWT authorizer; throttled at the API stage', () => {
  const route = (t: Template) => t.Resources.HttpApiRoutePostEvents!.Properties;
  const authorizer = (t: Template, name: string) => of(t, 'AWS::ApiGatewayV2::Authorizer').find(([, r]) => r.Properties.Name === name)![1];
  assert.equal(route(vpc).AuthorizationType, undefined);
  assert.equal(fn(vpc, 'Ingest').Environment.Variables.OFFLOG_INGEST_TOKEN_PARAMETER, '/offlog/prod/ingest-token');
  assert.equal(fn(vpc, 'Ingest').Environment.Variables.OFFLOG_INGEST_TOKEN, '', 'no token in the template');
  assert.equal(fn(vpc, 'Worker').Environment.Variables.OFFLOG_INGEST_TOKEN_PARAMETER, undefined, 'only ingest is told where the token is');
  assert.equal(route(noVpc).AuthorizationType, 'JWT');
  assert.deepEqual(authorizer(noVpc, 'offlogIngest').Properties.JwtConfiguration, { Audience: ['client-one', 'client-two'], Issuer: 'https://cognito-idp.eu-west-1.amazonaws.com/eu-west-1_AbCdEf' });
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
  assert.match(out, /GET \/api\/\* \(the reports, the dashboard's data\) of stage "prod" would be open to anyone\. Set OFFLOG_REPORT_TOKEN_PARAMETER .* or OFFLOG_REPORT_JWT_ISSUER and OFFLOG_REPORT_JWT_AUDIENCE .* or OFFLOG_REPORT_OPEN=true to deploy it open on purpose/);
  assert.match(out, /OFFLOG_GEARMAN_SERVERS is not set/);
  assert.match(out, /no MySQL URL/);

  const plain = await run('node_modules/.bin/osls', ['package', '--stage', 'prod', '--package', join(work, 'plain')], {
    env: cleanEnv({ ...SERVERS, OFFLOG_MYSQL_URL_PARAMETER: '/x', OFFLOG_INGEST_TOKEN: 'a-token-in-plain-text-000', OFFLOG_REPORT_TOKEN: 'another-in-plain-text-000' }),
  });
  assert.notEqual(plain.code, 0);
  assert.match(plain.stdout + plain.stderr, /OFFLOG_INGEST_TOKEN would put the ingest token in the template in plain text/);
  assert.match(plain.stdout + plain.stderr, /OFFLOG_REPORT_TOKEN would put the report token in the template in plain text/);

  // Opened on purpose: the reports are no longer a problem (the package still stops at the open ingest).
  const opened = await run('node_modules/.bin/osls', ['package', '--stage', 'prod', '--package', join(work, 'opened')], {
    env: cleanEnv({ ...SERVERS, OFFLOG_MYSQL_URL_PARAMETER: '/x', OFFLOG_REPORT_OPEN: 'true' }),
  });
  assert.notEqual(opened.code, 0);
  assert.match(opened.stdout + opened.stderr, /POST \/events of stage "prod" would be open/);
  assert.doesNotMatch(opened.stdout + opened.stderr, /GET \/api/);

  const local = await run('node_modules/.bin/osls', ['deploy'], { env: cleanEnv() });
  assert.notEqual(local.code, 0);
  assert.match(local.stdout + local.stderr, /stage "local" is the local emulation's and is not deployed/);
});

test('settings that cannot work are refused by name: endpoints without a VPC id, slices no cron follows, an unknown architecture', async () => {
  const ready = { ...SERVERS, OFFLOG_MYSQL_URL_PARAMETER: '/x', OFFLOG_INGEST_OPEN: 'true', OFFLOG_REPORT_OPEN: 'true' };
  const refused = async (extra: Record<string, string>) => {
    const r = await run('node_modules/.bin/osls', ['package', '--stage', 'prod', '--package', join(work, 'bad')], { env: cleanEnv({ ...ready, ...extra }) });
    assert.notEqual(r.code, 0, JSON.stringify(extra));
    return r.stdout + r.stderr;
  };
  assert.match(await refused({ OFFLOG_VPC_SUBNET_IDS: 'subnet-0a1b', OFFLOG_VPC_SECURITY_GROUP_IDS: 'sg-0a1b', OFFLOG_VPC_ENDPOINTS: 'auto' }), /OFFLOG_VPC_ENDPOINTS: set OFFLOG_VPC_ID to the subnets' VPC/);
  assert.match(await refused({ OFFLOG_SLICE_SECONDS: '420' }), /OFFLOG_SLICE_SECONDS=420: no cron follows slices of that length.*set OFFLOG_FLUSH_SCHEDULE/);
  assert.match(await refused({ OFFLOG_ARCHITECTURE: 'arm' }), /OFFLOG_ARCHITECTURE: must be one of arm64, x86_64, got "arm"/);
});
