/**
 * The blob stores the GC tests run against: a temporary directory, and a real S3 API server
 * (s3rver in a process of its own, src/dev/s3-server.ts) on 127.0.0.1 with the AWS SDK as client,
 * optionally behind a proxy that can answer 503 or refuse connections, as object storage does.
 */
import { mkdtemp, rm, utimes } from 'node:fs/promises';
import { createServer, request, type Server } from 'node:http';
import type { AddressInfo } from 'node:net';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { afterAll, beforeAll } from 'vitest';
import { LocalS3Server, S3RVER_CREDENTIALS } from '../../src/dev/s3-server.ts';
import { FilesystemBlobStore, S3BlobStore, type BlobStore, type S3BlobStoreOptions } from '../../src/work/gc/index.ts';

export interface StoreUnderTest {
  store: BlobStore;
  /** Sets an object's last-modified time, as the store would report it had the object been written then. */
  age(key: string, at: Date): Promise<void>;
  /** The environment that makes test/fixtures/gc.config.ts (a `bbm run` process) use the same store. */
  env: Record<string, string>;
  cleanup(): Promise<void>;
}

export interface StoreKind {
  name: 'filesystem' | 's3';
  open(): Promise<StoreUnderTest>;
}

const listen = (server: Server): Promise<number> =>
  new Promise((resolve) => server.listen(0, '127.0.0.1', () => resolve((server.address() as AddressInfo).port)));

/** The test file's S3 server: started before its tests, stopped after them. */
export interface S3TestServer {
  readonly server: LocalS3Server;
  /** A store on a new, empty bucket; `endpoint` to reach the server another way (a proxy). */
  newStore(options?: Partial<S3BlobStoreOptions>): Promise<{ store: S3BlobStore; bucket: string }>;
}

export function useS3Server(): S3TestServer {
  let server: LocalS3Server | undefined;
  beforeAll(async () => {
    server = await LocalS3Server.start();
  });
  afterAll(() => server?.stop());
  const started = () => {
    if (!server) throw new Error('the S3 server is not started (use it inside a test)');
    return server;
  };
  return {
    get server() {
      return started();
    },
    async newStore(options = {}) {
      const bucket = await started().createBucket();
      const store = new S3BlobStore({
        bucket,
        endpoint: started().endpoint,
        credentials: S3RVER_CREDENTIALS,
        ...options,
      });
      return { store, bucket };
    },
  };
}

/** The two stores every GC test runs against; the S3 one needs the file's server (useS3Server). */
export function storeKinds(s3: S3TestServer): StoreKind[] {
  return [
    {
      name: 'filesystem',
      async open() {
        const root = await mkdtemp(path.join(tmpdir(), 'bbm-gc-'));
        return {
          store: new FilesystemBlobStore(root),
          age: (key, at) => utimes(path.join(root, key), at, at),
          env: { BBM_TEST_GC_ROOT: root },
          cleanup: () => rm(root, { recursive: true, force: true }),
        };
      },
    },
    {
      name: 's3',
      async open() {
        const { store, bucket } = await s3.newStore();
        return {
          store,
          age: (key, at) => utimes(s3.server.objectPath(bucket, key), at, at),
          env: { BBM_TEST_GC_S3_ENDPOINT: s3.server.endpoint, BBM_TEST_GC_S3_BUCKET: bucket },
          cleanup: () => store.close(),
        };
      },
    },
  ];
}

/**
 * A proxy in front of an S3 server that forwards every request unchanged (the signatures stay
 * valid), except that it can answer the next requests of a method with an error status, as an
 * overloaded S3 does (503 SlowDown), and count what it served.
 */
export class FaultyProxy {
  readonly #server = createServer((incoming, outgoing) => {
    this.requests += 1;
    if (this.#failures > 0 && incoming.method === this.#failMethod) {
      this.#failures -= 1;
      this.failed += 1;
      incoming.resume();
      outgoing.writeHead(503, { 'content-type': 'application/xml' });
      outgoing.end(
        '<?xml version="1.0" encoding="UTF-8"?><Error><Code>SlowDown</Code><Message>Please reduce your request rate.</Message></Error>',
      );
      return;
    }
    const upstream = request(
      {
        host: '127.0.0.1',
        port: this.upstreamPort,
        method: incoming.method,
        path: incoming.url,
        headers: incoming.headers,
      },
      (response) => {
        outgoing.writeHead(response.statusCode ?? 502, response.headers);
        response.pipe(outgoing);
      },
    );
    upstream.on('error', () => outgoing.destroy());
    incoming.pipe(upstream);
  });
  #failures = 0;
  #failMethod = '';
  port = 0;
  requests = 0;
  failed = 0;

  constructor(private readonly upstreamPort: number) {}

  get endpoint(): string {
    return `http://127.0.0.1:${this.port}`;
  }

  async start(): Promise<void> {
    this.port = await listen(this.#server);
  }

  /** The next `count` requests with this method get 503 SlowDown. */
  failNext(method: string, count: number): void {
    this.#failMethod = method;
    this.#failures = count;
  }

  async stop(): Promise<void> {
    this.#server.closeAllConnections();
    await new Promise((resolve) => this.#server.close(resolve));
  }
}
