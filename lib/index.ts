// `offlog/server`: the client entry plus what runs the pipeline's server side, which needs the
// optional peer dependencies mysql2, pino and zod (docs/node-sdk.md: "Install").
export * from './client.ts';
export { loadConfig, type Config } from './base/config.ts';
export { ConfigError } from './base/errors.ts';
export { Runtime } from './runtime.ts';
