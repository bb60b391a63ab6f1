// The foreground of `npm run bench`, in a process of its own as pgbench would be, so that its
// latencies are the database's and not the benchmark process's event loop (the engine runs there):
//   node foreground-client.mjs <url> <rows> <updates per second>
// Prints "ready" once connected, runs until its stdin closes, then prints the latencies (ms) as JSON.
import process from 'node:process';
import { performance } from 'node:perf_hooks';
import { setTimeout as sleep } from 'node:timers/promises';
import pg from 'pg';

const [url, rows, perSecond] = [process.argv[2], Number(process.argv[3]), Number(process.argv[4])];
const UPDATE = 'UPDATE bench_items SET payload = md5(random()::text) WHERE id = $1';
const client = new pg.Client({ connectionString: url });
await client.connect();
let done = false;
process.stdin.on('end', () => (done = true));
process.stdin.resume();
process.stdout.write('ready\n');
const latencies = [];
const intervalMs = 1000 / perSecond;
let next = performance.now();
while (!done) {
  const id = 1 + Math.floor(Math.random() * rows);
  const started = performance.now();
  await client.query(UPDATE, [id]);
  latencies.push(performance.now() - started);
  // A fixed arrival rate: the next update is due one interval after the last was due.
  next += intervalMs;
  const wait = next - performance.now();
  if (wait > 0) await sleep(wait);
  else next = performance.now();
}
await client.end();
process.stdout.write(`${JSON.stringify(latencies)}\n`);
