/**
 * `npm run lint` runs this: every relative link in README.md, CHANGELOG.md and docs/*.md leads
 * somewhere. A link to a file must name one that exists (relative to the page that links to it); a
 * `#anchor`, alone or after a Markdown file, must name a heading of that page, slugged as GitHub
 * slugs it (lower case, punctuation dropped, spaces to hyphens, `-1`, `-2` for repeats). Links
 * with a scheme (https:, mailto:) are not followed, and fenced code and inline code are not links.
 */
import { readdir, readFile, stat } from 'node:fs/promises';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

const ROOT = fileURLToPath(new URL('..', import.meta.url));

/** The pages checked: the README, the changelog and every Markdown file in docs/, as paths from the root. */
async function pages(): Promise<string[]> {
  const docs = (await readdir(path.join(ROOT, 'docs')))
    .filter((name) => name.endsWith('.md'))
    .sort()
    .map((name) => `docs/${name}`);
  const top: string[] = [];
  for (const name of ['README.md', 'CHANGELOG.md']) if (await exists(path.join(ROOT, name))) top.push(name);
  return [...top, ...docs];
}

/** The text outside fenced code blocks, line for line (fenced lines become empty, so line numbers hold). */
function withoutFences(markdown: string): string[] {
  let fence: string | undefined;
  return markdown.split('\n').map((line) => {
    const opens = /^\s*(`{3,}|~{3,})/.exec(line);
    if (fence === undefined) {
      if (opens) {
        fence = opens[1]!;
        return '';
      }
      return line;
    }
    if (opens && opens[1]!.startsWith(fence[0]!) && opens[1]!.length >= fence.length) fence = undefined;
    return '';
  });
}

/** A heading's anchor as GitHub makes it, before repeats are numbered. */
function slug(heading: string): string {
  return heading
    .replace(/!?\[([^\]]*)\]\([^)]*\)/g, '$1')
    .replace(/<[^>]+>/g, '')
    .trim()
    .toLowerCase()
    .replace(/[^\p{L}\p{N}\p{M}\s_-]/gu, '')
    .replace(/\s/g, '-');
}

/** Every anchor a page's headings make (ATX headings outside fenced code). */
function anchors(lines: string[]): Set<string> {
  const seen = new Map<string, number>();
  const result = new Set<string>();
  for (const line of lines) {
    const heading = /^ {0,3}#{1,6}\s+(.*?)\s*#*\s*$/.exec(line);
    if (!heading) continue;
    const base = slug(heading[1]!);
    const count = seen.get(base) ?? 0;
    seen.set(base, count + 1);
    result.add(count === 0 ? base : `${base}-${count}`);
  }
  return result;
}

/** The inline links and images of a page's text (fenced code blanked), outside inline code: each target and its line. */
function targets(lines: string[]): Array<{ target: string; line: number }> {
  // Inline code spans are blanked to spaces of the same length, so that offsets still give line numbers.
  const text = lines.join('\n').replace(/(`+)[\s\S]*?\1/g, (code) => code.replace(/[^\n]/g, ' '));
  const link = /!?\[(?:[^\][]|\[[^\]]*\])*\]\(\s*<?([^)\s>]+)>?(?:\s+"[^"]*")?\s*\)/g;
  return [...text.matchAll(link)].map((m) => ({
    target: m[1]!,
    line: text.slice(0, m.index).split('\n').length + (m[0].slice(0, m[0].indexOf('](')).match(/\n/g)?.length ?? 0),
  }));
}

async function exists(file: string): Promise<boolean> {
  return stat(file).then(
    () => true,
    () => false,
  );
}

async function main(): Promise<void> {
  const list = await pages();
  const text = new Map<string, string[]>();
  for (const page of list) text.set(page, withoutFences(await readFile(path.join(ROOT, page), 'utf8')));
  const anchorsOf = new Map<string, Set<string>>();
  const anchorsFor = async (page: string): Promise<Set<string>> => {
    let found = anchorsOf.get(page);
    if (!found) {
      found = anchors(text.get(page) ?? withoutFences(await readFile(path.join(ROOT, page), 'utf8')));
      anchorsOf.set(page, found);
    }
    return found;
  };

  const problems: string[] = [];
  let links = 0;
  for (const page of list) {
    for (const { target, line } of targets(text.get(page)!)) {
      if (/^[a-z][a-z0-9+.-]*:/i.test(target)) continue;
      links += 1;
      const where = `${page}:${line}`;
      const hash = target.indexOf('#');
      const file = decodeURIComponent(hash < 0 ? target : target.slice(0, hash));
      const anchor = hash < 0 ? undefined : decodeURIComponent(target.slice(hash + 1));
      const resolved = file === '' ? page : path.posix.normalize(path.posix.join(path.posix.dirname(page), file));
      if (resolved.startsWith('..')) {
        problems.push(`${where}: ${target} leads out of the repository`);
        continue;
      }
      if (!(await exists(path.join(ROOT, resolved)))) {
        problems.push(`${where}: ${target}: no file ${resolved}`);
        continue;
      }
      if (anchor === undefined) continue;
      if (!resolved.endsWith('.md')) {
        problems.push(`${where}: ${target}: an anchor into ${resolved}, which is not Markdown`);
        continue;
      }
      if (!(await anchorsFor(resolved)).has(anchor)) {
        problems.push(`${where}: ${target}: ${resolved} has no heading #${anchor}`);
      }
    }
  }

  if (problems.length > 0) {
    for (const problem of problems) process.stderr.write(`docs: ${problem}\n`);
    process.exitCode = 1;
  } else {
    process.stdout.write(`docs: ${links} relative links in ${list.length} pages lead to a file and heading\n`);
  }
}

await main();
