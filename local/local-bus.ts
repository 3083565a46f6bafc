/**
 * The `local` stage's bus, found rather than exported. `npm start` runs a mock
 * EventBridge (serverless-offline) on 127.0.0.1:OFFLOG_EVENTBRIDGE_PORT; a CLI
 * started from another terminal should publish there too, or the rollup never
 * hears of its flush. So when no bus is configured at all (neither
 * OFFLOG_EVENT_BUS nor OFFLOG_EVENTBRIDGE_ENDPOINT), every server (gearmand,
 * memcached, MySQL) is on this machine, and the mock's port answers, the CLI publishes to `offlog-local`
 * on it. Anything configured wins; a remote stage is never guessed at.
 */
import net from 'node:net';
import type { Config } from '../lib/base/config.ts';

export const LOCAL_BUS = 'offlog-local';
const LOOPBACK = new Set(['127.0.0.1', 'localhost', '::1']);

/** The mock bus's port: what `npm start` (local/start.sh, serverless.yml) gives serverless-offline. */
export const localBusPort = (env: Record<string, string | undefined>): number => {
  const port = Number(env.OFFLOG_EVENTBRIDGE_PORT ?? '4010');
  return Number.isInteger(port) && port > 0 && port < 65536 ? port : 4010;
};

function answers(port: number, timeoutMs: number): Promise<boolean> {
  return new Promise((resolve) => {
    const socket = net.connect({ host: '127.0.0.1', port });
    const done = (ok: boolean) => {
      socket.destroy();
      resolve(ok);
    };
    socket.setTimeout(timeoutMs, () => done(false));
    socket.once('connect', () => done(true));
    socket.once('error', () => done(false));
  });
}

/** The config with the local bus filled in when it applies; unchanged otherwise. */
export async function withLocalBus(config: Config, env: Record<string, string | undefined>, timeoutMs = 300): Promise<Config> {
  if (config.eventBus !== undefined || config.eventBridgeEndpoint !== undefined) return config;
  const mysqlHost = (() => {
    try {
      return new URL(config.mysqlUrl).hostname;
    } catch {
      return '';
    }
  })();
  const local = [...config.gearmanServers, ...config.memcachedServers].every((s) => LOOPBACK.has(s.host)) && LOOPBACK.has(mysqlHost);
  if (!local) return config;
  const port = localBusPort(env);
  if (!(await answers(port, timeoutMs))) return config;
  return { ...config, eventBus: LOCAL_BUS, eventBridgeEndpoint: `http://127.0.0.1:${port}` };
}
