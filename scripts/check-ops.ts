/**
 * `npm run lint` runs this: the operations files in `ops/` must agree with the engine.
 *
 * - ops/grafana/pg-bbm.json: valid JSON; every panel has a query; every query names only
 *   metrics the engine exports (METRIC_HELP, plus a histogram's _bucket/_sum/_count series), each
 *   limited to the databases picked in the dashboard's `database` variable.
 * - ops/prometheus/*.yaml: alerting rules that parse, each with an alert name and an expression
 *   naming only exported metrics.
 * - ops/k8s/*.yaml: every document parses; each container that runs `bbm` passes a command and
 *   flags that command takes (args.ts); a worker Deployment probes /readyz and /healthz on its
 *   metrics port and gives pods a termination grace period longer than `--grace-period`.
 * - ops/k8s/Dockerfile: its `bbm` command is one the README shows.
 */
import { readdir, readFile } from 'node:fs/promises';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { parseAllDocuments } from 'yaml';
import { METRIC_HELP } from '../src/bbm/metrics.ts';
import { COMMANDS, COMMON_FLAGS, type Flag } from '../src/cli/args.ts';

const ROOT = fileURLToPath(new URL('..', import.meta.url));
const problems: string[] = [];
const problem = (text: string) => problems.push(text);

// Grafana
const dashboard = JSON.parse(await readFile(path.join(ROOT, 'ops/grafana/pg-bbm.json'), 'utf8')) as {
  panels: Array<{ title: string; targets?: Array<{ expr: string }> }>;
};
const exported = new Set(Object.keys(METRIC_HELP));
/** A PromQL expression names at least one metric, and only metrics pg-bbm exports. */
const checkExpression = (where: string, expr: string) => {
  const metrics = expr.match(/\bbbm_[a-z_]+/g) ?? [];
  if (metrics.length === 0) problem(`${where} queries no bbm_ metric: ${expr}`);
  for (const metric of metrics) {
    const base = metric.replace(/_(bucket|sum|count)$/, '');
    if (!exported.has(metric) && !exported.has(base))
      problem(`${where} queries ${metric}, which pg-bbm does not export`);
  }
};
const PICKED_DATABASES = 'database=~"$database"';
let queries = 0;
for (const panel of dashboard.panels) {
  if (!panel.targets?.length) problem(`grafana: panel "${panel.title}" has no query`);
  for (const { expr } of panel.targets ?? []) {
    queries += 1;
    checkExpression(`grafana: "${panel.title}"`, expr);
    for (const selector of expr.match(/\bbbm_[a-z_]+(\{[^}]*\})?/g) ?? []) {
      if (!selector.includes(PICKED_DATABASES))
        problem(`grafana: "${panel.title}" reads ${selector} without {${PICKED_DATABASES}}`);
    }
  }
}

// Prometheus alerting rules
const rulesDir = path.join(ROOT, 'ops/prometheus');
let alerts = 0;
for (const file of (await readdir(rulesDir)).filter((f) => f.endsWith('.yaml')).sort()) {
  for (const doc of parseAllDocuments(await readFile(path.join(rulesDir, file), 'utf8'))) {
    if (doc.errors.length > 0) {
      problem(`${file}: ${doc.errors[0]!.message}`);
      continue;
    }
    const { groups } = doc.toJS() as {
      groups?: Array<{ name?: string; rules?: Array<{ alert?: string; expr?: unknown }> }>;
    };
    if (!groups?.length) problem(`${file}: no rule groups`);
    for (const group of groups ?? []) {
      for (const rule of group.rules ?? []) {
        alerts += 1;
        if (!rule.alert) problem(`${file}: a rule of group ${group.name ?? '?'} has no alert name`);
        if (typeof rule.expr !== 'string') problem(`${file}: alert ${rule.alert ?? '?'} has no expression`);
        else checkExpression(`${file}: alert ${rule.alert ?? '?'}`, rule.expr);
      }
    }
  }
}
if (alerts === 0) problem('ops/prometheus: no alerting rules');

