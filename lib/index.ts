// The package's public surface: the client SDK and the types it speaks.
export { OffLogClient, type OffLogClientOptions, type LogOptions, type ClientStats } from './pipeline/client.ts';
export { loadConfig, type Config } from './base/config.ts';
export { InputError, ConfigError, GearmanUnavailableError } from './base/errors.ts';
export type { LogEvent, UserId, ActionId } from './domain/contract.ts';
// The per-host agent (`offlog agent`), for embedding or querying from Node.
export { Agent, queryAgent, type AgentOptions, type AgentStats } from './agent/agent.ts';
