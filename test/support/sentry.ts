/** A Sentry ingest endpoint for the process tests: what a real @sentry/node client sends, kept. */
import { createServer, type IncomingMessage } from 'node:http';
import type { AddressInfo } from 'node:net';
import { gunzipSync } from 'node:zlib';

export interface Envelope {
  header: Record<string, unknown>;
  items: Array<{ header: { type?: string }; payload: Record<string, unknown> }>;
  raw: string;
}

/** A Sentry ingest endpoint on 127.0.0.1 that keeps every envelope it receives. */
export async function sentryIngest(): Promise<{ dsn: string; envelopes: Envelope[]; close: () => Promise<void> }> {
  const envelopes: Envelope[] = [];
  const read = async (request: IncomingMessage) => {
    const chunks: Buffer[] = [];
    for await (const chunk of request) chunks.push(chunk as Buffer);
    const body = Buffer.concat(chunks);
    return (request.headers['content-encoding'] === 'gzip' ? gunzipSync(body) : body).toString('utf8');
  };
  const server = createServer((request, response) => {
    void read(request).then((raw) => {
      const [header, ...rest] = raw.split('\n').filter(Boolean);
      const items: Envelope['items'] = [];
      for (let i = 0; i + 1 < rest.length; i += 2)
        items.push({ header: JSON.parse(rest[i]!), payload: JSON.parse(rest[i + 1]!) });
      envelopes.push({ header: JSON.parse(header ?? '{}'), items, raw });
      response.writeHead(200, { 'content-type': 'application/json' }).end('{}');
    });
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  const { port } = server.address() as AddressInfo;
  return {
    dsn: `http://publickey@127.0.0.1:${port}/42`,
    envelopes,
    close: () => new Promise((resolve) => server.close(() => resolve())),
  };
}

/** The events among the envelopes (a client also sends sessions and client reports). */
export function sentryEvents(envelopes: readonly Envelope[]): Record<string, unknown>[] {
  return envelopes.flatMap((e) => e.items.filter((i) => i.header.type === 'event').map((i) => i.payload));
}