// Kubernetes
interface Container {
  name: string;
  command?: string[];
  args?: string[];
  readinessProbe?: { httpGet?: { path: string; port: number | string } };
  livenessProbe?: { httpGet?: { path: string; port: number | string } };
}
interface PodSpec {
  terminationGracePeriodSeconds?: number;
  containers: Container[];
}
const readme = await readFile(path.join(ROOT, 'README.md'), 'utf8');
const k8s = path.join(ROOT, 'ops/k8s');
let bbmContainers = 0;
for (const file of (await readdir(k8s)).filter((f) => f.endsWith('.yaml')).sort()) {
  for (const doc of parseAllDocuments(await readFile(path.join(k8s, file), 'utf8'))) {
    if (doc.errors.length > 0) {
      problem(`${file}: ${doc.errors[0]!.message}`);
      continue;
    }
    const manifest = doc.toJS() as {
      kind: string;
      metadata?: { name?: string };
      spec?: { template?: { spec: PodSpec } };
    };
    // Deployments and Jobs alike keep their pod in spec.template.spec.
    const podSpec = manifest.spec?.template?.spec;
    for (const container of podSpec?.containers ?? []) {
      const argv = [...(container.command ?? []), ...(container.args ?? [])];
      const at = argv.findIndex((word) => word === 'bbm' || word.endsWith('/bbm'));
      if (at < 0) continue;
      bbmContainers += 1;
      const where = `${file} ${manifest.kind}/${manifest.metadata?.name ?? '?'}`;
      const command = argv[at + 1] ?? '';
      const spec = COMMANDS[command];
      if (!spec) {
        problem(`${where}: bbm has no command ${JSON.stringify(command)}`);
        continue;
      }
      const flags = argv
        .slice(at + 2)
        .filter((word) => word.startsWith('--'))
        .map((word) => word.slice(2).split('=')[0] as Flag);
      for (const flag of flags) {
        if (!spec.flags.includes(flag) && !COMMON_FLAGS.includes(flag))
          problem(`${where}: bbm ${command} takes no --${flag}`);
      }
      if (manifest.kind === 'Deployment' && command === 'run') {
        const port = Number(argv[argv.indexOf('--metrics-port') + 1]);
        if (
          container.readinessProbe?.httpGet?.path !== '/readyz' ||
          Number(container.readinessProbe.httpGet.port) !== port
        ) {
          problem(`${where}: readiness must probe /readyz on the metrics port ${port}`);
        }
        if (
          container.livenessProbe?.httpGet?.path !== '/healthz' ||
          Number(container.livenessProbe.httpGet.port) !== port
        ) {
          problem(`${where}: liveness must probe /healthz on the metrics port ${port}`);
        }
        const graceMs = Number(argv[argv.indexOf('--grace-period') + 1]);
        if (!(graceMs > 0) || !((podSpec?.terminationGracePeriodSeconds ?? 30) * 1000 > graceMs)) {
          problem(`${where}: terminationGracePeriodSeconds must exceed --grace-period (${graceMs} ms)`);
        }
      }
    }
  }
}
if (bbmContainers === 0) problem('ops/k8s: no container runs bbm');

// Dockerfile
const dockerfile = await readFile(path.join(k8s, 'Dockerfile'), 'utf8');
const cmd = /^CMD\s+(\[.*\])\s*$/m.exec(dockerfile);
if (!cmd) problem('Dockerfile: no CMD in exec form');
else {
  const argv = JSON.parse(cmd[1]!) as string[];
  const shown = argv
    .slice(argv.findIndex((word) => word === 'bbm' || word.endsWith('/bbm')))
    .map((w) => (w.endsWith('/bbm') ? 'bbm' : w));
  if (!readme.includes(`npx ${shown.join(' ')}`))
    problem(`Dockerfile: \`${shown.join(' ')}\` is not a command the README shows (as \`npx ${shown.join(' ')}\`)`);
}
if (!/^USER\s+(?!root\b|0\b)\S+/m.test(dockerfile)) problem('Dockerfile: the image must run as a non-root USER');

if (problems.length > 0) {
  for (const text of problems) process.stderr.write(`ops: ${text}\n`);
  process.exitCode = 1;
} else {
  process.stdout.write(
    `ops: the Grafana dashboard's ${queries} queries and ${alerts} alerting rules name exported metrics; ${bbmContainers} bbm containers in ops/k8s agree with the CLI\n`,
  );
}
