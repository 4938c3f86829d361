'use strict';
/* dashboard.js - the dashboard's only script: it reads the JSON API and
 * fills the page, every 3 seconds.  Everything from the API goes into
 * the page as text (textContent), never as markup.
 *
 * With --auth token the user pastes a token once per tab: it stays in
 * sessionStorage and goes out as "Authorization: Bearer", never as a
 * cookie.  A link cannot carry that header, so with a token the links to
 * the API (a report page, a comparison, JSON, an artifact) are fetched
 * by this script: pages and JSON show in place below the tables, an
 * artifact is saved as a download. */
const K = 'slimd.token';
const $ = id => document.getElementById(id);
const S = {
  offset: 0, moffset: 0, mlimit: 20, total: 0, mtotal: 0,
  models: new Map(),      // id -> model row, or null when it is gone
  ratios: new Map(),      // succeeded job id -> report totals.ratio
  jobs: new Map(),        // id -> the job row shown
  sel: [],                // job ids picked for comparison, in order
  downSince: null, busy: false, view: null, viewTimer: 0,
  serverLabels: true      // false once the daemon refused ?label=
};

class HttpError extends Error {
  constructor(status, message) { super(message); this.status = status; }
}

function token() { return sessionStorage.getItem(K) || ''; }

function headers() {
  const h = {'X-Slimd-Client': 'dashboard'};
  if (token()) h.Authorization = 'Bearer ' + token();
  return h;
}

function down(on) {
  if (on && !S.downSince) S.downSince = new Date();
  if (!on) S.downSince = null;
  $('down').hidden = !on;
  if (on) $('down-since').textContent = S.downSince.toLocaleTimeString();
  document.body.classList.toggle('stale', on);
}

/* One API call; an unreachable daemon (or one that hangs 8 s) raises the
 * banner, any answer lowers it. */
async function api(method, url) {
  const ac = new AbortController();
  const timer = setTimeout(() => ac.abort(), 8000);
  let r;
  try {
    r = await fetch(url, {method, headers: headers(), cache: 'no-store', signal: ac.signal});
  } catch (e) {
    down(true);
    throw new HttpError(0, 'slimd is not answering');
  } finally {
    clearTimeout(timer);
  }
  down(false);
  if (r.ok) return r;
  let msg = 'HTTP ' + r.status;
  try {
    const j = await r.json();
    if (j && j.error) msg = j.error.code + ': ' + j.error.message;
  } catch (e) { /* not JSON */ }
  if (r.status === 401) showLogin(token() ? 'that token was refused: ' + msg : '');
  throw new HttpError(r.status, msg);
}

const json = async (url) => (await api('GET', url)).json();

function showLogin(msg) {
  $('login').hidden = false;
  $('login-msg').textContent = msg || '';
}

function el(tag, text, cls) {
  const e = document.createElement(tag);
  if (text !== undefined && text !== null) e.textContent = String(text);
  if (cls) e.className = cls;
  return e;
}

function td(row, key, content, cls) {
  const c = document.createElement('td');
  c.dataset.k = key;
  if (cls) c.className = cls;
  if (content instanceof Node) c.appendChild(content);
  else if (content !== undefined && content !== null) c.textContent = String(content);
  row.appendChild(c);
  return c;
}

function bytes(n) {
  const u = ['B', 'KiB', 'MiB', 'GiB', 'TiB'];
  let i = 0;
  while (Math.abs(n) >= 1024 && i < u.length - 1) { n /= 1024; i++; }
  return (i ? n.toFixed(1) : String(n)) + ' ' + u[i];
}

function secs(s) {
  if (!(s >= 0)) return '';
  if (s < 1) return Math.round(s * 1000) + ' ms';
  if (s < 120) return s.toFixed(1) + ' s';
  if (s < 7200) return Math.floor(s / 60) + ' min ' + Math.round(s % 60) + ' s';
  return Math.floor(s / 3600) + ' h ' + Math.round((s / 60) % 60) + ' min';
}

function when(iso) {
  if (!iso) return '';
  const d = new Date(iso);
  return isNaN(d) ? iso : d.toLocaleString();
}

function link(href, text, cls) {
  const a = el('a', text, cls);
  a.href = href;
  return a;
}

function jobError(x) {
  if (x.error && typeof x.error === 'object') return [x.error.code, x.error.message];
  return [x.error_code, x.error];
}

function labelsOf(x) {
  const box = el('span', null, 'labels');
  for (const [k, v] of Object.entries(x.labels || {})) box.appendChild(el('span', k + ':' + v));
  return box;
}

/* The label filter: "key:value", several separated by commas, as
 * [[key, value], ...]; null when empty; a string saying what is wrong. */
