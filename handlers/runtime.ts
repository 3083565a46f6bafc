// One Runtime per Lambda container, built at cold start from the environment and the secrets it names.
import { loadConfig } from '../lib/base/config.ts';
import { Runtime } from '../lib/runtime.ts';
import { mysqlUrlReader, resolveSecrets } from '../lib/wire/secrets.ts';

let runtime: Promise<Runtime> | undefined;

export function getRuntime(): Promise<Runtime> {
  // A failed start (SSM unreachable, say) is not cached: the next invocation tries again.
  runtime ??= resolveSecrets(process.env).then((env) => new Runtime(loadConfig(env), undefined, { mysqlUrl: mysqlUrlReader(process.env) })).catch((err: unknown) => {
    runtime = undefined;
    throw err;
  });
  return runtime;
}
