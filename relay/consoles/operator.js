// The 112 operator's console: a form to flag a report fast, keyboard only, and below it what became of the
// operator's recent reports (sent, delivered, acknowledged by whom and how fast, or not), live.
import {
  $, AlertTable, Offline, followRelay, S, api, channelName, clock, el, enumLabel, login, newestFirst, number,
  placeLines, serverNow, shownState, stateDetail, t,
} from './common.js';
import {UNANSWERED, playTones} from './alarm.js';
import {coordinate, coordinatePair, countRange, headingDegrees, phoneNumber} from './operator_input.js';

const RECENT = 50;
const POLL_MS = 2000; // "sent" has no state event of its own: alerts with a queued delivery are re-read
const RELOAD_MS = 30000;

const table = new AlertTable();
const form = $('report');
const observed = $('f-observed_at');
let session = null;
let desks = new Map(); // desk id -> {name, phone}: what the session says of them (names, whom to call)
let isOnline = () => false; // replaced by followRelay once logged in
let chosenPlace = null; // the gazetteer entry whose coordinates are in the form (approximate)
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

// Coordinates as callers and maps give them: one pair pasted into the latitude ("52,61, 39,59", "52°36′36″N
// 39°35′24″E") fills both; comma decimals and degrees-minutes-seconds become decimal degrees in place.
function splitPair() {
  const lat = $('f-lat');
  const pair = coordinatePair(lat.value);
  if (pair) {
    lat.value = String(pair.lat);
    $('f-lon').value = String(pair.lon);
    return;
  }
  for (const input of [lat, $('f-lon')]) {
    const single = input.value.trim() ? coordinate(input.value) : null;
    if (single !== null) input.value = String(single);
  }
}

// A compass point typed for the heading ("СЗ") shows as the degrees it sends, so the operator sees what goes.
function convertHeading() {
  const input = $('f-heading_deg');
  const deg = input.value.trim() ? headingDegrees(input.value) : null;
  if (deg !== null && String(deg) !== input.value.trim()) {
    $('h-heading_deg').textContent = t('op.heading_was', {text: input.value.trim(), deg});
    input.value = String(deg);
  }
}

// What cannot be sent as typed, found before sending (the relay would refuse it too, with a less helpful word):
// each problem names its field and the form that is expected.
function localProblems() {
  const problems = [];
  if (value('heading_deg') && headingDegrees(value('heading_deg')) === null) {
    problems.push({field: 'heading_deg', problem: t('op.heading_bad')});
  }
  if (value('count') && countRange(value('count')) === null) problems.push({field: 'count', problem: t('op.count_bad')});
  for (const name of ['lat', 'lon']) {
    if (value(name) && coordinate(value(name)) === null) problems.push({field: name, problem: t('op.coords_bad')});
  }
  if (value('phone') && phoneNumber(value('phone')) === null) problems.push({field: 'phone', problem: t('op.phone_bad')});
  return problems;
}