function labelFilter() {
  const v = $('f-label').value.trim();
  if (!v) return null;
  const out = [];
  for (const part of v.split(',').map(p => p.trim()).filter(p => p)) {
    const i = part.indexOf(':');
    if (i < 1 || i === part.length - 1) return 'label filter: write key:value (e.g. team:vision)';
    out.push([part.slice(0, i), part.slice(i + 1)]);
  }
  return out;
}

function matchesLabel(x, f) {
  const l = x.labels || {};
  return !f || f.every(([k, v]) => Object.prototype.hasOwnProperty.call(l, k) && l[k] === v);
}

async function modelOf(id) {
  if (!id) return null;
  if (!S.models.has(id)) {
    try {
      S.models.set(id, await json('/v1/models/' + encodeURIComponent(id)));
    } catch (e) {
      if (e.status !== 404) throw e;
      S.models.set(id, null);
    }
  }
  return S.models.get(id);
}

async function ratioOf(x) {
  if (x.state !== 'succeeded' && !x.artifact) return null;
  if (!S.ratios.has(x.id)) {
    try {
      const r = await json('/v1/jobs/' + encodeURIComponent(x.id) + '/report');
      S.ratios.set(x.id, r.totals ? r.totals.ratio : null);
    } catch (e) {
      if (e.status === 0 || e.status === 401) throw e;
      S.ratios.set(x.id, null);
    }
  }
  return S.ratios.get(x.id);
}

function msg(id, text, err) {
  $(id).textContent = text || '';
  $(id).classList.toggle('err', !!err);
}

async function loadJobs() {
  const limit = Number($('f-limit').value);
  const q = new URLSearchParams({limit: String(limit), offset: String(S.offset)});
  if ($('f-state').value) q.set('state', $('f-state').value);
  let lf = labelFilter();
  if (typeof lf === 'string') {
    msg('jobs-msg', lf, true);
    lf = null;
  }
  if (lf && S.serverLabels) for (const [k, v] of lf) q.append('label', k + ':' + v);
  let j;
  try {
    j = await json('/v1/jobs?' + q);
  } catch (e) {
    if (e.status === 400 && q.has('label') && /unknown/.test(e.message)) {
      S.serverLabels = false;     // a daemon without label filters: filter the page here
      return loadJobs();
    }
    throw e;
  }
  let jobs = j.jobs || [];
  const shown = jobs.filter(x => matchesLabel(x, lf));
  let note = '';
  if (lf && shown.length !== jobs.length)
    note = 'This daemon does not filter by label: the filter applies to this page only.';
  jobs = shown;
  await Promise.all(jobs.map(x => Promise.all([modelOf(x.model), ratioOf(x)])));
  S.total = j.total;
  S.jobs = new Map(jobs.map(x => [x.id, x]));
  S.sel = S.sel.filter(id => S.jobs.has(id));
  renderJobs(jobs);
  const from = j.total ? S.offset + 1 : 0, to = Math.min(S.offset + limit, j.total);
  $('page').textContent = from + '\u2013' + to + ' of ' + j.total;
  $('jobs-total').textContent = '(' + j.total + ')';
  $('prev').disabled = S.offset === 0;
  $('next').disabled = S.offset + limit >= j.total;
  if (note) msg('jobs-msg', note);
}

