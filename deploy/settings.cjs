/**
 * Values serverless.yml computes from the environment at package time
 * (`${file(./deploy/settings.cjs):name}`), and the checks a deployable stage
 * must pass (run by ./guard.cjs before packaging). Nothing here calls AWS:
 * `osls package` works with no account and no network.
 *
 * The stage named `local` is the emulation's (npm start, tests, the default);
 * every other stage is treated as a real deployment.
 */
'use strict';

const LOCAL_STAGE = 'local';
const RETENTION_DAYS = [1, 3, 5, 7, 14, 30, 60, 90, 120, 150, 180, 365, 400, 545, 731, 1096, 1827, 2192, 2557, 2922, 3288, 3653];

const env = (name) => {
  const v = process.env[name];
  return v === undefined || v.trim() === '' ? undefined : v.trim();
};
const list = (name) => (env(name) ?? '').split(',').map((s) => s.trim()).filter(Boolean);

class SettingsError extends Error {}

function intSetting(name, fallback, min, max) {
  const raw = env(name);
  if (raw === undefined) return fallback;
  if (!/^\d+$/.test(raw) || Number(raw) < min || Number(raw) > max) throw new SettingsError(`${name}: must be a whole number from ${min} to ${max}, got ${JSON.stringify(raw)}`);
  return Number(raw);
}

async function stageOf({ options, resolveConfigurationProperty }) {
  return options.stage ?? (await resolveConfigurationProperty(['provider', 'stage']));
}

/** provider.vpc: both id lists from the environment, or no VPC block at all. */
function vpc() {
  const subnetIds = list('OFFLOG_VPC_SUBNET_IDS');
  const securityGroupIds = list('OFFLOG_VPC_SECURITY_GROUP_IDS');
  if (subnetIds.length === 0 && securityGroupIds.length === 0) return null;
  if (subnetIds.length === 0 || securityGroupIds.length === 0) {
    throw new SettingsError('OFFLOG_VPC_SUBNET_IDS and OFFLOG_VPC_SECURITY_GROUP_IDS go together: set both (comma-separated ids) or neither');
  }
  for (const id of subnetIds) if (!/^subnet-[0-9a-f]+$/.test(id)) throw new SettingsError(`OFFLOG_VPC_SUBNET_IDS: ${JSON.stringify(id)} is not a subnet id (subnet-…)`);
  for (const id of securityGroupIds) if (!/^sg-[0-9a-f]+$/.test(id)) throw new SettingsError(`OFFLOG_VPC_SECURITY_GROUP_IDS: ${JSON.stringify(id)} is not a security group id (sg-…)`);
  return { subnetIds, securityGroupIds };
}

/** Days CloudWatch keeps each function's logs: OFFLOG_LOG_RETENTION_DAYS, else 30 for prod and 7 for any other stage. */
async function logRetentionDays(ctx) {
  const stage = await stageOf(ctx);
  const days = intSetting('OFFLOG_LOG_RETENTION_DAYS', stage === 'prod' ? 30 : 7, 1, 3653);
  if (!RETENTION_DAYS.includes(days)) throw new SettingsError(`OFFLOG_LOG_RETENTION_DAYS: CloudWatch accepts ${RETENTION_DAYS.join(', ')}; got ${days}`);
  return days;
}

const ssmParameterArn = (name) => ({ 'Fn::Sub': `arn:\${AWS::Partition}:ssm:\${AWS::Region}:\${AWS::AccountId}:parameter/${name.replace(/^\//, '')}` });
// A secret named without its ARN gets a random 6-character suffix from Secrets Manager.
const secretArn = (id) => (id.startsWith('arn:') ? id : { 'Fn::Sub': `arn:\${AWS::Partition}:secretsmanager:\${AWS::Region}:\${AWS::AccountId}:secret:${id}-??????` });

/**
 * The role's statements beyond what the framework adds (writing the
 * functions' own log groups; the VPC network-interface policy when a VPC is
 * set): reading exactly the parameters named, nothing when none is.
 */
async function iamStatements(ctx) {
  // The flush (SliceFlushed) and the watched drain (ActivityWatched) put events on the stage's bus, and nowhere else.
  const bus = env('OFFLOG_EVENT_BUS') ?? `offlog-${await stageOf(ctx)}`;
  const busArn = bus.startsWith('arn:') ? bus : { 'Fn::Sub': `arn:\${AWS::Partition}:events:\${AWS::Region}:\${AWS::AccountId}:event-bus/${bus}` };
  const statements = [{ Effect: 'Allow', Action: ['events:PutEvents'], Resource: [busArn] }];
  const parameters = [env('OFFLOG_MYSQL_URL_PARAMETER'), env('OFFLOG_INGEST_TOKEN_PARAMETER')].filter(Boolean);
  if (parameters.length > 0) statements.push({ Effect: 'Allow', Action: ['ssm:GetParameter'], Resource: parameters.map(ssmParameterArn) });
  const secret = env('OFFLOG_MYSQL_URL_SECRET');
  if (secret) statements.push({ Effect: 'Allow', Action: ['secretsmanager:GetSecretValue'], Resource: [secretArn(secret)] });
  const key = env('OFFLOG_KMS_KEY_ARN');
  if (key) statements.push({ Effect: 'Allow', Action: ['kms:Decrypt'], Resource: [key] });
  return statements;
}

