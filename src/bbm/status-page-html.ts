/**
 * The status page's HTML: server-rendered, every value from a row escaped by `html`. Parts marked
 * `data-live` (with an id) are what the page's script swaps in from a fresh copy every 2 s, so the
 * server alone decides what is shown, and which actions a migration's state allows.
 */
import {
  ACTIONS_BY_STATUS,
  MAX_LANES,
  MigrationStatus,
  type MigrationStatusName,
  type OperatorAction,
} from '../store/codes.ts';
import type { JobPoint, LiveWorker } from '../store/dashboard.ts';
import type { JobRow } from '../store/jobs.ts';
import {
  boundsText,
  dutyCycleText,
  keyProgressText,
  keyText,
  lanesText,
  progressIsEstimate,
  progressText,
  verificationText,
} from './report-text.ts';
import { projectionText, rehearsalHeadline } from './rehearse-text.ts';
import type { ScheduleReport } from './schedules.ts';
import type { MigrationReport } from './types.ts';
import { chart } from './status-chart.ts';

/** What the page lets an operator do: act at all (it has the token), and rehearse (it has the work functions). */
export interface Controls {
  writable: boolean;
  rehearse: boolean;
}

export type PageAction = OperatorAction | 'rehearse';

/**
 * Where the page offers rehearse (given the work functions): a migration not running yet, or
 * paused. rehearseMigration takes a running one too; from the page, pause it first.
 */
export const REHEARSE_STATUSES: readonly MigrationStatusName[] = ['paused', 'awaiting_approval', 'active'];

/** The actions a migration's state allows on the page (ACTIONS_BY_STATUS, and rehearse where offered). */
export function actionsFor(status: MigrationStatusName, rehearse: boolean): PageAction[] {
  const actions: PageAction[] = [...ACTIONS_BY_STATUS[status]];
  if (rehearse && REHEARSE_STATUSES.includes(status)) actions.push('rehearse');
  return actions;
}

