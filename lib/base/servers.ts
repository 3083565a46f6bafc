/**
 * Server addresses: `host:port` text, as the OFFLOG_*_SERVERS variables and
 * the SDK's `servers` option write them. No dependencies: the SDK's client
 * entry uses this, and config.ts builds on it.
 */

export interface HostPort { host: string; port: number }

/** `host:port`, for logs and messages. */
export const label = (s: HostPort): string => `${s.host}:${s.port}`;

const ITEM = /^([A-Za-z0-9.\-]+|\[[0-9a-fA-F:]+\])(?::(\d{1,5}))?$/;

/** One `host:port` (or `host`, taking `defaultPort`; `[v6]:port`), or the reason it is not one. */
export function parseServer(item: string, defaultPort: number): HostPort | string {
  const m = ITEM.exec(item.trim());
  const port = m?.[2] === undefined ? defaultPort : Number(m[2]);
  if (!m || port < 1 || port > 65535) return `"${item.trim()}" is not host:port`;
  return { host: m[1]!.replace(/^\[|\]$/g, ''), port };
}

/** A comma-separated list, or the reason it is not one. */
export function parseServerList(text: string, defaultPort: number): HostPort[] | string {
  const servers: HostPort[] = [];
  for (const item of text.split(',').map((s) => s.trim()).filter(Boolean)) {
    const s = parseServer(item, defaultPort);
    if (typeof s === 'string') return s;
    servers.push(s);
  }
  return servers.length === 0 ? 'needs at least one host:port' : servers;
}