/** OFFLOG_WORKER_POLLERS (1–50, default 1): how many worker invocations drain the queue side by side. */
const workerPollers = () => intSetting('OFFLOG_WORKER_POLLERS', 1, 1, 50);

/** One schedule per poller, every minute; each run drains until just before its timeout. */
function workerSchedules() {
  return Array.from({ length: workerPollers() }, (_, i) => ({ schedule: { rate: ['rate(1 minute)'], input: { poller: i + 1 } } }));
}

/** HTTP API stage throttling: requests (each up to OFFLOG_MAX_BATCH_EVENTS events) per second, and the burst. */
function httpThrottle() {
  return {
    ThrottlingRateLimit: intSetting('OFFLOG_HTTP_RATE_LIMIT', 200, 1, 100_000),
    ThrottlingBurstLimit: intSetting('OFFLOG_HTTP_BURST_LIMIT', 400, 1, 100_000),
  };
}

const jwt = () => (env('OFFLOG_INGEST_JWT_ISSUER') ? { issuerUrl: env('OFFLOG_INGEST_JWT_ISSUER'), audience: list('OFFLOG_INGEST_JWT_AUDIENCE') } : undefined);

/** provider.httpApi.authorizers: a JWT authorizer when an issuer is given. */
function httpApiAuthorizers() {
  const j = jwt();
  if (!j) return {};
  if (j.audience.length === 0) throw new SettingsError('OFFLOG_INGEST_JWT_AUDIENCE: a JWT authorizer needs at least one audience (comma-separated)');
  return { offlogIngest: { type: 'jwt', identitySource: '$request.header.Authorization', issuerUrl: j.issuerUrl, audience: j.audience } };
}

const ingestAuthorizer = () => (jwt() ? { name: 'offlogIngest' } : null);

/** A plain MySQL URL only when no parameter names one (the function then reads it at cold start). */
const mysqlUrl = () => (env('OFFLOG_MYSQL_URL_PARAMETER') || env('OFFLOG_MYSQL_URL_SECRET') ? '' : (env('OFFLOG_MYSQL_URL') ?? 'mysql://offlog:offlog@127.0.0.1:3306/offlog'));

/**
 * What a stage must have before it is packaged or deployed; returns the
 * problems, each with what to do. Run by ./guard.cjs.
 */
function problems(stage, command) {
  if (stage === LOCAL_STAGE) {
    return command === 'deploy' ? [`stage "${LOCAL_STAGE}" is the local emulation's and is not deployed: osls deploy --stage <name> (dev, prod, …)`] : [];
  }
  const out = [];
  const opened = env('OFFLOG_INGEST_OPEN') === 'true';
  if (env('OFFLOG_INGEST_TOKEN')) {
    out.push('OFFLOG_INGEST_TOKEN would put the ingest token in the template in plain text: store it as an SSM SecureString and set OFFLOG_INGEST_TOKEN_PARAMETER to its name');
  } else if (!env('OFFLOG_INGEST_TOKEN_PARAMETER') && !jwt() && !opened) {
    out.push(
      `POST /events of stage "${stage}" would be open to anyone. Set OFFLOG_INGEST_TOKEN_PARAMETER (an SSM SecureString holding the bearer token), ` +
        'or OFFLOG_INGEST_JWT_ISSUER and OFFLOG_INGEST_JWT_AUDIENCE (a JWT authorizer), or OFFLOG_INGEST_OPEN=true to deploy it open on purpose',
    );
  }
  for (const name of ['OFFLOG_GEARMAN_SERVERS', 'OFFLOG_MEMCACHED_SERVERS']) {
    if (!env(name)) out.push(`${name} is not set: a deployed stage cannot use the local default on 127.0.0.1`);
  }
  if (!env('OFFLOG_MYSQL_URL_PARAMETER') && !env('OFFLOG_MYSQL_URL_SECRET') && !env('OFFLOG_MYSQL_URL')) {
    out.push('no MySQL URL: set OFFLOG_MYSQL_URL_PARAMETER (SSM SecureString) or OFFLOG_MYSQL_URL_SECRET (Secrets Manager), or OFFLOG_MYSQL_URL');
  }
  return out;
}

module.exports = {
  LOCAL_STAGE, SettingsError, problems,
  vpc, logRetentionDays, iamStatements, workerPollers, workerSchedules, httpThrottle, httpApiAuthorizers, ingestAuthorizer, mysqlUrl,
  ingestToken: async (ctx) => ((await stageOf(ctx)) === LOCAL_STAGE ? (env('OFFLOG_INGEST_TOKEN') ?? '') : ''),
};
