/**
 * A real S3 API server on 127.0.0.1 (s3rver, in a child process), serving buckets from a
 * temporary directory: what the tests, `npm run demo:gc -- --store s3` and the GC benchmark use
 * as object storage, with the AWS SDK as client. Its credentials are s3rver's fixed pair.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { createInterface } from 'node:readline';
import { fileURLToPath } from 'node:url';

/** s3rver checks request signatures against these. */
export const S3RVER_CREDENTIALS = { accessKeyId: 'S3RVER', secretAccessKey: 'S3RVER' } as const;

const CHILD = fileURLToPath(new URL('./s3rver-process.mjs', import.meta.url));

export class LocalS3Server {
  private constructor(
    private readonly child: ChildProcess,
    readonly directory: string,
    readonly port: number,
  ) {}

  static async start({ startTimeoutMs = 20_000 } = {}): Promise<LocalS3Server> {
    const directory = await mkdtemp(path.join(tmpdir(), 'bbm-s3-'));
    const child = spawn(process.execPath, ['--openssl-legacy-provider', CHILD, directory], {
      stdio: ['ignore', 'pipe', 'pipe'],
    });
    let errors = '';
    child.stderr.on('data', (chunk: Buffer) => (errors = (errors + chunk.toString()).slice(-4000)));
    const lines = createInterface({ input: child.stdout });
    try {
      const port = await new Promise<number>((resolve, reject) => {
        const timer = setTimeout(
          () => reject(new Error(`the S3 server did not start in time: ${errors}`)),
          startTimeoutMs,
        );
        lines.once('line', (line) => {
          clearTimeout(timer);
          resolve((JSON.parse(line) as { port: number }).port);
        });
        child.once('exit', (code) => {
          clearTimeout(timer);
          reject(new Error(`the S3 server exited (${code}) before listening: ${errors}`));
        });
      });
      return new LocalS3Server(child, directory, port);
    } catch (error) {
      child.kill('SIGKILL');
      await rm(directory, { recursive: true, force: true });
      throw error;
    }
  }

  get endpoint(): string {
    return `http://127.0.0.1:${this.port}`;
  }

  /** Creates a bucket with a fresh name and returns the name. */
  async createBucket(prefix = 'bbm'): Promise<string> {
    const bucket = `${prefix}-${randomBytes(6).toString('hex')}`;
    const { S3Client, CreateBucketCommand } = await import('@aws-sdk/client-s3');
    const client = new S3Client({
      endpoint: this.endpoint,
      region: 'us-east-1',
      forcePathStyle: true,
      credentials: S3RVER_CREDENTIALS,
    });
    try {
      await client.send(new CreateBucketCommand({ Bucket: bucket }));
    } finally {
      client.destroy();
    }
    return bucket;
  }

  /** Where s3rver keeps an object's bytes; the file's mtime is the object's LastModified. */
  objectPath(bucket: string, key: string): string {
    const parts = key.split('/');
    return path.join(this.directory, bucket, ...parts.slice(0, -1), `${parts.at(-1)}._S3rver_object`);
  }

  async stop(): Promise<void> {
    if (this.child.exitCode === null) {
      const exited = new Promise((resolve) => this.child.once('exit', resolve));
      this.child.kill('SIGTERM');
      await exited;
    }
    await rm(this.directory, { recursive: true, force: true });
  }
}
