// An S3 API server (s3rver) in a process of its own, for the tests, the demo and the benchmark:
//   node --openssl-legacy-provider s3rver-process.mjs <directory>
// prints {"port":N} on its first line once it listens on 127.0.0.1, and stops on SIGTERM.
// s3rver encrypts its ListObjectsV2 continuation tokens with DES, which OpenSSL 3 only has in its
// legacy provider: hence a process of its own, rather than the flag on the caller's.
import process from 'node:process';
import S3rver from 's3rver';

const directory = process.argv[2];
if (!directory) throw new Error('usage: s3rver-process.mjs <directory>');
const server = new S3rver({ address: '127.0.0.1', port: 0, silent: true, directory });
const { port } = await server.run();
process.stdout.write(`${JSON.stringify({ port })}\n`);
process.on('SIGTERM', () => {
  server.close().then(
    () => process.exit(0),
    () => process.exit(1),
  );
});
