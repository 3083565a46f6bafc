/**
 * Values serverless.yml computes from the environment at package time
 * (`${file(./deploy/settings.cjs):name}`), and the checks a deployable stage
 * must pass (run by ./plugin.cjs before packaging). Nothing here calls AWS:
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

function boolSetting(name, fallback) {
  const raw = env(name);
  if (raw === undefined) return fallback;
  if (raw !== 'true' && raw !== 'false') throw new SettingsError(`${name}: must be true or false, got ${JSON.stringify(raw)}`);
  return raw === 'true';
}

function oneOf(name, allowed, fallback) {
  const raw = env(name);
  if (raw === undefined) return fallback;
  if (!allowed.includes(raw)) throw new SettingsError(`${name}: must be one of ${allowed.join(', ')}, got ${JSON.stringify(raw)}`);
  return raw;
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
  const parameters = [env('OFFLOG_MYSQL_URL_PARAMETER'), env('OFFLOG_INGEST_TOKEN_PARAMETER'), env('OFFLOG_REPORT_TOKEN_PARAMETER')].filter(Boolean);
  if (parameters.length > 0) statements.push({ Effect: 'Allow', Action: ['ssm:GetParameter'], Resource: parameters.map(ssmParameterArn) });
  const secret = env('OFFLOG_MYSQL_URL_SECRET');
  if (secret) statements.push({ Effect: 'Allow', Action: ['secretsmanager:GetSecretValue'], Resource: [secretArn(secret)] });
  const key = env('OFFLOG_KMS_KEY_ARN');
  if (key) statements.push({ Effect: 'Allow', Action: ['kms:Decrypt'], Resource: [key] });
  return statements;
}

/**
 * OFFLOG_WORKER_POLLERS (0–50, default 1): how many worker invocations drain the queue side by
 * side; 0 when `offlog worker` runs as a service elsewhere (systemd, ECS). OFFLOG_WATCHED_POLLERS
 * (0 or 1, default 1): the same for the watched drain (`offlog watched`).
 */
const workerPollers = () => intSetting('OFFLOG_WORKER_POLLERS', 1, 0, 50);
const watchedPollers = () => intSetting('OFFLOG_WATCHED_POLLERS', 1, 0, 1);

/**
 * The schedules. A deployed stage gets them from EventBridge Scheduler (./resources.cjs): retry
 * policies, the scheduled time passed as `now`, and a role of their own. The local stage keeps the
 * framework's `schedule` events, which serverless-offline runs.
 */
const localOnly = (events) => async (ctx) => ((await stageOf(ctx)) === LOCAL_STAGE ? events() : []);

/** One schedule per poller, every minute; each run drains until just before its timeout. */
const pollerSchedules = () => Array.from({ length: workerPollers() }, (_, i) => ({ rate: 'rate(1 minute)', input: { poller: i + 1 } }));
const workerSchedules = localOnly(() => pollerSchedules().map(({ rate, input }) => ({ schedule: { rate: [rate], input } })));
const watchedSchedules = localOnly(() => (watchedPollers() === 1 ? [{ schedule: 'rate(1 minute)' }] : []));
const flushSchedules = localOnly(() => [{ schedule: env('OFFLOG_FLUSH_SCHEDULE') ?? 'rate(10 minutes)' }]);
const pruneSchedules = localOnly(() => [{ schedule: pruneSchedule() }]);

const SLICE_SECONDS = () => intSetting('OFFLOG_SLICE_SECONDS', 600, 1, 86_400);
const pruneSchedule = () => env('OFFLOG_PRUNE_SCHEDULE') ?? 'rate(1 hour)';

/**
 * The flush's schedule on a deployed stage: OFFLOG_FLUSH_SCHEDULE as given, or a cron on the
 * slice boundaries (UTC, as the slices are) plus OFFLOG_FLUSH_OFFSET_MINUTES, so that each run
 * comes just after a slice closed. A `rate()` would count from the schedule's creation instead.
 */
function flushSchedule() {
  const given = env('OFFLOG_FLUSH_SCHEDULE');
  if (given !== undefined) return given;
  return sliceCron(SLICE_SECONDS(), intSetting('OFFLOG_FLUSH_OFFSET_MINUTES', 1, 0, 59));
}

