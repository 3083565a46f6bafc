/**
 * `offlog` — the operator's command line: `offlog --help`, `offlog <command>
 * --help`, `offlog --version`. The commands are in ./cli-program.ts; exit
 * codes are one table, EXIT in ./cli-errors.ts (docs/operations.md prints it).
 */
import { CommanderError } from 'commander';
import { makeCli } from './cli-context.ts';
import { describe, EXIT } from './cli-errors.ts';
import { buildProgram } from './cli-program.ts';

async function main(argv: string[]): Promise<number> {
  const cli = makeCli(process.env);
  const program = buildProgram(cli);
  try {
    await program.parseAsync(argv, { from: 'user' });
    return cli.exitCode;
  } catch (err) {
    if (err instanceof CommanderError) {
      // --help and --version end here too, with exit code 0; `offlog` alone prints help to stderr: a usage error.
      return err.exitCode === 0 ? EXIT.ok : EXIT.usage;
    }
    const { code, line } = describe(err, cli.loaded());
    process.stderr.write(`offlog: ${line}\n`);
    return code;
  } finally {
    await cli.close().catch(() => undefined);
  }
}

main(process.argv.slice(2)).then((code) => process.exit(code));
