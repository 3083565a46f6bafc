/**
 * Secrets kept out of the function's environment: the MySQL URL from SSM
 * Parameter Store or Secrets Manager, the ingest and report tokens from SSM. Resolved
 * once, at cold start, into the same OFFLOG_* variables loadConfig reads, so
 * everything after this step sees one configuration whatever its source.
 *
 * The AWS SDK clients are imported only when a parameter is named: the SDK
 * package and the CLI never load them, and a Lambda bundle carries the
 * version tested here rather than whatever the runtime ships that month.
 */
import { ConfigError } from '../base/errors.ts';

type Env = Record<string, string | undefined>;

/** Where each secret can come from; a test passes its own (or points the SDK at a fake endpoint). */
export interface SecretSources {
  /** A SecureString (or String) parameter's value, decrypted. */
  parameter(name: string): Promise<string>;
  /** A Secrets Manager secret's SecretString. */
  secret(id: string): Promise<string>;
}

const PARAMETER_NAME = /^[A-Za-z0-9_.\-/]{1,2048}$/;
const SECRET_ID = /^[A-Za-z0-9_+=.@\-/:]{1,2048}$/;

const set = (env: Env, key: string): string | undefined => (env[key] === '' ? undefined : env[key]);

/**
 * Returns a copy of `env` with OFFLOG_MYSQL_URL, OFFLOG_INGEST_TOKEN and
 * OFFLOG_REPORT_TOKEN filled from the parameters named by
 * OFFLOG_MYSQL_URL_PARAMETER, OFFLOG_MYSQL_URL_SECRET,
 * OFFLOG_INGEST_TOKEN_PARAMETER and OFFLOG_REPORT_TOKEN_PARAMETER. A named
 * parameter wins over a plain value; naming none leaves `env` as it is.
 */
export async function resolveSecrets(env: Env, sources: SecretSources = awsSources(env)): Promise<Env> {
  const out: Env = { ...env };
  const mysqlParameter = set(env, 'OFFLOG_MYSQL_URL_PARAMETER');
  const mysqlSecret = set(env, 'OFFLOG_MYSQL_URL_SECRET');
  const tokenParameter = set(env, 'OFFLOG_INGEST_TOKEN_PARAMETER');
  const reportTokenParameter = set(env, 'OFFLOG_REPORT_TOKEN_PARAMETER');
  if (mysqlParameter !== undefined && mysqlSecret !== undefined) {
    throw new ConfigError('OFFLOG_MYSQL_URL_PARAMETER and OFFLOG_MYSQL_URL_SECRET are both set: name one place for the MySQL URL');
  }
  for (const [key, value, rule] of [
    ['OFFLOG_MYSQL_URL_PARAMETER', mysqlParameter, PARAMETER_NAME],
    ['OFFLOG_INGEST_TOKEN_PARAMETER', tokenParameter, PARAMETER_NAME],
    ['OFFLOG_REPORT_TOKEN_PARAMETER', reportTokenParameter, PARAMETER_NAME],
    ['OFFLOG_MYSQL_URL_SECRET', mysqlSecret, SECRET_ID],
  ] as const) {
    if (value !== undefined && !rule.test(value)) throw new ConfigError(`${key}: ${JSON.stringify(value)} is not an SSM parameter name or secret id`);
  }
  const readMysqlUrl = mysqlUrlReader(env, sources);
  const [mysqlUrl, token] = await Promise.all([
    readMysqlUrl?.(),
    tokenParameter !== undefined ? fetchOne('OFFLOG_INGEST_TOKEN_PARAMETER', tokenParameter, sources.parameter.bind(sources)) : undefined,
  ]);
  if (mysqlUrl !== undefined) out.OFFLOG_MYSQL_URL = mysqlUrl;
  if (token !== undefined) out.OFFLOG_INGEST_TOKEN = token;
  // Only the report function is told this name: one more round trip, at its cold start only.
  if (reportTokenParameter !== undefined) out.OFFLOG_REPORT_TOKEN = await fetchOne('OFFLOG_REPORT_TOKEN_PARAMETER', reportTokenParameter, sources.parameter.bind(sources));
  return out;
}

