/**
 * `offlog agent [--socket PATH] [--tcp PORT]`: runs the agent until SIGTERM
 * (or SIGINT), then drains. Its own module so that the CLI only routes to it.
 */
import type { Config } from '../lib/base/config.ts';
import type { Logger } from '../lib/base/log.ts';
import { wholeNumber, type CommandModule } from './cli-context.ts';
import { Agent } from '../lib/send/agent.ts';
import { OffLogClient } from '../lib/send/client.ts';

/** The agent's byte bound on unacknowledged batches; the client's own cap sits well above it, so it never drops. */
const MAX_HELD_BYTES = 64 * 1024 * 1024;

export const registerAgent: CommandModule = (program, cli) => {
  program
    .command('agent')
    .description('the per-host agent PHP logs through (docs/php.md): events in on a unix socket, batches out to gearmand, until SIGTERM')
    .option('--socket <path>', 'the unix socket to listen on (default: OFFLOG_AGENT_SOCKET)')
    .option('--tcp <port>', 'also listen on 127.0.0.1:<port> (default: OFFLOG_AGENT_TCP_PORT)', wholeNumber('--tcp', 1, 65_535))
    .addHelpText('after', '\nExit 1 when it had to drop events (its stats line says how many).')
    .action(async (o: { socket?: string; tcp?: number }) => {
      const rt = await cli.runtime();
      cli.exitCode = await runAgent(rt.config, rt.log, o);
    });
};

/** Runs the agent until SIGTERM or SIGINT, then drains it; 0 when it dropped nothing. */
export async function runAgent(config: Config, log: Logger, options: { socket?: string; tcp?: number }): Promise<number> {
  const a = config.agent;
  const tcp = options.tcp ?? a.tcpPort;
  const socketPath = options.socket ?? a.socketPath;
  const client = new OffLogClient({
    servers: config.gearmanServers,
    logger: log,
    maxBufferedEvents: 2 * a.maxHeld + a.maxFrameBytes,
    maxBufferedBytes: 4 * MAX_HELD_BYTES,
  });
  const agent = new Agent(client, {
    socketPath, tcpPort: tcp, maxHeld: a.maxHeld, maxHeldBytes: MAX_HELD_BYTES, maxFrameBytes: a.maxFrameBytes,
    stateFile: a.stateFile ?? `${socketPath}.state`,
    statsSeconds: a.statsSeconds,
  }, log);
  await agent.start();
  await new Promise<void>((resolve) => {
    for (const sig of ['SIGTERM', 'SIGINT'] as const) process.once(sig, () => resolve());
  });
  const stats = await agent.stop();
  return stats.dropped === 0 ? 0 : 1;
}
