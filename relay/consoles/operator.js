// The 112 operator's console: a form to flag a report fast, keyboard only, and below it what became of the
// operator's recent reports (sent, delivered, acknowledged by whom and how fast, or not), live.
import {
  $, AlertTable, Offline, followRelay, S, api, clock, el, enumLabel, login, newestFirst, placeLines, serverNow,
  shownState, stateDetail, t,
} from './common.js';

const RECENT = 50;
const POLL_MS = 2000; // "sent" has no state event of its own: alerts with a queued delivery are re-read
const RELOAD_MS = 30000;

const table = new AlertTable();
const form = $('report');
const observed = $('f-observed_at');
let session = null;
let isOnline = () => false; // replaced by followRelay once logged in
let busy = false;
let observedTouched = false;
// A send that failed on the way (no answer, 503) is sent again with the same report_id while the form is
// unchanged, so a report the relay did store after all is answered as a replay instead of filed twice.
let lastFailed = null;

// ---- the form ----------------------------------------------------------------------------------------------

function pad(n, width = 2) {
  return String(Math.abs(Math.trunc(n))).padStart(width, '0');
}

function wallTime(ms) {
  const d = new Date(ms);
  return `${pad(d.getHours())}:${pad(d.getMinutes())}:${pad(d.getSeconds())}`;
}

function rfc3339(d) { // local time with its offset, as the operator reads it
  const offset = -d.getTimezoneOffset();
  const sign = offset >= 0 ? '+' : '-';
  return `${d.getFullYear()}-${pad(d.getMonth() + 1)}-${pad(d.getDate())}T${wallTime(d.getTime())}`
    + `${sign}${pad(offset / 60)}:${pad(offset % 60)}`;
}

// The field shows the time running while nobody has typed in it (and it is not focused: a value changing
// under the cursor would mangle what is typed).
function showNow() {
  if (!observedTouched && document.activeElement !== observed) observed.value = wallTime(serverNow());
}

// "14:05", "1405", "14.05.30": today at that time, or yesterday when that is still ahead (a call just after
// midnight about a sighting just before it). Anything else goes as typed, and the relay names the problem.
function observedAt() {
  const now = serverNow();
  if (!observedTouched || !observed.value.trim()) return rfc3339(new Date(now));
  const m = observed.value.trim().match(/^(\d{1,2})[:.\s]?(\d{2})(?:[:.\s](\d{2}))?$/);
  if (!m || Number(m[1]) > 23 || Number(m[2]) > 59 || Number(m[3] || 0) > 59) return null;
  const at = new Date(now);
  at.setHours(Number(m[1]), Number(m[2]), Number(m[3] || 0), 0);
  if (at.getTime() > now + 5 * 60 * 1000) at.setDate(at.getDate() - 1);
  return rfc3339(at);
}

function value(name) {
  return form.elements.namedItem(name).value.trim();
}

// Numbers as typed on a Russian keyboard ("52,61", "−3") become JSON numbers; anything else goes as text, and
// the relay names the field and the problem.
function numeric(raw, integer) {
  const normal = raw.replace(',', '.').replace('−', '-');
  const pattern = integer ? /^[-+]?\d+$/ : /^[-+]?\d+(\.\d+)?$/;
  return pattern.test(normal) ? Number(normal) : raw;
}

function put(target, key, raw, kind) {
  if (raw === '') return;
  target[key] = kind === 'text' ? raw : numeric(raw, kind === 'int');
}

// Coordinates often come as one pair ("52.61, 39.59"): pasted into the latitude, they fill both.
function splitPair() {
  const lat = $('f-lat');
  const pair = lat.value.match(/^\s*(-?\d+\.\d+)\s*[,;\s]\s*(-?\d+\.\d+)\s*$/);
  if (pair && !value('lon')) {
    lat.value = pair[1];
    $('f-lon').value = pair[2];
  }
}

function phone(raw) {
  const digits = raw.replace(/[\s()-]/g, '');
  return /^8\d{10}$/.test(digits) ? `+7${digits.slice(1)}` : digits; // 8 900 ... is how Russians say +7 900 ...
}

