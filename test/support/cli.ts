/** `bbm` called in-process, its output captured. */
import { main, type Io } from '../../src/cli/main.ts';

export async function bbm(
  args: string[],
  env: NodeJS.ProcessEnv = {},
): Promise<{ code: number; out: string; err: string }> {
  let out = '';
  let err = '';
  const io: Io = { out: (t) => (out += `${t}\n`), err: (t) => (err += `${t}\n`), env, tty: false };
  const code = await main(args, io);
  return { code, out, err };
}
