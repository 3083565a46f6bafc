/**
 * The CloudFormation resources a deployed stage adds to what the framework
 * generates from serverless.yml (`resources.Resources`):
 *
 * - the schedules, on EventBridge Scheduler with a role of their own: the
 *   flush on a cron aligned to the slices, given the scheduled time as `now`;
 *   the pollers (worker, watched) and prune never retried late;
 * - the rollup's failures: an SQS queue as its on-failure destination, and an
 *   alarm when anything lands there;
 * - an alarm on the PublishFailures metric (namespace OffLog, no dimensions)
 *   that every flush emits in CloudWatch's embedded metric format (see
 *   lib/base/metrics.ts): the SliceFlushed events EventBridge did not take;
 * - optionally (OFFLOG_VPC_ENDPOINTS), the VPC interface endpoints the
 *   functions need when their subnets have no route to the internet.
 *
 * The local stage gets none of the schedules (serverless-offline runs the
 * framework's `schedule` events instead) and no endpoints.
 */
'use strict';

const settings = require('./settings.cjs');

const { env, list, SettingsError } = settings;

/** The metric each flush emits (lib/base/metrics.ts): namespace, name; no dimensions, so stages in one account share it. */
const PUBLISH_FAILURES = { namespace: 'OffLog', name: 'PublishFailures' };

const SERVICES = ['events', 'ssm', 'secretsmanager'];

const fnArn = (logicalId) => ({ 'Fn::GetAtt': [logicalId, 'Arn'] });

/**
 * Each schedule: its expression, the function, the input, and the retry policy EventBridge
 * Scheduler applies when it cannot hand the event to Lambda (Lambda's own retries are set on the
 * function in serverless.yml).
 */
function schedules(stage) {
  const pollerRetry = { MaximumRetryAttempts: 0, MaximumEventAgeInSeconds: 60 };
  return [
    ...settings.pollerSchedules().map(({ rate, input }) => ({ id: `Worker${input.poller}`, name: `worker-${input.poller}`, fn: 'WorkerLambdaFunction', expression: rate, input, retry: pollerRetry })),
    ...(settings.watchedPollers() === 1 ? [{ id: 'Watched', name: 'watched', fn: 'WatchedLambdaFunction', expression: 'rate(1 minute)', input: {}, retry: pollerRetry }] : []),
    // A flush given the same `now` again does the same work: a few retries are safe, and the MySQL lock keeps them apart.
    { id: 'Flush', name: 'flush', fn: 'FlushLambdaFunction', expression: settings.flushSchedule(), input: { now: '<aws.scheduler.scheduled-time>' }, retry: { MaximumRetryAttempts: 2, MaximumEventAgeInSeconds: 300 } },
    { id: 'Prune', name: 'prune', fn: 'PruneLambdaFunction', expression: settings.pruneSchedule(), input: { now: '<aws.scheduler.scheduled-time>' }, retry: { MaximumRetryAttempts: 0, MaximumEventAgeInSeconds: 300 } },
  ].map((s) => [
    `OffLogSchedule${s.id}`,
    {
      Type: 'AWS::Scheduler::Schedule',
      Properties: {
        Name: `offlog-${stage}-${s.name}`,
        ScheduleExpression: s.expression,
        ScheduleExpressionTimezone: 'UTC',
        FlexibleTimeWindow: { Mode: 'OFF' },
        State: 'ENABLED',
        Target: { Arn: fnArn(s.fn), RoleArn: fnArn('OffLogSchedulerRole'), Input: JSON.stringify(s.input), RetryPolicy: s.retry },
      },
    },
  ]);
}

/** The role the schedules invoke the functions with: that, and only for these functions. */
function schedulerRole(functions) {
  return {
    Type: 'AWS::IAM::Role',
    Properties: {
      AssumeRolePolicyDocument: {
        Version: '2012-10-17',
        Statement: [{ Effect: 'Allow', Principal: { Service: 'scheduler.amazonaws.com' }, Action: 'sts:AssumeRole', Condition: { StringEquals: { 'aws:SourceAccount': { Ref: 'AWS::AccountId' } } } }],
      },
      Policies: [{ PolicyName: 'invoke-scheduled-functions', PolicyDocument: { Version: '2012-10-17', Statement: [{ Effect: 'Allow', Action: 'lambda:InvokeFunction', Resource: functions.map(fnArn) }] } }],
    },
  };
}

const alarmActions = () => {
  const topic = env('OFFLOG_ALARM_TOPIC_ARN');
  if (topic !== undefined && !/^arn:[\w-]+:sns:[a-z0-9-]+:\d{12}:[\w-]{1,256}$/.test(topic)) throw new SettingsError(`OFFLOG_ALARM_TOPIC_ARN: ${JSON.stringify(topic)} is not an SNS topic ARN`);
  return topic ? { AlarmActions: [topic], OKActions: [topic] } : {};
};

/** Where a rollup that failed every attempt goes (the function's on-failure destination), and the alarm on it. */
function rollupFailures(stage) {
  return {
    OffLogRollupFailures: { Type: 'AWS::SQS::Queue', Properties: { QueueName: `offlog-${stage}-rollup-failures`, MessageRetentionPeriod: 14 * 86_400, SqsManagedSseEnabled: true } },
    OffLogRollupFailuresAlarm: {
      Type: 'AWS::CloudWatch::Alarm',
      Properties: {
        AlarmName: `offlog-${stage}-rollup-failures`,
        AlarmDescription: 'A rollup failed every attempt: its SliceFlushed event is in the queue. The flush repairs rollup gaps; read the message, then purge it.',
        Namespace: 'AWS/SQS', MetricName: 'ApproximateNumberOfMessagesVisible', Dimensions: [{ Name: 'QueueName', Value: { 'Fn::GetAtt': ['OffLogRollupFailures', 'QueueName'] } }],
        Statistic: 'Maximum', Period: 300, EvaluationPeriods: 1, Threshold: 0, ComparisonOperator: 'GreaterThanThreshold', TreatMissingData: 'notBreaching',
        ...alarmActions(),
      },
    },
  };
}