/** A cron firing `offset` minutes after every slice boundary, for slices a cron can follow. */
function sliceCron(sliceSeconds, offset) {
  const minutes = sliceSeconds / 60;
  const hours = sliceSeconds / 3600;
  const fix = 'set OFFLOG_FLUSH_SCHEDULE to a schedule expression of your own';
  if (Number.isInteger(minutes) && minutes < 60 && 60 % minutes === 0) {
    if (offset >= minutes) throw new SettingsError(`OFFLOG_FLUSH_OFFSET_MINUTES: must be less than a slice (${minutes} min), got ${offset}`);
    return `cron(${offset}/${minutes} * * * ? *)`;
  }
  if (Number.isInteger(hours) && 24 % hours === 0) return `cron(${offset} ${hours === 1 ? '*' : `0/${hours}`} * * ? *)`;
  throw new SettingsError(`OFFLOG_SLICE_SECONDS=${sliceSeconds}: no cron follows slices of that length (whole minutes dividing an hour, or whole hours dividing a day); ${fix}`);
}

/** HTTP API stage throttling: requests (each up to OFFLOG_MAX_BATCH_EVENTS events) per second, and the burst. */
function httpThrottle() {
  return {
    ThrottlingRateLimit: intSetting('OFFLOG_HTTP_RATE_LIMIT', 200, 1, 100_000),
    ThrottlingBurstLimit: intSetting('OFFLOG_HTTP_BURST_LIMIT', 400, 1, 100_000),
  };
}

/** The report reads' own limit (GET /api/{report}), below the stage's: each read is MySQL queries. */
function reportRouteThrottle() {
  return {
    'GET /api/{report}': {
      ThrottlingRateLimit: intSetting('OFFLOG_REPORT_RATE_LIMIT', 20, 1, 10_000),
      ThrottlingBurstLimit: intSetting('OFFLOG_REPORT_BURST_LIMIT', 40, 1, 10_000),
    },
  };
}

/** A JWT authorizer's issuer and audiences from OFFLOG_<WHO>_JWT_ISSUER / _AUDIENCE, or undefined. */
function jwtOf(who) {
  const issuerUrl = env(`OFFLOG_${who}_JWT_ISSUER`);
  if (!issuerUrl) return undefined;
  const audience = list(`OFFLOG_${who}_JWT_AUDIENCE`);
  if (audience.length === 0) throw new SettingsError(`OFFLOG_${who}_JWT_AUDIENCE: a JWT authorizer needs at least one audience (comma-separated)`);
  return { issuerUrl, audience };
}
const jwt = () => jwtOf('INGEST');
const reportJwt = () => jwtOf('REPORT');

/** provider.httpApi.authorizers: a JWT authorizer for each of ingest and reports given an issuer. */
function httpApiAuthorizers() {
  const out = {};
  for (const [name, j] of [['offlogIngest', jwt()], ['offlogReport', reportJwt()]]) {
    if (j) out[name] = { type: 'jwt', identitySource: '$request.header.Authorization', issuerUrl: j.issuerUrl, audience: j.audience };
  }
  return out;
}

const ingestAuthorizer = () => (jwt() ? { name: 'offlogIngest' } : null);
// Only the reads: the page at GET / holds no data (it asks for the token and sends it with each read).
const reportAuthorizer = () => (reportJwt() ? { name: 'offlogReport' } : null);

/** OFFLOG_ARCHITECTURE: arm64 (the default, the cheaper per GB-second) or x86_64. The bundles are plain JavaScript. */
const architecture = () => oneOf('OFFLOG_ARCHITECTURE', ['arm64', 'x86_64'], 'arm64');

/**
 * Reserved concurrency, per function: a cap and a guarantee at once. Lambda refuses a reservation
 * that leaves the account fewer than 100 unreserved executions, so a low quota (new accounts) needs
 * OFFLOG_RESERVED_CONCURRENCY=false: then nothing is reserved, the flush's MySQL lock still keeps
 * flushes one at a time, and the report reads keep their API throttle.
 */
const reserved = (n) => (boolSetting('OFFLOG_RESERVED_CONCURRENCY', true) ? n : null);
const concurrency = {
  flushConcurrency: () => reserved(1),
  workerConcurrency: () => (workerPollers() === 0 ? null : reserved(workerPollers())),
  rollupConcurrency: () => reserved(intSetting('OFFLOG_ROLLUP_CONCURRENCY', 2, 1, 100)),
  reportConcurrency: () => reserved(intSetting('OFFLOG_REPORT_CONCURRENCY', 5, 1, 1000)),
};

