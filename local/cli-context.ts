/**
 * What every `offlog` command module gets: the runtime (built on first use,
 * so `--help` needs no configuration and no server), a printer for results,
 * and the place to set the exit code. A module registers its commands with
 * `(program, cli) => void`; local/cli.ts lists the modules.
 */
import { InvalidArgumentError, type Command } from 'commander';
import { loadConfig, type Config } from '../lib/base/config.ts';
import { ConfigError } from '../lib/base/errors.ts';
import { Runtime } from '../lib/runtime.ts';
import { CliConfigError, EXIT } from './cli-errors.ts';
import { withLocalBus } from './local-bus.ts';

export interface Cli {
  readonly env: Record<string, string | undefined>;
  /** The configuration, loaded (and the local bus found) on first use. */
  config(): Promise<Config>;
  /** The runtime on that configuration; closed by local/cli.ts when the command ends. */
  runtime(): Promise<Runtime>;
  /** Writes a result as indented JSON on stdout (64-bit figures as decimal text). */
  print(value: unknown): void;
  /** The command's exit code (EXIT.ok unless set). */
  exitCode: number;
}

/** A command module: adds its commands (and their --help) to the program. */
export type CommandModule = (program: Command, cli: Cli) => void;

export function makeCli(env: Record<string, string | undefined>): Cli & { close(): Promise<void>; loaded(): Config | undefined } {
  let config: Promise<Config> | undefined;
  let loadedConfig: Config | undefined;
  let rt: Runtime | undefined;
  const cli = {
    env,
    exitCode: EXIT.ok as number,
    config(): Promise<Config> {
      config ??= (async () => {
        let c: Config;
        try {
          c = loadConfig(env);
        } catch (err) {
          if (err instanceof ConfigError) throw new CliConfigError(err.message);
          throw err;
        }
        loadedConfig = await withLocalBus(c, env);
        return loadedConfig;
      })();
      return config;
    },
    async runtime(): Promise<Runtime> {
      const c = await cli.config();
      if (rt === undefined) {
        rt = new Runtime(c);
        if (c.eventBridgeEndpoint !== undefined && env.OFFLOG_EVENTBRIDGE_ENDPOINT === undefined) {
          rt.log.info({ bus: c.eventBus, endpoint: c.eventBridgeEndpoint }, 'publishing to the local bus of `npm start` (no bus configured, its port answers)');
        }
      }
      return rt;
    },
    print(value: unknown): void {
      process.stdout.write(`${JSON.stringify(value, (_k, v) => (typeof v === 'bigint' ? v.toString() : v), 2)}\n`);
    },
    loaded: () => loadedConfig,
    async close(): Promise<void> {
      await rt?.close();
    },
  };
  return cli;
}

/** Parses a whole number option, for commander (its error is a usage error). */
export const wholeNumber = (name: string, min: number, max: number) => (value: string): number => {
  const n = Number(value);
  if (!/^\d+$/.test(value) || n < min || n > max) throw new InvalidArgumentError(`${name}: must be a whole number from ${min} to ${max}, got ${JSON.stringify(value)}`);
  return n;
};

/** An ISO-8601 time option (`--now`), for commander. */
export const isoTime = (name: string) => (value: string): Date => {
  const at = new Date(value);
  if (!/^\d{4}-\d{2}-\d{2}/.test(value) || Number.isNaN(at.getTime())) throw new InvalidArgumentError(`${name}: ${JSON.stringify(value)} is not an ISO-8601 time (e.g. 2026-11-29T10:00:00Z)`);
  return at;
};