/**
 * Reads the MySQL URL from the parameter or secret the environment names,
 * each time it is called; undefined when it names neither. resolveSecrets
 * reads it once at start; the Store reads it again when MySQL refuses the
 * password, which is how a rotated secret reaches a warm container.
 */
export function mysqlUrlReader(env: Env, sources: SecretSources = awsSources(env)): (() => Promise<string>) | undefined {
  const parameter = set(env, 'OFFLOG_MYSQL_URL_PARAMETER');
  const secret = set(env, 'OFFLOG_MYSQL_URL_SECRET');
  if (parameter !== undefined) return () => fetchOne('OFFLOG_MYSQL_URL_PARAMETER', parameter, sources.parameter.bind(sources));
  if (secret !== undefined) return () => fetchOne('OFFLOG_MYSQL_URL_SECRET', secret, sources.secret.bind(sources)).then(mysqlUrlFromSecret);
  return undefined;
}

async function fetchOne(key: string, name: string, get: (name: string) => Promise<string>): Promise<string> {
  try {
    const value = (await get(name)).trim();
    if (value === '') throw new Error('it is empty');
    return value;
  } catch (err) {
    throw new ConfigError(`${key}: cannot read ${JSON.stringify(name)}: ${(err as Error).message}`);
  }
}

/**
 * A secret holds either the URL itself or the JSON that RDS and Secrets
 * Manager rotation write ({username, password, host, port, dbname}); the
 * latter is turned into a URL with the password escaped. An RDS or Aurora
 * host gets TLS checked against the RDS certificate authorities (mysql2's
 * bundled "Amazon RDS" profile): a URL stored whole says for itself.
 */
export function mysqlUrlFromSecret(value: string): string {
  if (!value.startsWith('{')) return value;
  let s: Record<string, unknown>;
  try {
    s = JSON.parse(value) as Record<string, unknown>;
  } catch {
    throw new ConfigError('OFFLOG_MYSQL_URL_SECRET: the secret is neither a mysql:// URL nor JSON');
  }
  if (typeof s.url === 'string') return s.url;
  const database = s.dbname ?? s.database;
  for (const [field, v] of [['username', s.username], ['password', s.password], ['host', s.host], ['dbname', database]] as const) {
    if (typeof v !== 'string' || v === '') throw new ConfigError(`OFFLOG_MYSQL_URL_SECRET: the secret's JSON has no "${field}"`);
  }
  const port = s.port === undefined ? 3306 : Number(s.port);
  const e = encodeURIComponent;
  const tls = /\.rds\.amazonaws\.com$/.test(s.host as string) ? `?ssl=${e('Amazon RDS')}` : '';
  return `mysql://${e(s.username as string)}:${e(s.password as string)}@${s.host as string}:${port}/${e(database as string)}${tls}`;
}

/** The real thing: the AWS SDK v3 clients, in the function's region, with its role's credentials. */
export function awsSources(env: Env): SecretSources {
  const region = set(env, 'AWS_REGION') ?? set(env, 'AWS_DEFAULT_REGION');
  return {
    async parameter(name) {
      const { SSMClient, GetParameterCommand } = await import('@aws-sdk/client-ssm');
      const client = new SSMClient(region ? { region } : {});
      try {
        const out = await client.send(new GetParameterCommand({ Name: name, WithDecryption: true }));
        return out.Parameter?.Value ?? '';
      } finally {
        client.destroy();
      }
    },
    async secret(id) {
      const { SecretsManagerClient, GetSecretValueCommand } = await import('@aws-sdk/client-secrets-manager');
      const client = new SecretsManagerClient(region ? { region } : {});
      try {
        const out = await client.send(new GetSecretValueCommand({ SecretId: id }));
        return out.SecretString ?? '';
      } finally {
        client.destroy();
      }
    },
  };
}
