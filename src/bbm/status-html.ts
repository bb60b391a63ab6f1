/**
 * The status page's markup (status-page.ts serves it): a list of migrations and a page per
 * migration, server-rendered with every value from a row escaped (`html`), and the little script
 * that updates them live and sends the operator's actions.
 */
import type { JobRow } from '../store/jobs.ts';
import { MAX_LANES } from '../store/codes.ts';
import type { ScheduleReport } from './schedules.ts';
import type { MigrationReport } from './types.ts';

/** What an operator may do to a migration from the page (besides setting its pace). */
export const ACTIONS = ['pause', 'resume', 'retry'] as const;

/** Text as HTML: every character a row may hold that means something in markup, escaped. */
export function html(text: unknown): string {
  return String(text).replace(/[&<>"']/g, (c) => `&#${c.charCodeAt(0)};`);
}

const STYLE = `body{font:14px/1.4 system-ui,sans-serif;margin:1rem;color:#222}table{border-collapse:collapse;width:100%}
th,td{text-align:left;padding:.3rem .5rem;border-bottom:1px solid #ddd;vertical-align:top}.wrap{overflow-x:auto}
progress{width:8rem}.note{color:#a40}.ro{background:#fff4d6;padding:.5rem}button{margin:.1rem}
@media (max-width:600px){body{margin:.5rem;font-size:13px}progress{width:5rem}}`;

function shell(title: string, body: string, writable: boolean): string {
  return `<!doctype html><html lang="en"><head><meta charset="utf-8"><meta name="viewport" content="width=device-width,initial-scale=1">
<title>${html(title)}</title><style>${STYLE}</style></head><body data-writable="${writable}">
<h1>${html(title)}</h1>
${
  writable
    ? '<p><label>Operator token <input id="token" type="password" autocomplete="off"></label> (kept in this tab only)</p>'
    : '<p class="ro">Read-only: start the server with <code>--dashboard-token</code> (or BBM_DASHBOARD_TOKEN) to pause, resume and retry from here.</p>'
}
${body}<p id="message" role="status"></p><script src="/status-page.js"></script></body></html>`;
}

const pace = (r: MigrationReport) =>
  [
    r.rowsPerSecond === null ? '' : `${Math.round(r.rowsPerSecond).toLocaleString('en')} rows/s`,
    r.etaSeconds === null ? '' : `${Math.round(r.etaSeconds)} s left`,
  ]
    .filter(Boolean)
    .join(', ');

const lanes = (r: MigrationReport) =>
  `${r.lanesInUse}/${r.lanes} lanes${r.lanesAllowed < r.lanes ? ` (${r.lanesAllowed} allowed)` : ''}, batch ${r.batchSize}`;

const note = (r: MigrationReport) =>
  r.failureMessage ??
  (r.holdReason
    ? `held: ${r.holdReason}`
    : r.waitingForWork
      ? `waiting for a worker with ${r.jobSignatureName}`
      : (r.lastError ?? ''));

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

export function listPage(reports: MigrationReport[], schedules: ScheduleReport[], writable: boolean): string {
  const rows = reports
    .map(
      (
        r,
      ) => `<tr data-name="${html(r.name)}"><td><a href="/migrations/${html(encodeURIComponent(r.name))}">${html(r.name)}</a></td>
<td data-field="status">${html(r.status)}</td><td><progress max="1" value="${r.progress}"></progress> <span data-field="progress">${(r.progress * 100).toFixed(1)}%</span></td>
<td data-field="pace">${html(pace(r))}</td><td data-field="lanes">${html(lanes(r))}</td><td data-field="note" class="note">${html(note(r))}</td>
<td>${ACTIONS.map((a) => `<button data-action="${a}" ${writable ? '' : 'disabled'}>${a}</button>`).join('')}</td></tr>`,
    )
    .join('\n');
  return shell(
    'pg-bbm: batched background migrations',
    `<div class="wrap"><table id="migrations"><thead><tr><th>migration</th><th>status</th><th>progress</th><th>pace</th><th>lanes</th><th>note</th><th></th></tr></thead>
<tbody>${rows}</tbody></table></div>${reports.length === 0 ? '<p>No migrations yet.</p>' : ''}${scheduleTable(schedules)}`,
    writable,
  );
}

function jobTable(jobs: JobRow[]): string {
  if (jobs.length === 0) return '<p>None.</p>';
  return `<div class="wrap"><table><thead><tr><th>job</th><th>range</th><th>status</th><th>attempts</th><th>duration</th><th>rows</th><th>error</th></tr></thead><tbody>
${jobs
  .map(
    (j) =>
      `<tr><td>${j.id}</td><td>${j.start}..${j.end}</td><td>${['', 'active', 'finished', 'failed'][j.status] ?? j.status}</td><td>${j.attempts}</td>` +
      `<td>${j.durationMs === null ? '' : `${j.durationMs.toFixed(1)} ms`}</td><td>${j.rows ?? ''}</td><td class="note">${html(j.failureMessage ?? '')}</td></tr>`,
  )
  .join('\n')}</tbody></table></div>`;
}

export function migrationPage(
  r: MigrationReport,
  jobs: { recent: JobRow[]; failed: JobRow[] },
  writable: boolean,
): string {
  return shell(
    `pg-bbm: ${r.name}`,
    `<p><a href="/">all migrations</a></p>
<div class="wrap"><table id="migrations"><tbody><tr data-name="${html(r.name)}"><td data-field="status">${html(r.status)}</td>
<td><progress max="1" value="${r.progress}"></progress> <span data-field="progress">${(r.progress * 100).toFixed(1)}%</span></td>
<td data-field="pace">${html(pace(r))}</td><td data-field="lanes">${html(lanes(r))}</td><td data-field="note" class="note">${html(note(r))}</td>
<td>${ACTIONS.map((a) => `<button data-action="${a}" ${writable ? '' : 'disabled'}>${a}</button>`).join('')}</td></tr></tbody></table></div>
<p>${html(`${r.jobSignatureName} over ${r.tableName}.${r.columnName} [${r.minValue}..${r.maxValue ?? 'max'}]`)}</p>
<form id="pace" data-name="${html(r.name)}"><label>lanes <input name="lanes" type="number" min="1" max="${MAX_LANES}" value="${r.lanes}" ${writable ? '' : 'disabled'}></label>
<label>batch size <input name="batchSize" type="number" min="1" value="${r.batchSize}" ${writable ? '' : 'disabled'}></label>
<button type="submit" ${writable ? '' : 'disabled'}>set</button></form>
<h2>Failed ranges</h2>${jobTable(jobs.failed)}<h2>Recent jobs</h2>${jobTable(jobs.recent)}`,
    writable,
  );
}

/** The page's script: polls the JSON every 2 s and updates the rows with textContent; sends actions with the token. */
export const CLIENT_SCRIPT = `'use strict';
(() => {
  const token = document.getElementById('token');
  if (token) {
    token.value = sessionStorage.getItem('bbm-token') || '';
    token.addEventListener('input', () => sessionStorage.setItem('bbm-token', token.value));
  }
  const message = document.getElementById('message');
  const pace = (r) => [r.rowsPerSecond === null ? '' : Math.round(r.rowsPerSecond).toLocaleString('en') + ' rows/s',
    r.etaSeconds === null ? '' : Math.round(r.etaSeconds) + ' s left'].filter(Boolean).join(', ');
  const lanes = (r) => r.lanesInUse + '/' + r.lanes + ' lanes' + (r.lanesAllowed < r.lanes ? ' (' + r.lanesAllowed + ' allowed)' : '') + ', batch ' + r.batchSize;
  const note = (r) => r.failureMessage || (r.holdReason ? 'held: ' + r.holdReason : r.waitingForWork ? 'waiting for a worker with ' + r.jobSignatureName : (r.lastError || ''));
  async function refresh() {
    try {
      const reports = await (await fetch('/api/migrations', { cache: 'no-store' })).json();
      for (const row of document.querySelectorAll('#migrations tr[data-name]')) {
        const r = reports.find((x) => x.name === row.dataset.name);
        if (!r) continue;
        row.querySelector('[data-field=status]').textContent = r.status;
        row.querySelector('[data-field=progress]').textContent = (r.progress * 100).toFixed(1) + '%';
        row.querySelector('progress').value = r.progress;
        row.querySelector('[data-field=pace]').textContent = pace(r);
        row.querySelector('[data-field=lanes]').textContent = lanes(r);
        row.querySelector('[data-field=note]').textContent = note(r);
      }
    } catch (error) {
      message.textContent = 'could not refresh: ' + error.message;
    }
  }
  document.addEventListener('click', async (event) => {
    const button = event.target.closest('button[data-action]');
    if (!button) return;
    const name = button.closest('tr').dataset.name;
    const response = await fetch('/api/migrations/' + encodeURIComponent(name) + '/' + button.dataset.action, {
      method: 'POST', headers: { 'x-bbm-token': token ? token.value : '' } });
    const body = await response.json().catch(() => ({}));
    message.textContent = response.ok ? button.dataset.action + ': ' + name : (body.error || (button.dataset.action + ' changed nothing'));
    refresh();
  });
  const paceForm = document.getElementById('pace');
  if (paceForm) paceForm.addEventListener('submit', async (event) => {
    event.preventDefault();
    const form = new FormData(paceForm);
    const response = await fetch('/api/migrations/' + encodeURIComponent(paceForm.dataset.name) + '/set', {
      method: 'POST', headers: { 'x-bbm-token': token ? token.value : '', 'content-type': 'application/json' },
      body: JSON.stringify({ lanes: form.get('lanes'), batchSize: form.get('batchSize') }) });
    const body = await response.json().catch(() => ({}));
    message.textContent = response.ok ? 'set: ' + paceForm.dataset.name : (body.error || 'set changed nothing');
    refresh();
  });
  setInterval(refresh, 2000);
})();
`;