/**
 * Publishes that keep failing: PublishFailures > 0 after two flushes in a row. One datapoint
 * comes per flush, so the period is the slice (whole minutes, as CloudWatch wants), and two of
 * them (one if two would pass a day, CloudWatch's limit). A single failure is retried by the
 * next flush; a missing `events` endpoint fails every one.
 */
function publishFailuresAlarm(stage, bus) {
  const period = Math.max(60, Math.ceil(settings.intSetting('OFFLOG_SLICE_SECONDS', 600, 1, 86_400) / 60) * 60);
  const periods = Math.min(2, Math.floor(86_400 / period));
  return {
    OffLogPublishFailuresAlarm: {
      Type: 'AWS::CloudWatch::Alarm',
      Properties: {
        AlarmName: `offlog-${stage}-publish-failures`,
        AlarmDescription: `EventBridge has not taken the flush's SliceFlushed events (bus ${bus}) ${periods} flushes in a row: rollups wait for the flush's repair. ` +
          'In a VPC, check the events interface endpoint. (OffLog/PublishFailures has no dimensions: stages in this account share it.)',
        Namespace: PUBLISH_FAILURES.namespace, MetricName: PUBLISH_FAILURES.name,
        Statistic: 'Sum', Period: period, EvaluationPeriods: periods, DatapointsToAlarm: periods, Threshold: 0, ComparisonOperator: 'GreaterThanThreshold', TreatMissingData: 'notBreaching',
        ...alarmActions(),
      },
    },
  };
}

/**
 * OFFLOG_VPC_ENDPOINTS: `auto` (events, plus ssm and secretsmanager when a parameter or secret is
 * named), a comma-separated list of those services, or unset (none: the subnets reach AWS some
 * other way, a NAT gateway or endpoints made elsewhere).
 */
function endpointServices() {
  const raw = env('OFFLOG_VPC_ENDPOINTS');
  if (raw === undefined || raw === 'none') return [];
  if (raw === 'auto') {
    return SERVICES.filter((s) => s === 'events'
      || (s === 'ssm' && ['OFFLOG_MYSQL_URL_PARAMETER', 'OFFLOG_INGEST_TOKEN_PARAMETER', 'OFFLOG_REPORT_TOKEN_PARAMETER'].some((n) => env(n)))
      || (s === 'secretsmanager' && env('OFFLOG_MYSQL_URL_SECRET')));
  }
  const named = list('OFFLOG_VPC_ENDPOINTS');
  for (const s of named) if (!SERVICES.includes(s)) throw new SettingsError(`OFFLOG_VPC_ENDPOINTS: ${JSON.stringify(s)} is not one of ${SERVICES.join(', ')} (or auto, or none)`);
  return [...new Set(named)];
}

/** Interface endpoints in the functions' subnets, behind a security group that lets the functions' groups in on 443. */
function endpoints(stage) {
  const services = endpointServices();
  if (services.length === 0) return {};
  const vpc = settings.vpc();
  const vpcId = env('OFFLOG_VPC_ID');
  if (!vpc) throw new SettingsError('OFFLOG_VPC_ENDPOINTS: the functions are not in a VPC (set OFFLOG_VPC_SUBNET_IDS and OFFLOG_VPC_SECURITY_GROUP_IDS)');
  if (!vpcId || !/^vpc-[0-9a-f]+$/.test(vpcId)) throw new SettingsError(`OFFLOG_VPC_ENDPOINTS: set OFFLOG_VPC_ID to the subnets' VPC (vpc-…), got ${JSON.stringify(vpcId ?? '')}`);
  const out = {
    OffLogEndpointSecurityGroup: {
      Type: 'AWS::EC2::SecurityGroup',
      Properties: {
        GroupDescription: `offlog-${stage}: HTTPS from the functions to the VPC endpoints`,
        VpcId: vpcId,
        SecurityGroupIngress: vpc.securityGroupIds.map((id) => ({ IpProtocol: 'tcp', FromPort: 443, ToPort: 443, SourceSecurityGroupId: id })),
      },
    },
  };
  for (const service of services) {
    out[`OffLogEndpoint${service[0].toUpperCase()}${service.slice(1)}`] = {
      Type: 'AWS::EC2::VPCEndpoint',
      Properties: {
        VpcEndpointType: 'Interface',
        ServiceName: { 'Fn::Sub': `com.amazonaws.\${AWS::Region}.${service}` },
        VpcId: vpcId,
        SubnetIds: vpc.subnetIds,
        SecurityGroupIds: [{ Ref: 'OffLogEndpointSecurityGroup' }],
        PrivateDnsEnabled: true,
      },
    };
  }
  return out;
}

/** resources.Resources of serverless.yml. */
async function resources(ctx) {
  const stage = await settings.stageOf(ctx);
  const bus = env('OFFLOG_EVENT_BUS') ?? `offlog-${stage}`;
  const out = { ...rollupFailures(stage), ...publishFailuresAlarm(stage, bus) };
  if (stage === settings.LOCAL_STAGE) return out;
  const scheduled = schedules(stage);
  Object.assign(out, Object.fromEntries(scheduled), endpoints(stage));
  out.OffLogSchedulerRole = schedulerRole([...new Set(scheduled.map(([, r]) => r.Properties.Target.Arn['Fn::GetAtt'][0]))]);
  return out;
}

module.exports = { resources, endpointServices, PUBLISH_FAILURES };
