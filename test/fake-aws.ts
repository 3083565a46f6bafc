/**
 * A stand-in for the two AWS APIs OffLog calls at cold start, SSM
 * GetParameter and Secrets Manager GetSecretValue (JSON 1.1 over HTTP), on
 * a free loopback port. The real AWS SDK clients talk to it through
 * AWS_ENDPOINT_URL; it records which names were asked for.
 */
import http from 'node:http';
import { after, before } from 'node:test';
import type { AddressInfo } from 'node:net';

export interface FakeAws {
  url: string;
  /** What was asked, in order: `ssm:<name>` or `secretsmanager:<id>`. */
  calls: string[];
  /** The environment that points the SDK here, with dummy credentials. */
  env: Record<string, string>;
  close(): Promise<void>;
}

export async function fakeAws(values: { parameters?: Record<string, string>; secrets?: Record<string, string> }): Promise<FakeAws> {
  const calls: string[] = [];
  const server = http.createServer((req, res) => {
    let body = '';
    req.on('data', (c: Buffer) => (body += c.toString('utf8')));
    req.on('end', () => {
      const target = String(req.headers['x-amz-target'] ?? '');
      const input = JSON.parse(body || '{}') as { Name?: string; SecretId?: string };
      const reply = (status: number, payload: unknown) => {
        res.writeHead(status, { 'content-type': 'application/x-amz-json-1.1' });
        res.end(JSON.stringify(payload));
      };
      if (target === 'AmazonSSM.GetParameter') {
        calls.push(`ssm:${input.Name}`);
        const value = values.parameters?.[input.Name ?? ''];
        if (value === undefined) return reply(400, { __type: 'ParameterNotFound', message: `no parameter ${input.Name}` });
        return reply(200, { Parameter: { Name: input.Name, Type: 'SecureString', Value: value, Version: 1 } });
      }
      if (target === 'secretsmanager.GetSecretValue') {
        calls.push(`secretsmanager:${input.SecretId}`);
        const value = values.secrets?.[input.SecretId ?? ''];
        if (value === undefined) return reply(400, { __type: 'ResourceNotFoundException', message: `no secret ${input.SecretId}` });
        return reply(200, { ARN: `arn:aws:secretsmanager:eu-west-1:000000000000:secret:${input.SecretId}-AbCdEf`, Name: input.SecretId, SecretString: value });
      }
      reply(400, { __type: 'UnknownOperationException', message: target });
    });
  });
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
  const url = `http://127.0.0.1:${(server.address() as AddressInfo).port}`;
  return {
    url,
    calls,
    env: { AWS_ENDPOINT_URL: url, AWS_REGION: 'eu-west-1', AWS_ACCESS_KEY_ID: 'test', AWS_SECRET_ACCESS_KEY: 'test' },
    close: () => new Promise((r) => server.close(() => r())),
  };
}

/**
 * A stand-in for the whole test file: started before its first test, with
 * its environment put in process.env (the SDK reads its endpoint and
 * credentials there, as it does in Lambda), and all of it undone after the
 * last. Returns a getter, since the stand-in exists only once started.
 */
export function fakeAwsInEnv(values: Parameters<typeof fakeAws>[0]): () => FakeAws {
  let aws: FakeAws | undefined;
  const saved: Record<string, string | undefined> = {};
  before(async () => {
    aws = await fakeAws(values);
    for (const [k, v] of Object.entries(aws.env)) {
      saved[k] = process.env[k];
      process.env[k] = v;
    }
  });
  after(async () => {
    for (const [k, v] of Object.entries(saved)) {
      if (v === undefined) delete process.env[k];
      else process.env[k] = v;
    }
    await aws?.close();
  });
  return () => {
    if (aws === undefined) throw new Error('the AWS stand-in is not started yet (use it inside a test)');
    return aws;
  };
}
