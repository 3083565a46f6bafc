/**
 * `offlog agent [--socket PATH] [--tcp PORT]`: runs the agent until SIGTERM
 * (or SIGINT), then drains. Its own module so that the CLI only routes to it.
 */
import { parseArgs } from 'node:util';
import type { Config } from '../lib/base/config.ts';
import { ConfigError } from '../lib/base/errors.ts';
import type { Logger } from '../lib/base/log.ts';
import { Agent } from '../lib/agent/agent.ts';
import { OffLogClient } from '../lib/pipeline/client.ts';

/** The agent's byte bound on unacknowledged batches; the client's own cap sits well above it, so it never drops. */
const MAX_HELD_BYTES = 64 * 1024 * 1024;

export async function agentCommand(config: Config, log: Logger, args: string[]): Promise<number> {
  const { values } = parseArgs({ args, options: { socket: { type: 'string' }, tcp: { type: 'string' } }, strict: true });
  const a = config.agent;
  const tcp = values.tcp === undefined ? a.tcpPort : Number(values.tcp);
  if (tcp !== undefined && !(Number.isInteger(tcp) && tcp >= 1 && tcp <= 65_535)) throw new ConfigError(`--tcp: ${JSON.stringify(values.tcp)} is not a port (1-65535)`);
  const socketPath = values.socket ?? a.socketPath;
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