function renderJobs(jobs) {
  const body = $('jobs').tBodies[0];
  const rows = [];
  const now = Date.now();
  for (const x of jobs) {
    const r = document.createElement('tr');
    r.dataset.id = x.id;
    const pick = el('input');
    pick.type = 'checkbox';
    pick.title = 'pick for comparison';
    pick.disabled = x.state !== 'succeeded' && !x.artifact;
    pick.checked = S.sel.includes(x.id);
    pick.addEventListener('change', () => toggleSel(x.id, pick.checked));
    td(r, 'compare', pick);
    const name = td(r, 'job', null, 'jobname');
    const report = '/v1/jobs/' + encodeURIComponent(x.id) + '/report.html';
    name.appendChild(link(report, x.name || x.id, 'report'));
    if (x.name) name.appendChild(el('div', x.id, 'muted mono'));
    const m = S.models.get(x.model);
    const mc = td(r, 'model', m ? m.name : (x.model ? '(deleted) ' : ''));
    mc.appendChild(el('div', x.model, 'muted mono'));
    const sc = td(r, 'state', el('span', x.state, 'state ' + x.state));
    const [code, message] = jobError(x);
    if (x.state === 'failed' && (code || message)) {
      const e = el('div', (code ? code + ': ' : '') + (message || ''), 'tw');
      sc.appendChild(e);
    }
    const pc = td(r, 'progress');
    if (x.state === 'running' || x.state === 'queued') {
      const p = el('progress');
      p.max = 1;
      p.value = x.progress || 0;
      pc.appendChild(p);
      pc.appendChild(el('div', Math.round((x.progress || 0) * 100) + ' %' +
                        (x.stage ? ' \u00b7 ' + x.stage : ''), 'muted'));
    } else {
      pc.textContent = Math.round((x.progress || 0) * 100) + ' %';
    }
    const ratio = S.ratios.get(x.id);
    td(r, 'ratio', typeof ratio === 'number' ? ratio.toFixed(2) + '\u00d7' : null, 'n ratio');
    const t0 = Date.parse(x.started_at), t1 = x.finished_at ? Date.parse(x.finished_at) : now;
    // the store's times have whole seconds: 0 is under one
    td(r, 'duration', x.started_at ? (t1 - t0 < 1000 ? '< 1 s' : secs((t1 - t0) / 1000)) : '', 'n');
    td(r, 'labels', Object.keys(x.labels || {}).length ? labelsOf(x) : null);
    td(r, 'created', when(x.created_at));
    const acts = td(r, 'actions', null, 'acts');
    acts.appendChild(link(report, x.state === 'succeeded' || x.artifact ? 'report' : 'details'));
    if (x.artifact)   // succeeded, or failed a quality gate (both keep it)
      acts.appendChild(link('/v1/jobs/' + encodeURIComponent(x.id) + '/artifact', 'artifact'));
    if (x.state === 'queued' || x.state === 'running') {
      const b = el('button', 'cancel', 'b');
      b.type = 'button';
      b.addEventListener('click', () => act(b, 'POST', x, '/cancel'));
      acts.appendChild(b);
    } else {
      const b = el('button', 'delete', 'b danger');
      b.type = 'button';
      b.addEventListener('click', () => {
        if (confirm('Delete job ' + (x.name || x.id) + ', its report and artifact?'))
          act(b, 'DELETE', x, '');
      });
      acts.appendChild(b);
    }
    rows.push(r);
  }
  if (!rows.length) {
    const r = document.createElement('tr');
    const c = td(r, '', 'No jobs' + ($('f-state').value || $('f-label').value.trim() ? ' match the filters.' :
      ' yet: POST /v1/jobs a spec.'), 'muted');
    c.colSpan = 10;
    rows.push(r);
  }
  body.replaceChildren(...rows);
  updateCompare();
}

async function act(button, method, x, suffix) {
  button.disabled = true;
  const what = method === 'DELETE' ? 'delete' : 'cancel';
  try {
    await api(method, '/v1/jobs/' + encodeURIComponent(x.id) + suffix);
    msg('jobs-msg', (x.name || x.id) + ': ' + (method === 'DELETE' ? 'deleted' : 'cancel requested'));
  } catch (e) {
    let text = e.message;
    if (e.status === 404) text = 'it is gone already';
    else if (e.status === 405) text = 'this daemon cannot ' + what + ' jobs (no ' + method +
      ' /v1/jobs/{id}' + suffix + ')';
    msg('jobs-msg', 'Could not ' + what + ' ' + (x.name || x.id) + ': ' + text, true);
  }
  refresh();
}

function toggleSel(id, on) {
  S.sel = S.sel.filter(x => x !== id);
  if (on) S.sel.push(id);
  while (S.sel.length > 2) S.sel.shift();
  for (const box of $('jobs').querySelectorAll('tbody input[type=checkbox]'))
    box.checked = S.sel.includes(box.closest('tr').dataset.id);
  updateCompare();
}

function updateCompare() {
  const b = $('compare');
  const [a, z] = S.sel.map(id => S.jobs.get(id));
  b.disabled = !(a && z && a.model === z.model);
  b.title = a && z && a.model !== z.model ? 'the two jobs compressed different models' :
    'pick two succeeded jobs of the same model';
}

async function loadModels() {
  const j = await json('/v1/models?limit=' + S.mlimit + '&offset=' + S.moffset);
  const rows = [];
  for (const m of j.models || []) {
    S.models.set(m.id, m);
    const r = document.createElement('tr');
    td(r, 'model', m.id, 'mono');
    td(r, 'name', m.name);
    td(r, 'size', bytes(m.bytes), 'n').title = m.bytes + ' bytes';
    td(r, 'parameters', m.params !== undefined && m.params !== null ? Number(m.params).toLocaleString() : '', 'n');
    td(r, 'format', m.format);
    const sha = el('code', m.sha256, 'sha');
    sha.title = m.sha256;
    td(r, 'sha256', sha);
    td(r, 'uploaded', when(m.created_at));
    rows.push(r);
  }
  if (!rows.length) {
    const r = document.createElement('tr');
    td(r, '', 'No models yet: POST /v1/models a safetensors or ONNX file.', 'muted').colSpan = 7;
    rows.push(r);
  }
  $('models').tBodies[0].replaceChildren(...rows);
  S.mtotal = j.total;
  $('models-total').textContent = '(' + j.total + ')';
  const from = j.total ? S.moffset + 1 : 0;
  $('mpage').textContent = from + '\u2013' + Math.min(S.moffset + S.mlimit, j.total) + ' of ' + j.total;
  $('mprev').disabled = S.moffset === 0;
  $('mnext').disabled = S.moffset + S.mlimit >= j.total;
}