function readForm(observedAtValue) {
  const location = {};
  put(location, 'lat', value('lat'), 'number');
  put(location, 'lon', value('lon'), 'number');
  put(location, 'district', value('district'), 'text');
  put(location, 'address', value('address'), 'text');
  const body = {observed_at: observedAtValue, location};
  put(body, 'count', value('count'), 'int');
  for (const name of ['uav_type', 'sound', 'perception']) body[name] = value(name);
  put(body, 'heading_deg', value('heading_deg'), 'int');
  for (const name of ['movement', 'speed', 'altitude']) body[name] = value(name);
  put(body, 'altitude_m', value('altitude_m'), 'int');
  body.priority = value('priority');
  body.status = value('status');
  put(body, 'notes', value('notes'), 'text');
  const caller = {};
  if (value('phone')) caller.phone = phone(value('phone'));
  put(caller, 'name', value('name'), 'text');
  if (Object.keys(caller).length) body.caller = caller;
  return body;
}

function newReportId() {
  const random = new Uint32Array(1);
  crypto.getRandomValues(random);
  return `op-${Date.now()}-${random[0].toString(36)}`;
}

function status(text, kind = '') {
  const line = $('form-status');
  line.textContent = text;
  line.className = `form-status ${kind}`;
}

function clearProblems() {
  for (const node of form.querySelectorAll('[aria-invalid]')) node.removeAttribute('aria-invalid');
  for (const node of form.querySelectorAll('.error')) node.textContent = '';
}

function translate(problem) {
  for (const [pattern, replacement] of S.problems) {
    const re = new RegExp(pattern);
    if (re.test(problem)) return problem.replace(re, replacement);
  }
  return problem;
}

// The relay's 422 names fields by path (location.lat, count, caller.phone); the inputs are named after the last
// part, so each problem goes next to its input. Whatever has no input of its own is shown above the button.
function showProblems(detail) {
  const general = [];
  let first = null;
  for (const {field, problem} of Array.isArray(detail) ? detail : []) {
    const name = String(field).split('.').pop();
    const input = form.elements.namedItem(name);
    const slot = $(`e-${name}`);
    const text = translate(String(problem));
    if (input instanceof HTMLElement && slot) {
      input.setAttribute('aria-invalid', 'true');
      slot.textContent = slot.textContent ? `${slot.textContent}; ${text}` : text;
      first = first || input;
    } else {
      general.push(`${field}: ${text}`);
    }
  }
  $('e-general').textContent = general.join('; ');
  status(t('operator.invalid', {n: Array.isArray(detail) ? detail.length : 1}), 'bad');
  (first || $('send')).focus();
}

async function submit(event) {
  event.preventDefault();
  if (busy) return;
  splitPair();
  clearProblems();
  const reuseObserved = lastFailed && !observedTouched ? lastFailed.observedAt : observedAt();
  if (reuseObserved === null) {
    showProblems([{field: 'observed_at', problem: t('fields.observed_at_bad')}]);
    return;
  }
  const body = readForm(reuseObserved);
  const key = JSON.stringify(body);
  body.report_id = lastFailed && lastFailed.key === key ? lastFailed.id : newReportId();
  busy = true;
  $('send').setAttribute('aria-disabled', 'true');
  status(t('operator.sending'));
  let answer;
  try {
    answer = await api(session.token, '/api/v1/reports', {method: 'POST', body});
  } catch (err) {
    if (!(err instanceof Offline)) throw err;
    lastFailed = {id: body.report_id, key, observedAt: body.observed_at};
    status(t('operator.offline'), 'bad');
    return;
  } finally {
    busy = false;
    $('send').removeAttribute('aria-disabled');
  }
  const detail = answer.data ? answer.data.detail : null;
  switch (answer.status) {
    case 200:
    case 201: {
      lastFailed = null;
      const accepted = answer.data;
      status(t(answer.status === 201 ? 'operator.accepted' : 'operator.replayed',
        {code: accepted.short_code, desks: accepted.desks.join(', ')}), 'ok');
      form.reset();
      observedTouched = false;
      showNow();
      $('f-lat').focus();
      refresh(accepted.alert_id);
      break;
    }
    case 401:
      session.logout(t('login.bad_token'));
      break;
    case 409:
      lastFailed = null;
      status(t('operator.conflict'), 'bad');
      break;
    case 422:
      lastFailed = null;
      showProblems(detail);
      break;
    case 429:
      status(t('operator.rate_limited', {s: answer.headers.get('Retry-After') || '1'}), 'bad');
      break;
    case 503:
      lastFailed = {id: body.report_id, key, observedAt: body.observed_at};
      status(t('operator.unavailable'), 'bad');
      break;
    default:
      status(t('operator.failed', {status: answer.status}), 'bad');
  }
}

