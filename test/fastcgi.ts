/**
 * A minimal FastCGI client (responder role, one request per connection):
 * enough to drive php-fpm in a test, with no web server in between.
 * Records: version 1, type, request id, content length, padding (FastCGI 1.0 spec).
 */
import net from 'node:net';

const [BEGIN_REQUEST, END_REQUEST, PARAMS, STDIN, STDOUT, STDERR] = [1, 3, 4, 5, 6, 7];
const RESPONDER = 1;

function record(type: number, body: Buffer): Buffer {
  const header = Buffer.alloc(8);
  header.writeUInt8(1, 0);
  header.writeUInt8(type, 1);
  header.writeUInt16BE(1, 2); // request id
  header.writeUInt16BE(body.length, 4);
  return Buffer.concat([header, body]);
}

function length(n: number): Buffer {
  if (n < 128) return Buffer.from([n]);
  const b = Buffer.alloc(4);
  b.writeUInt32BE(n | 0x80000000);
  return b;
}

function params(p: Record<string, string>): Buffer {
  return Buffer.concat(Object.entries(p).flatMap(([k, v]) => [length(Buffer.byteLength(k)), length(Buffer.byteLength(v)), Buffer.from(k), Buffer.from(v)]));
}

export interface FastCgiResponse {
  stdout: string;
  stderr: string;
  appStatus: number;
  /** ms from connecting to END_REQUEST. */
  endedAfterMs: number;
  /** ms from connecting to php-fpm closing the connection. */
  closedAfterMs: number;
}

/** Runs `script` under php-fpm at 127.0.0.1:port (GET, `query` as QUERY_STRING). */
export function fastcgiGet(port: number, script: string, query = ''): Promise<FastCgiResponse> {
  return new Promise((resolve, reject) => {
    const t0 = performance.now();
    const sock = net.connect({ host: '127.0.0.1', port });
    let buf = Buffer.alloc(0);
    let stdout = '';
    let stderr = '';
    let ended: { appStatus: number; at: number } | null = null;
    sock.on('connect', () => {
      const begin = Buffer.alloc(8);
      begin.writeUInt16BE(RESPONDER, 0);
      const p = params({
        SCRIPT_FILENAME: script, SCRIPT_NAME: script, REQUEST_METHOD: 'GET', QUERY_STRING: query,
        SERVER_PROTOCOL: 'HTTP/1.1', GATEWAY_INTERFACE: 'CGI/1.1', REMOTE_ADDR: '127.0.0.1', SERVER_NAME: 'localhost', SERVER_PORT: '80',
      });
      sock.write(Buffer.concat([record(BEGIN_REQUEST, begin), record(PARAMS, p), record(PARAMS, Buffer.alloc(0)), record(STDIN, Buffer.alloc(0))]));
    });
    sock.on('data', (chunk: Buffer) => {
      buf = Buffer.concat([buf, chunk]);
      while (buf.length >= 8) {
        const len = buf.readUInt16BE(4);
        const pad = buf.readUInt8(6);
        if (buf.length < 8 + len + pad) break;
        const type = buf.readUInt8(1);
        const body = buf.subarray(8, 8 + len);
        if (type === STDOUT) stdout += body.toString();
        else if (type === STDERR) stderr += body.toString();
        else if (type === END_REQUEST) ended = { appStatus: body.readUInt32BE(0), at: performance.now() - t0 };
        buf = buf.subarray(8 + len + pad);
      }
    });
    sock.on('error', reject);
    sock.on('close', () => {
      if (!ended) return reject(new Error(`php-fpm closed without END_REQUEST; stdout ${JSON.stringify(stdout)} stderr ${JSON.stringify(stderr)}`));
      resolve({ stdout, stderr, appStatus: ended.appStatus, endedAfterMs: ended.at, closedAfterMs: performance.now() - t0 });
    });
  });
}
