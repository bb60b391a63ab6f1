/**
 * HTTP/1.1 requests written byte for byte on a socket: fetch and node:http refuse to send much of
 * what a hostile client can (bad request lines, raw bytes, lying headers), and the servers under
 * test must answer all of it.
 */
import { connect } from 'node:net';

export interface RawResponse {
  /** The status of the (final) response, or null when the server closed or timed out without one. */
  status: number | null;
  /** Everything the server sent, as latin1 (bytes kept one to one). */
  text: string;
  /** Milliseconds until the server closed the connection. */
  ms: number;
}

/**
 * Sends `request` (a string or bytes) to 127.0.0.1:`port` and reads until the server closes the
 * connection or `timeoutMs` passes (then the socket is destroyed and what came so far returned).
 * Requests should say `connection: close` so that the server closes after answering.
 */
export function rawRequest(port: number, request: string | Buffer, timeoutMs = 10_000): Promise<RawResponse> {
  return new Promise((resolve) => {
    const started = Date.now();
    const chunks: Buffer[] = [];
    const socket = connect(port, '127.0.0.1');
    const done = () => {
      clearTimeout(timer);
      socket.destroy();
      const text = Buffer.concat(chunks).toString('latin1');
      // The final response's status: an interim one (100 Continue) may come first.
      const final = [...text.matchAll(/^HTTP\/1\.[01] (\d{3})/gm)].map((m) => Number(m[1])).find((n) => n >= 200);
      resolve({ status: final ?? null, text, ms: Date.now() - started });
    };
    const timer = setTimeout(done, timeoutMs);
    socket.on('data', (chunk: Buffer) => chunks.push(chunk));
    socket.on('close', done);
    // The server may close while a large request is still being written (it answered already).
    socket.on('error', () => {});
    socket.write(request);
  });
}

/** A well-formed request: `method path`, the given header lines, and the body with its length. */
export function httpRequest(
  method: string,
  path: string,
  { headers = [], body }: { headers?: string[]; body?: string | Buffer } = {},
): Buffer {
  const bytes = body === undefined ? undefined : Buffer.isBuffer(body) ? body : Buffer.from(body, 'utf8');
  const head = [
    `${method} ${path} HTTP/1.1`,
    'host: 127.0.0.1',
    'connection: close',
    ...headers,
    ...(bytes ? [`content-length: ${bytes.length}`] : []),
  ];
  return Buffer.concat([Buffer.from(`${head.join('\r\n')}\r\n\r\n`, 'latin1'), bytes ?? Buffer.alloc(0)]);
}