// ---- recent reports -------------------------------------------------------------------------------------

function recentItem(alert) {
  const r = alert.report;
  const state = shownState(alert);
  const detail = stateDetail(alert);
  return el('li', {class: `sent-report is-${state}`, dataset: {alertId: alert.alert_id, state}},
    el('span', {class: 'code small', text: alert.short_code}),
    el('span', {class: 'what'},
      el('time', {datetime: r.observed_at, text: clock(r.observed_at)}),
      ` · ${placeLines(r).place} · ${enumLabel('uav_type', r.uav_type || 'unknown')} ×${r.count ?? 1}`),
    el('span', {class: `state state-${state}`, text: t(`states.${state}`)}),
    el('span', {class: 'detail', text: detail}),
    // the relay holds it to be the same drone as earlier reports: the airfield sees them as one track
    alert.track_id && alert.track_id !== alert.alert_id
      ? el('span', {class: 'detail track', text: t('state_detail.joined_track', {track: alert.track_id.slice(-6)})})
      : '');
}

function render() {
  const recent = table.all().sort(newestFirst);
  for (const old of recent.slice(RECENT)) table.drop(old.alert_id);
  $('recent').replaceChildren(...recent.slice(0, RECENT).map(recentItem));
  $('none-recent').hidden = recent.length > 0;
}

async function refresh(id) {
  const ticket = table.ticket();
  let answer;
  try {
    answer = await session.call(`/api/v1/alerts/${encodeURIComponent(id)}`);
  } catch (err) {
    if (err instanceof Offline) return;
    throw err;
  }
  if (!answer.ok) return;
  table.put(answer.data, ticket);
  render();
}

async function reload() {
  const ticket = table.ticket();
  let answer;
  try {
    answer = await session.call(`/api/v1/alerts?limit=${RECENT}`);
  } catch (err) {
    if (err instanceof Offline) return;
    throw err;
  }
  if (!answer.ok) return;
  for (const alert of answer.data.alerts) table.put(alert, ticket);
  render();
}

function poll() {
  if (!isOnline()) return;
  const stirring = table.all().filter((a) => (a.state === 'pending' || a.state === 'delivered')
    && a.deliveries.some((d) => d.state === 'queued'));
  for (const alert of stirring.slice(0, 10)) refresh(alert.alert_id);
}

function start(s) {
  session = s;
  showNow();
  observed.addEventListener('input', () => { observedTouched = true; });
  $('f-lat').addEventListener('change', splitPair);
  form.addEventListener('submit', submit);
  // Enter in any field sends, selects included (a select would otherwise open its list)
  form.addEventListener('keydown', (event) => {
    const target = event.target;
    if (event.key !== 'Enter' || event.isComposing || !(target instanceof HTMLInputElement
      || target instanceof HTMLSelectElement)) return;
    event.preventDefault();
    form.requestSubmit();
  });
  form.addEventListener('input', (event) => { // a corrected field loses its mark
    const name = event.target.name;
    event.target.removeAttribute('aria-invalid');
    const slot = name && $(`e-${name}`);
    if (slot) slot.textContent = '';
  });
  $('f-lat').focus();
  isOnline = followRelay(session, {reload, refresh});
  setInterval(showNow, 1000);
  setInterval(poll, POLL_MS);
  setInterval(() => { if (isOnline()) reload(); }, RELOAD_MS);
}

login('operator', start);
