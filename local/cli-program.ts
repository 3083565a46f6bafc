/**
 * The `offlog` program: its commands, help and version, on commander.
 *
 * Commands live in modules named for what they do; each exports a
 * `CommandModule` (`(program, cli) => void`, ./cli-context.ts) and is listed
 * in MODULES below. A new command group is a new module and one line there.
 */
import { readFileSync } from 'node:fs';
import { Command } from 'commander';
import { registerAgent } from './agent-command.ts';
import { registerBus } from './bus-commands.ts';
import type { Cli, CommandModule } from './cli-context.ts';
import { EXIT } from './cli-errors.ts';
import { registerOps } from './ops-commands.ts';
import { registerReports } from './report-commands.ts';

/** Every command group, in the order `offlog --help` lists them. */
const MODULES: CommandModule[] = [registerOps, registerBus, registerReports, registerAgent];

/** The package's version: package.json is one folder up in a clone (local/), two in the package (dist/local/). */
function version(): string {
  for (const rel of ['../package.json', '../../package.json']) {
    try {
      const pkg = JSON.parse(readFileSync(new URL(rel, import.meta.url), 'utf8')) as { name?: string; version?: string };
      if (pkg.name === 'offlog' && pkg.version) return pkg.version;
    } catch {
      // not this one
    }
  }
  return 'unknown';
}

export function buildProgram(cli: Cli): Command {
  const program = new Command('offlog')
    .description('OffLog: count what users do, per ten-minute slice, without one SQL write per event')
    .version(version(), '-V, --version', 'print the version')
    .helpOption('-h, --help', 'print help (every command has its own: offlog <command> --help)')
    .helpCommand(true)
    // Set before the commands are added: commander copies these settings into each of them.
    .exitOverride()
    .configureOutput({ outputError: (text, write) => write(`${text.replace(/^error: /, 'offlog: ').replace(/\n\((Did you mean [^)]*)\)/, (_m, hint: string) => ` (${hint.replace('Did', 'did')})`).trimEnd()}\n`) })
    .showSuggestionAfterError(true)
    .addHelpText('after', `\nExit codes: ${EXIT.ok} done, ${EXIT.failed} unexpected error, ${EXIT.usage} usage, ${EXIT.unhealthy} status not healthy, ${EXIT.unavailable} a server unreachable, ${EXIT.busy} flush lock busy, ${EXIT.config} bad OFFLOG_* variable.\nDocs: docs/operations.md (commands, exit codes), docs/configuration.md (variables).`);
  for (const register of MODULES) register(program, cli);
  return program;
}

