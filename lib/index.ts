// `offlog/server`: the client entry plus what runs the pipeline's server side, which needs the
// optional peer dependencies mysql2, pino and zod (docs/node-sdk.md: "Install").
export * from './client.ts';
export { loadConfig, type Config } from './base/config.ts';
export { InputError, ConfigError, GearmanUnavailableError } from './base/errors.ts';
export { Runtime } from './runtime.ts';
// The per-host agent (`offlog agent`), for embedding or querying from Node.
export { Agent, queryAgent, type AgentOptions, type AgentStats } from './send/agent.ts';