/** Text as HTML: every character a row may hold that means something in markup, escaped. */
export function html(text: unknown): string {
  return String(text).replace(/[&<>"']/g, (c) => `&#${c.charCodeAt(0)};`);
}

const STYLE = `*{box-sizing:border-box}body{font:14px/1.45 system-ui,sans-serif;margin:0 auto;padding:1rem;max-width:80rem;color:#1d2430;background:#f6f7f9}
h1{font-size:1.3rem;margin:.2rem 0 .8rem}h2{font-size:1.05rem;margin:1.4rem 0 .5rem}a{color:#1a5fb4}
table{border-collapse:collapse;width:100%;background:#fff}th,td{text-align:left;padding:.35rem .5rem;border-bottom:1px solid #e3e6ea;vertical-align:top}
th{font-weight:600;color:#556;font-size:.85rem}.wrap{overflow-x:auto}progress{width:7rem;vertical-align:middle}
.note{color:#8a4b00}.ro{background:#fff4d6;padding:.5rem}.muted{color:#667}
button{margin:.1rem;padding:.3rem .7rem;border:1px solid #b8c0cc;border-radius:4px;background:#fff;cursor:pointer;font:inherit}
button[data-action=delete]{border-color:#d9a3a3;color:#a11}button[data-action=approve]{border-color:#9c6;background:#efe}
.badge{display:inline-block;padding:.05rem .5rem;border-radius:1rem;font-size:.8rem;font-weight:600;color:#fff;background:#778;white-space:nowrap}
.s-running{background:#1a5fb4}.s-active{background:#2a8a8a}.s-paused{background:#6b7280}.s-failed{background:#c01c28}
.s-finished{background:#26a269}.s-awaiting_approval{background:#c88800}
.cards{display:flex;flex-wrap:wrap;gap:.5rem;margin:0;padding:0;list-style:none}.cards li{background:#fff;border:1px solid #e3e6ea;border-radius:6px;padding:.4rem .7rem}
.cards b{font-size:1.2rem;margin-right:.3rem}.controls input{width:12rem;max-width:100%}
svg.chart{width:100%;height:auto;background:#fff;border:1px solid #e3e6ea}.chart text{font-size:10px;fill:#556}
.chart .line{fill:none;stroke:#1a5fb4;stroke-width:1.5}.chart .pt{fill:#1a5fb4}.chart .dur .line{stroke:#8a4b00}.chart .dur .pt{fill:#8a4b00}
.chart .fail{stroke:#c01c28;stroke-width:1.5}.chart .failpt{fill:#c01c28}.chart .axis{stroke:#bbb}
pre{background:#fff;border:1px solid #e3e6ea;padding:.5rem;overflow-x:auto;font-size:.85rem}
@media (max-width:640px){body{padding:.5rem;font-size:13px}progress{width:5rem}
#migrations thead{display:none}#migrations tr{display:block;background:#fff;border:1px solid #e3e6ea;border-radius:6px;margin:.4rem 0;padding:.3rem}
#migrations td{display:block;border:0;padding:.15rem .3rem}#migrations td:empty{display:none}}`;

export function shell(title: string, body: string, { writable, rehearse }: Controls): string {
  return `<!doctype html><html lang="en"><head><meta charset="utf-8"><meta name="viewport" content="width=device-width,initial-scale=1">
<title>${html(title)}</title><style>${STYLE}</style></head><body data-writable="${writable}">
<h1>${html(title)}</h1>
${
  writable
    ? '<p class="controls"><label>Operator token <input id="token" type="password" autocomplete="off"></label> <label>Your name <input id="operator" autocomplete="off" placeholder="recorded on approvals"></label> <span class="muted">(kept in this tab only)</span></p>'
    : `<p class="ro">Read-only: start the server with <code>--dashboard-token</code> (or BBM_DASHBOARD_TOKEN) to pause, resume, retry, approve${rehearse ? ', rehearse' : ''} and delete from here.</p>`
}
${body}<p id="message" role="status"></p><script src="/status-page.js"></script></body></html>`;
}

const badge = (status: MigrationStatusName) =>
  `<span class="badge s-${html(status)}" data-field="status">${html(status)}</span>`;

const pace = (r: MigrationReport) =>
  [
    r.rowsPerSecond === null ? '' : `${Math.round(r.rowsPerSecond).toLocaleString('en')} rows/s`,
    r.etaSeconds === null ? '' : `${Math.round(r.etaSeconds)} s left`,
  ]
    .filter(Boolean)
    .join(', ');

const lanes = (r: MigrationReport) =>
  `${r.lanesInUse}/${r.lanes} lanes${r.lanesAllowed < r.lanes ? ` (${r.lanesAllowed} allowed)` : ''}, batch ${r.batchSize}`;

/** Why the migration is not going at full pace (or at all), most pressing first. */
export function heldBack(r: MigrationReport): string[] {
  const why: string[] = [];
  if (r.failureMessage !== null) why.push(`failed: ${r.failureMessage}`);
  if (r.status === 'awaiting_approval') why.push('awaiting approval');
  if (r.holdReason !== null) why.push(`held until ${r.onHoldUntil?.toISOString() ?? '?'}: ${r.holdReason}`);
  const lanes = lanesText(r);
  if (lanes !== null) why.push(lanes);
  if (r.waitingForWork) why.push(`waiting for a worker with ${r.jobSignatureName}`);
  if (r.failureMessage === null && r.lastError !== null) why.push(`last job error: ${r.lastError}`);
  if (r.approvedBy !== null) why.push(`approved by ${r.approvedBy} at ${r.approvedAt?.toISOString() ?? '?'}`);
  return why;
}

/** Only the actions the migration's state allows (the server refuses the others with 409 too). */
function actions(r: MigrationReport, { writable, rehearse }: Controls): string {
  return actionsFor(r.status, rehearse)
    .map((a) => `<button data-action="${a}" ${writable ? '' : 'disabled'}>${a}</button>`)
    .join('');
}

function migrationRow(r: MigrationReport, controls: Controls, link: boolean): string {
  const name = link ? `<a href="/migrations/${html(encodeURIComponent(r.name))}">${html(r.name)}</a>` : html(r.name);
  return `<tr data-name="${html(r.name)}" data-status="${html(r.status)}"><td>${name}</td><td>${badge(r.status)}</td>
<td><progress max="1" value="${r.progress}"></progress> <span data-field="progress">${html(progressText(r))}</span></td>
<td data-field="pace">${html(pace(r))}</td><td data-field="lanes">${html(lanes(r))}</td>
<td data-field="note" class="note">${html(heldBack(r).join('; '))}</td><td data-field="actions">${actions(r, controls)}</td></tr>`;
}

function migrationTable(reports: MigrationReport[], controls: Controls, link: boolean): string {
  return `<div class="wrap"><table id="migrations"><thead><tr><th>migration</th><th>status</th><th>progress</th><th>pace</th><th>lanes</th><th>held back by</th><th>actions</th></tr></thead>
<tbody id="rows" data-live>${reports.map((r) => migrationRow(r, controls, link)).join('\n')}</tbody></table></div>`;
}

const ago = (at: Date, now: number) => `${Math.max(0, Math.round((now - at.getTime()) / 1000))} s ago`;

function overview(reports: MigrationReport[], workers: LiveWorker[], now: number): string {
  const counts = (Object.keys(MigrationStatus) as MigrationStatusName[])
    .map((status) => [status, reports.filter((r) => r.status === status).length] as const)
    .filter(([, n]) => n > 0);
  const rate = reports.reduce((sum, r) => sum + (r.rowsPerSecond ?? 0), 0);
  const list = (title: string, id: string, items: string[]) =>
    items.length === 0 ? '' : `<h2>${title}</h2><ul id="${id}">${items.map((i) => `<li>${i}</li>`).join('')}</ul>`;
  const holds = reports
    .filter((r) => r.holdReason !== null || r.lanesAllowed < r.lanes)
    .map(
      (r) =>
        `<b>${html(r.name)}</b>: ${html(
          r.holdReason !== null ? `${r.holdReason} (until ${r.onHoldUntil?.toISOString() ?? '?'})` : lanesText(r),
        )}`,
    );
  // A worker's duty cycle slows every migration it runs: named by the worker.
  const resting = workers.flatMap((w) => {
    const text = dutyCycleText(w.dutyCycle);
    return text === null ? [] : [`<b>${html(`worker ${w.hostname} pid ${w.pid}`)}</b>: ${html(text)}`];
  });
  const awaiting = reports
    .filter((r) => r.status === 'awaiting_approval')
    .map((r) => `<b>${html(r.name)}</b> (${html(r.jobSignatureName)} over ${html(r.tableName)}.${html(r.columnName)})`);
  const waiting = reports
    .filter((r) => r.waitingForWork)
    .map((r) => `<b>${html(r.name)}</b> needs work function <code>${html(r.jobSignatureName)}</code>`);
  return `<section id="overview" data-live><ul class="cards" id="counts">
${counts.map(([status, n]) => `<li data-status="${status}"><b>${n}</b>${badge(status)}</li>`).join('')}
<li><b data-field="fleet-rate">${Math.round(rate).toLocaleString('en')}</b>rows/s, all workers</li>
<li><b>${workers.length}</b>live worker${workers.length === 1 ? '' : 's'}</li></ul>
${list('Awaiting approval', 'awaiting', awaiting)}${list('Held back', 'holds', [...holds, ...resting])}${list('Waiting for a work function no live worker has', 'waiting', waiting)}
<h2>Live workers</h2>${
    workers.length === 0
      ? '<p class="muted">None heard from in the last 90 s.</p>'
      : `<div class="wrap"><table id="workers"><thead><tr><th>host</th><th>pid</th><th>work functions</th><th>last heartbeat</th><th>up since</th><th>pace</th></tr></thead><tbody>
${workers
  .map(
    (w) =>
      `<tr><td>${html(w.hostname)}</td><td>${w.pid}</td><td>${html(w.workNames.join(', '))}</td>` +
      `<td title="${html(w.lastSeenAt.toISOString())}">${ago(w.lastSeenAt, now)}</td><td>${html(w.startedAt.toISOString())}</td>` +
      `<td data-field="duty-cycle" class="note">${html(dutyCycleText(w.dutyCycle) ?? '')}</td></tr>`,
  )
  .join('\n')}</tbody></table></div>`
  }</section>`;
}

function scheduleTable(schedules: ScheduleReport[]): string {
  if (schedules.length === 0) return '';
  return `<h2>Schedules</h2><div class="wrap"><table><thead><tr><th>schedule</th><th>every</th><th>work</th><th>last pass</th><th>status</th><th>next due</th></tr></thead><tbody>
${schedules
  .map(
    (s) =>
      `<tr><td>${html(s.name)}</td><td>${html(s.every)}</td><td>${html(s.work)}</td><td>${html(s.lastPass?.name ?? '-')}</td>` +
      `<td>${html(s.lastPass?.status ?? '-')}</td><td>${html(s.nextDue === null ? 'after the last pass' : s.nextDue.toISOString())}</td></tr>`,
  )
  .join('\n')}</tbody></table></div>`;
}

/** A database of a fleet, as the page shows it: whether it answered, and if not, why. */
export interface DatabaseHealth {
  name: string;
  up: boolean;
  error?: string | undefined;
}

/** The fleet's databases (only when it serves several): each up, or down with its error. */
function databaseTable(databases: readonly DatabaseHealth[]): string {
  if (databases.length === 0) return '';
  return `<h2>Databases</h2><div class="wrap" id="databases" data-live><table><thead><tr><th>database</th><th>state</th><th>note</th></tr></thead><tbody>
${databases
  .map(
    (d) =>
      `<tr data-database="${html(d.name)}"><td>${html(d.name)}</td><td>${d.up ? 'up' : '<b>down</b>'}</td><td class="note">${html(d.error ?? '')}</td></tr>`,
  )
  .join('\n')}</tbody></table></div>`;
}

export function listPage(
  reports: MigrationReport[],
  workers: LiveWorker[],
  schedules: ScheduleReport[],
  controls: Controls,
  databases: readonly DatabaseHealth[] = [],
  now = Date.now(),
): string {
  return shell(
    'pg-bbm: batched background migrations',
    `${databaseTable(databases)}${overview(reports, workers, now)}<h2>Migrations</h2>${migrationTable(reports, controls, true)}${
      reports.length === 0 ? '<p>No migrations yet.</p>' : ''
    }${scheduleTable(schedules)}`,
    controls,
  );
}

/** A job's range: its ids, or for a key migration its first and last keys (its ordinals mean nothing to a reader). */
function jobRange(j: JobRow, keyed: boolean): string {
  if (!keyed) return `${j.start}..${j.end}`;
  return j.startKey && j.endKey ? html(`${keyText(j.startKey)}..${keyText(j.endKey)}`) : 'no keys (an empty table)';
}

function jobTable(jobs: JobRow[], id: string, keyed: boolean): string {
  if (jobs.length === 0) return `<div id="${id}" data-live><p>None.</p></div>`;
  return `<div class="wrap" id="${id}" data-live><table><thead><tr><th>job</th><th>range</th><th>status</th><th>attempts</th><th>duration</th><th>rows</th><th>ended</th><th>error</th></tr></thead><tbody>
${jobs
  .map(
    (j) =>
      `<tr><td>${j.id}</td><td>${jobRange(j, keyed)}</td><td>${['', 'active', 'finished', 'failed'][j.status] ?? j.status}</td><td>${j.attempts}</td>` +
      `<td>${j.durationMs === null ? '' : `${j.durationMs.toFixed(1)} ms`}</td><td>${j.rows ?? ''}</td>` +
      `<td>${j.finishedAt === null ? '' : html(j.finishedAt.toISOString().slice(11, 19))}</td><td class="note">${html(j.failureMessage ?? '')}</td></tr>`,
  )
  .join('\n')}</tbody></table></div>`;
}

/**
 * The last rehearsal: when, of what, and its projection as `bbm rehearse` prints it (the model's
 * caveats included). Always there (empty when there is nothing to say), so a refresh can fill it.
 */
function rehearsalSection(r: MigrationReport, controls: Controls): string {
  const s = r.rehearsal;
  let body = '';
  if (s) {
    const failed = s.failed > 0 ? `<p class="note">${s.failed} of ${s.sampleCount} samples failed.</p>` : '';
    body =
      `<h2>Last rehearsal</h2><p>${html(`At ${s.rehearsedAt}. ${rehearsalHeadline(s, s.sampleCount)}.`)}</p>` +
      `<pre>${html(projectionText(s.projection))}</pre>${failed}` +
      '<p class="muted">Each sample, its measurements and errors: <code>bbm rehearse --json</code>, or the <code>rehearsal</code> column.</p>';
  } else if (actionsFor(r.status, controls.rehearse).includes('rehearse')) {
    body =
      '<h2>Last rehearsal</h2><p class="muted">Not rehearsed yet: rehearse runs its work on sample ranges, each rolled back, and projects the whole migration.</p>';
  }
  return `<section id="rehearsal" data-live>${body}</section>`;
}

export function migrationPage(
  r: MigrationReport,
  jobs: { recent: JobRow[]; failed: JobRow[] },
  timeline: JobPoint[],
  controls: Controls,
): string {
  const { writable } = controls;
  return shell(
    `pg-bbm: ${r.name}`,
    `<p><a href="/">all migrations</a></p>
${migrationTable([r], controls, false)}
<p>${html(`${r.jobSignatureName} over ${r.tableName}.${r.columnName} ${boundsText(r)}`)}${
      r.approvedBy === null
        ? ''
        : ` <span class="muted">approved by ${html(r.approvedBy)} at ${html(r.approvedAt?.toISOString() ?? '?')}</span>`
    }</p>
${r.key ? `<p id="key-progress" data-live>${html(keyProgressText(r))}${progressIsEstimate(r) ? ' <span class="muted">(progress is an estimate: these rows over the table\'s estimated rows)</span>' : ''}</p>` : ''}
<p id="verification" data-live>${html(verificationText(r))}</p>
${rehearsalSection(r, controls)}
<h2>Jobs over time</h2>${chart(timeline)}
<form id="pace" data-name="${html(r.name)}"><label>lanes <input name="lanes" type="number" min="1" max="${MAX_LANES}" value="${r.lanes}" ${writable ? '' : 'disabled'}></label>
<label>batch size <input name="batchSize" type="number" min="1" value="${r.batchSize}" ${writable ? '' : 'disabled'}></label>
<button type="submit" ${writable ? '' : 'disabled'}>set</button></form>
<h2>Failed ranges</h2>${jobTable(jobs.failed, 'failed', r.key !== null)}<h2>Recent jobs</h2>${jobTable(jobs.recent, 'recent', r.key !== null)}`,
    controls,
  );
}

/**
 * The page's script: every 2 s it fetches the page again and swaps in its live parts (parsed by
 * DOMParser, never written as markup: the server escaped them); actions are POSTs with the token.
 */
export const CLIENT_SCRIPT = `'use strict';
(() => {
  const token = document.getElementById('token');
  const operator = document.getElementById('operator');
  for (const [input, key] of [[token, 'bbm-token'], [operator, 'bbm-operator']]) {
    if (!input) continue;
    input.value = sessionStorage.getItem(key) || '';
    input.addEventListener('input', () => sessionStorage.setItem(key, input.value));
  }
  const message = document.getElementById('message');
  async function refresh() {
    try {
      const response = await fetch(location.pathname, { cache: 'no-store' });
      if (!response.ok) throw new Error('HTTP ' + response.status);
      const fresh = new DOMParser().parseFromString(await response.text(), 'text/html');
      for (const live of document.querySelectorAll('[data-live][id]')) {
        const next = fresh.getElementById(live.id);
        if (next) live.replaceWith(document.importNode(next, true));
      }
    } catch (error) {
      message.textContent = 'could not refresh: ' + error.message;
    }
  }
  async function post(name, action, body) {
    const response = await fetch('/api/migrations/' + encodeURIComponent(name) + '/' + action, {
      method: 'POST', headers: { 'x-bbm-token': token ? token.value : '', 'content-type': 'application/json' },
      body: JSON.stringify(body || {}) });
    const answer = await response.json().catch(() => ({}));
    message.textContent = response.ok
      ? action + ': ' + name + (action === 'rehearse' && !document.getElementById('rehearsal') ? ' (its projection is on its page)' : '')
      : (answer.error || (action + ' changed nothing'));
    await refresh();
  }
  document.addEventListener('click', async (event) => {
    const button = event.target.closest('button[data-action]');
    if (!button) return;
    const name = button.closest('tr').dataset.name;
    const action = button.dataset.action;
    if (action === 'delete' && !confirm('Delete ' + name + ' and all its jobs? This cannot be undone.')) return;
    if (action === 'rehearse') message.textContent = 'rehearsing ' + name + ': its work on sample ranges, each rolled back...';
    await post(name, action, action === 'delete' ? { confirm: name } : action === 'approve' ? { by: operator ? operator.value : '' } : {});
  });
  const paceForm = document.getElementById('pace');
  if (paceForm) paceForm.addEventListener('submit', async (event) => {
    event.preventDefault();
    const form = new FormData(paceForm);
    await post(paceForm.dataset.name, 'set', { lanes: form.get('lanes'), batchSize: form.get('batchSize') });
  });
  setInterval(refresh, 2000);
})();
`;
