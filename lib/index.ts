// The package's public surface: the client SDK and the types it speaks.
export { OffLogClient, type OffLogClientOptions, type LogOptions, type ClientStats } from './client.ts';
export { loadConfig, type Config } from './config.ts';
export { InputError, ConfigError, GearmanUnavailableError } from './errors.ts';
export type { LogEvent, UserId, ActionId } from './event.ts';