async function refresh() {
  if (S.busy) return;
  S.busy = true;
  try {
    const h = await json('/v1/health');
    $('health').textContent = 'slimd ' + h.version;
    if (!$('login').hidden && !token()) return;
    await loadModels();
    await loadJobs();
    $('login').hidden = true;
    $('logout').hidden = !token();
    $('updated').textContent = 'updated ' + new Date().toLocaleTimeString();
  } catch (e) {
    if (e.status !== 0 && e.status !== 401) msg('jobs-msg', e.message, true);
  } finally {
    S.busy = false;
  }
}

/* ---- with a token: the API's links, fetched ---- */

async function openInPlace(href) {
  const u = new URL(href, location.href);
  const r = await api('GET', u.pathname + u.search);
  const type = r.headers.get('Content-Type') || '';
  const view = $('view');
  clearTimeout(S.viewTimer);
  if (type.startsWith('text/html')) {
    const doc = new DOMParser().parseFromString(await r.text(), 'text/html');
    const refresh = doc.querySelector('meta[http-equiv=refresh]');
    for (const s of doc.querySelectorAll('script,style,meta,title,nav')) s.remove();
    const close = el('button', 'close', 'b');
    close.type = 'button';
    close.addEventListener('click', () => { clearTimeout(S.viewTimer); view.replaceChildren(); });
    view.replaceChildren(close, ...Array.from(doc.body.childNodes, n => document.importNode(n, true)));
    slimdSortable(view);
    if (refresh) S.viewTimer = setTimeout(() => openInPlace(href).catch(() => {}), 2000);
  } else if (type.startsWith('application/json')) {
    const pre = el('pre', JSON.stringify(await r.json(), null, 2));
    view.replaceChildren(el('h2', u.pathname), pre);
  } else {
    const blob = await r.blob();
    const a = el('a');
    const cd = r.headers.get('Content-Disposition') || '';
    const m = /filename="?([^";]+)/.exec(cd);
    a.href = URL.createObjectURL(blob);
    a.download = m ? m[1] : 'artifact';
    document.body.appendChild(a);
    a.click();
    a.remove();
    setTimeout(() => URL.revokeObjectURL(a.href), 60000);
    return;
  }
  view.scrollIntoView();
}

document.addEventListener('click', e => {
  const a = e.target.closest && e.target.closest('a[href]');
  if (!a || !token() || e.defaultPrevented || e.button !== 0) return;
  const u = new URL(a.href, location.href);
  if (u.origin !== location.origin || !u.pathname.startsWith('/v1/')) return;
  e.preventDefault();
  openInPlace(a.href).catch(err => msg('jobs-msg', err.message, true));
});

$('compare').addEventListener('click', () => {
  const href = '/v1/jobs/compare?a=' + encodeURIComponent(S.sel[0]) + '&b=' +
    encodeURIComponent(S.sel[1]);
  if (token()) openInPlace(href).catch(err => msg('jobs-msg', err.message, true));
  else location.href = href;
});

$('login').addEventListener('submit', e => {
  e.preventDefault();
  sessionStorage.setItem(K, $('token').value.trim());
  $('token').value = '';
  S.models.clear();
  S.ratios.clear();
  $('login-msg').textContent = '';
  refresh();
});
$('logout').addEventListener('click', () => {
  sessionStorage.removeItem(K);
  location.reload();
});
for (const id of ['f-state', 'f-label', 'f-limit'])
  $(id).addEventListener('change', () => { S.offset = 0; msg('jobs-msg', ''); refresh(); });
$('prev').addEventListener('click', () => {
  S.offset = Math.max(0, S.offset - Number($('f-limit').value));
  refresh();
});
$('next').addEventListener('click', () => { S.offset += Number($('f-limit').value); refresh(); });
$('mprev').addEventListener('click', () => { S.moffset = Math.max(0, S.moffset - S.mlimit); refresh(); });
$('mnext').addEventListener('click', () => { S.moffset += S.mlimit; refresh(); });

refresh();
setInterval(refresh, 3000);
