// The SDK's light entry, `offlog` and `offlog/client`: the client and the types it speaks.
// Its imports reach only node builtins (checked by test/sdk-package.test.ts, which installs the
// package with none of the server side's libraries present): no mysql2, pino or zod.
export {
  OffLogClient, resolveServers,
  type OffLogClientOptions, type LogOptions, type ClientStats, type ServerStats, type ServerAddress,
  type OffLogClientError, type DropEvent, type ClientLogger, type RecordedEvent, type OffLogClientEvents,
} from './send/client.ts';
export type { HostPort } from './base/servers.ts';
export { InputError, GearmanUnavailableError } from './base/errors.ts';
export type { LogEvent, UserId, ActionId } from './domain/contract.ts';
