// One Runtime per Lambda container, built from the environment at cold start.
import { loadConfig } from '../lib/base/config.ts';
import { Runtime } from '../lib/runtime.ts';

let runtime: Runtime | undefined;
export const getRuntime = (): Runtime => (runtime ??= new Runtime(loadConfig(process.env)));