function readForm(observedAtValue) {
  const location = {};
  put(location, 'lat', value('lat'), 'number');
  put(location, 'lon', value('lon'), 'number');
  if (chosenPlace && location.lat === chosenPlace.lat && location.lon === chosenPlace.lon) {
    location.accuracy_m = chosenPlace.accuracy_m; // a settlement's coordinates: where in it is not known
  }
  put(location, 'district', value('district'), 'text');
  put(location, 'address', value('address'), 'text');
  const body = {observed_at: observedAtValue, location};
  const count = value('count') ? countRange(value('count')) : null;
  if (count) body.count = count.count;
  for (const name of ['uav_type', 'sound', 'perception']) body[name] = value(name);
  const heading = value('heading_deg') ? headingDegrees(value('heading_deg')) : null;
  if (heading !== null) body.heading_deg = heading;
  for (const name of ['movement', 'speed', 'altitude']) body[name] = value(name);
  put(body, 'altitude_m', value('altitude_m'), 'int');
  body.priority = value('priority');
  body.status = value('status');
  const notes = [value('notes'), count && count.range ? t('op.count_note', {range: count.range}) : '']
    .filter(Boolean).join('; ');
  put(body, 'notes', notes, 'text');
  const caller = {};
  if (value('phone')) caller.phone = phoneNumber(value('phone'));
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
  convertHeading();
  clearProblems();
  const reuseObserved = lastFailed && !observedTouched ? lastFailed.observedAt : observedAt();
  const problems = localProblems();
  if (reuseObserved === null) problems.unshift({field: 'observed_at', problem: t('fields.observed_at_bad')});
  if (problems.length) {
    showProblems(problems);
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
      status(t(answer.status === 201 ? 'op.accepted' : 'operator.replayed',
        {code: accepted.short_code, desks: accepted.desks.map(deskName).join(', ')}), 'ok');
      form.reset();
      forgetPlace();
      $('h-heading_deg').textContent = t('op.heading_hint');
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

function deskName(id) {
  return (desks.get(id) || {}).name || id;
}

// Who acknowledged, at what clock time, how fast: with the desk's name, not its id.
function detailOf(alert) {
  const ack = alert.ack;
  if (shownState(alert) !== 'acknowledged' || !ack) return stateDetail(alert);
  const who = {by: ack.by || deskName(ack.desk_id), desk: deskName(ack.desk_id), channel: channelName(ack.channel),
    time: clock(ack.at), latency: number(ack.latency_s)};
  // the desk acknowledged the drone (its track), this report with it or before it came
  return t(ack.via_track ? 'op.acknowledged_track' : 'op.acknowledged', who);
}

function recentItem(alert) {
  const r = alert.report;
  const state = shownState(alert);
  const detail = detailOf(alert);
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
  warnUnacknowledged(recent.slice(0, RECENT).filter((a) => a.state === 'unacknowledged'));
}

// ---- a report nobody acknowledged ---------------------------------------------------------------------------

const warned = new Set(); // alerts the operator has been told about (a sound once each, not on every render)
let audio = null;
let unanswered = []; // what the box says now, for tests and screen readers: document.body.dataset.unacknowledged

function beep() {
  try {
    audio = audio || new AudioContext();
    if (audio.state === 'suspended') audio.resume().catch(() => {});
    playTones(audio, UNANSWERED);
  } catch {
    // no sound device: the red box below still says what to do
  }
}

// An unacknowledged report (the relay gave up escalating) sounds once and says whom to call, by name and phone.
function warnUnacknowledged(alerts) {
  const box = $('call-desk');
  const fresh = alerts.filter((a) => !warned.has(a.alert_id));
  for (const a of fresh) warned.add(a.alert_id);
  if (fresh.length) beep();
  unanswered = alerts.map((a) => a.alert_id);
  document.body.dataset.unacknowledged = String(unanswered.length);
  if (!alerts.length) {
    box.hidden = true;
    box.replaceChildren();
    return;
  }
  const ids = [...new Set(alerts.flatMap((a) => a.desks))];
  const who = ids.map((id) => {
    const d = desks.get(id) || {name: id, phone: null};
    return d.phone ? t('op.call_one', {name: d.name, phone: d.phone}) : t('op.call_no_phone', {name: d.name});
  });
  box.replaceChildren(el('p', {text: t('op.call_desk', {desks: who.join('; ')})}),
    el('p', {text: alerts.map((a) => a.short_code).join(', ')}));
  box.hidden = false;
}

// ---- the gazetteer ---------------------------------------------------------------------------------------------

let placeQuery = 0; // answers to older queries are dropped
let placeOptions = [];
let placeActive = -1;

function forgetPlace() {
  chosenPlace = null;
  $('approximate').hidden = true;
  closePlaces();
}

function closePlaces() {
  $('place-list').hidden = true;
  $('place-list').replaceChildren();
  $('f-place').setAttribute('aria-expanded', 'false');
  $('f-place').removeAttribute('aria-activedescendant');
  placeOptions = [];
  placeActive = -1;
}

function choosePlace(place) {
  chosenPlace = place;
  $('f-place').value = place.name;
  $('f-lat').value = String(place.lat);
  $('f-lon').value = String(place.lon);
  if (!value('district')) $('f-district').value = place.district;
  if (!value('address')) $('f-address').value = place.name;
  const approximate = $('approximate');
  approximate.textContent = t('op.approximate', {name: place.name, km: number(place.accuracy_m / 1000)});
  approximate.hidden = false;
  closePlaces();
}

function showPlaces(places) {
  const list = $('place-list');
  placeOptions = places;
  placeActive = places.length ? 0 : -1;
  list.replaceChildren(...(places.length ? places : [null]).map((p, i) => (p
    ? el('li', {id: `place-${i}`, role: 'option', 'aria-selected': i === 0 ? 'true' : 'false',
      text: p.district ? t('op.place_option', {name: p.name, district: p.district}) : p.name,
      onmousedown: (event) => { event.preventDefault(); choosePlace(p); }})
    : el('li', {role: 'option', 'aria-disabled': 'true', text: t('op.place_none')}))));
  list.hidden = false;
  $('f-place').setAttribute('aria-expanded', 'true');
  if (placeActive >= 0) $('f-place').setAttribute('aria-activedescendant', 'place-0');
}

function movePlace(step) {
  if (!placeOptions.length) return;
  placeActive = (placeActive + step + placeOptions.length) % placeOptions.length;
  for (const [i, node] of [...$('place-list').children].entries()) {
    node.setAttribute('aria-selected', i === placeActive ? 'true' : 'false');
  }
  $('f-place').setAttribute('aria-activedescendant', `place-${placeActive}`);
}

async function lookUpPlaces() {
  const q = $('f-place').value.trim();
  const ticket = ++placeQuery;
  if (q.length < 2) {
    closePlaces();
    return;
  }
  let answer;
  try {
    answer = await session.call(`/api/v1/places?q=${encodeURIComponent(q)}&limit=8`);
  } catch (err) {
    if (err instanceof Offline) return;
    throw err;
  }
  if (ticket !== placeQuery || !answer.ok) return;
  showPlaces(answer.data.places);
}

function wirePlaces() {
  const input = $('f-place');
  $('place-field').hidden = false;
  input.addEventListener('input', () => { forgetPlace(); lookUpPlaces(); });
  input.addEventListener('blur', closePlaces);
  // Enter picks the highlighted place instead of sending the form; Escape closes the list
  input.addEventListener('keydown', (event) => {
    if ($('place-list').hidden) return;
    if (event.key === 'ArrowDown' || event.key === 'ArrowUp') {
      event.preventDefault();
      movePlace(event.key === 'ArrowDown' ? 1 : -1);
    } else if (event.key === 'Enter' && placeActive >= 0) {
      event.preventDefault();
      event.stopPropagation();
      choosePlace(placeOptions[placeActive]);
    } else if (event.key === 'Escape') {
      closePlaces();
    }
  });
}

async function loadSession() {
  let answer;
  try {
    answer = await session.call('/console/session');
  } catch (err) {
    if (err instanceof Offline) return;
    throw err;
  }
  if (!answer.ok) return;
  desks = new Map((answer.data.desks || []).map((d) => [d.id, d]));
  if (answer.data.gazetteer) wirePlaces();
  render();
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
  $('f-lon').addEventListener('change', splitPair);
  $('f-heading_deg').addEventListener('change', convertHeading);
  for (const name of ['f-lat', 'f-lon']) $(name).addEventListener('input', () => { if (chosenPlace) forgetPlace(); });
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
  loadSession();
  setInterval(showNow, 1000);
  setInterval(poll, POLL_MS);
  setInterval(() => { if (isOnline()) reload(); }, RELOAD_MS);
}

login('operator', start);