/** Lambda keeps this many executions of an account unreserved: a reservation that would leave fewer is refused. */
const UNRESERVED_MINIMUM = 100;

/**
 * Whether the reservations of a template fit the account's concurrency quota (`aws lambda
 * get-account-settings`: AccountLimit.ConcurrentExecutions); a problem with what to do, or null.
 * Checked at deploy (./plugin.cjs), before CloudFormation would fail half-way.
 */
function concurrencyProblem(accountLimit, reservedTotal) {
  if (reservedTotal === 0 || accountLimit - reservedTotal >= UNRESERVED_MINIMUM) return null;
  return `the functions reserve ${reservedTotal} concurrent executions, and this account's quota is ${accountLimit}: Lambda keeps ${UNRESERVED_MINIMUM} unreserved, ` +
    `so the quota must be at least ${reservedTotal + UNRESERVED_MINIMUM}. Ask for more (Service Quotas, Lambda "Concurrent executions", L-B99A9384), ` +
    'or set OFFLOG_RESERVED_CONCURRENCY=false (the flush stays one at a time through its MySQL lock; rollups and report reads are then not capped)';
}

/** The flush's memory and timeout: deploy settings (Lambda enforces them; the code never reads them). */
const flushMemoryMb = () => intSetting('OFFLOG_FLUSH_MEMORY_MB', 1024, 128, 10_240);
const flushTimeoutSeconds = () => intSetting('OFFLOG_FLUSH_TIMEOUT_SECONDS', 300, 30, 900);

/** A plain MySQL URL only when no parameter names one (the function then reads it at cold start). */
const mysqlUrl = () => (env('OFFLOG_MYSQL_URL_PARAMETER') || env('OFFLOG_MYSQL_URL_SECRET') ? '' : (env('OFFLOG_MYSQL_URL') ?? 'mysql://offlog:offlog@127.0.0.1:3306/offlog'));

/**
 * What a stage must have before it is packaged or deployed; returns the
 * problems, each with what to do. Run by ./plugin.cjs.
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
  const reportOpen = env('OFFLOG_REPORT_OPEN') === 'true';
  if (env('OFFLOG_REPORT_TOKEN')) {
    out.push('OFFLOG_REPORT_TOKEN would put the report token in the template in plain text: store it as an SSM SecureString and set OFFLOG_REPORT_TOKEN_PARAMETER to its name');
  } else if (!env('OFFLOG_REPORT_TOKEN_PARAMETER') && !reportJwt() && !reportOpen) {
    out.push(
      `GET /api/* (the reports, the dashboard's data) of stage "${stage}" would be open to anyone. Set OFFLOG_REPORT_TOKEN_PARAMETER (an SSM SecureString holding the bearer token), ` +
        'or OFFLOG_REPORT_JWT_ISSUER and OFFLOG_REPORT_JWT_AUDIENCE (a JWT authorizer), or OFFLOG_REPORT_OPEN=true to deploy it open on purpose',
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
  LOCAL_STAGE, SettingsError, problems, env, list, intSetting, boolSetting, stageOf,
  vpc, logRetentionDays, iamStatements, workerPollers, watchedPollers, pollerSchedules, httpThrottle, reportRouteThrottle, httpApiAuthorizers, ingestAuthorizer, reportAuthorizer, mysqlUrl,
  workerSchedules, watchedSchedules, flushSchedules, pruneSchedules, flushSchedule, pruneSchedule, sliceCron,
  architecture, ...concurrency, concurrencyProblem, UNRESERVED_MINIMUM, flushMemoryMb, flushTimeoutSeconds,
  // The tokens themselves only on the local stage; a deployed one reads them from SSM (or uses a JWT authorizer).
  ingestToken: async (ctx) => ((await stageOf(ctx)) === LOCAL_STAGE ? (env('OFFLOG_INGEST_TOKEN') ?? '') : ''),
  reportToken: async (ctx) => ((await stageOf(ctx)) === LOCAL_STAGE ? (env('OFFLOG_REPORT_TOKEN') ?? '') : ''),
};
