/** Config modules of every kind load in CommonJS and ES-module projects alike (jiti). */
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { findDefaultConfig, loadConfig } from '../src/bbm/config.ts';

const ESM = `export default { work: [{ name: 'kind.EXT', async do() {} }], intervalMs: 1234 };\n`;
const CJS = `module.exports = { work: [{ name: 'kind.EXT', async do() {} }], intervalMs: 1234 };\n`;
const TS = `import type { Config } from 'pg-bbm';\nconst interval: number = 1234;\nexport default { work: [{ name: 'kind.EXT', async do(): Promise<void> {} }], intervalMs: interval } satisfies Config;\n`;

/** What each extension holds: ES-module syntax, except .cjs (and .js in a CommonJS project). */
function source(extension: string, type: 'commonjs' | 'module'): string {
  if (extension === 'cjs' || (extension === 'js' && type === 'commonjs')) return CJS;
  if (extension === 'ts' || extension === 'mts' || extension === 'cts') return TS;
  return ESM;
}

describe.each(['commonjs', 'module'] as const)('a config module in a "type": "%s" project', (type) => {
  let dir: string;
  beforeAll(async () => {
    dir = await mkdtemp(path.join(tmpdir(), `bbm-config-${type}-`));
    await writeFile(path.join(dir, 'package.json'), JSON.stringify({ name: 'app', type }));
  });
  afterAll(async () => {
    await rm(dir, { recursive: true, force: true });
  });

  it.each(['ts', 'mts', 'cts', 'mjs', 'cjs', 'js'])('loads bbm.config.%s', async (extension) => {
    const file = path.join(dir, `bbm.config.${extension}`);
    await writeFile(file, source(extension, type).replace('EXT', extension));
    const config = await loadConfig(file);
    expect(config.work.map((w) => w.name)).toEqual([`kind.${extension}`]);
    expect(config.intervalMs).toBe(1234);
  });

  it('finds bbm.config.ts first when several exist', async () => {
    expect(findDefaultConfig(dir)).toBe(path.join(dir, 'bbm.config.ts'));
  });

  it('says which file failed and why', async () => {
    const broken = path.join(dir, 'broken.config.ts');
    await writeFile(broken, 'export default { work: [ };\n');
    await expect(loadConfig(broken)).rejects.toThrow(/config file .*broken\.config\.ts failed to load/);
    const shapeless = path.join(dir, 'shapeless.config.mjs');
    await writeFile(shapeless, 'export default { work: 3 };\n');
    await expect(loadConfig(shapeless)).rejects.toThrow(/`work` must be an array/);
  });
});
