// The dispatcher's console: this desk's open alerts, newest first, live; an alarm and a flashing card for each
// new one until it is acknowledged; one button to acknowledge; acknowledged alerts below as history.
import {
  $, AlertTable, Offline, followRelay, altitudeText, channelName, channelStates, clock, compass, duration,
  el, enumLabel, login, newestFirst, placeLines, serverNow, t,
} from './common.js';

const HISTORY = 20;
const OPEN_LIMIT = 200;
const ALARM_REPEAT_MS = 30000; // an unanswered alarm sounds again: the dispatcher may have stepped away
const POLL_MS = 2000; // deliveries change without a state event (sent, SMS fired): re-read open alerts now and then
const RELOAD_MS = 30000; // the whole list, in case an event was missed
const BY_KEY = 'uav-relay.desk.by';

const table = new AlertTable();
const seen = new Set(); // every alert this page has shown: the alarm sounds once per alert, not per update
const flashing = new Set(); // new and not acknowledged yet
const cards = new Map(); // alert_id -> {node, body, button, note}
let session = null;
let isOnline = () => false; // replaced by followRelay once logged in
let audio = null;

// ---- sound ----------------------------------------------------------------------------------------------------

// Browsers let a page make sound only after a user gesture: the login click is one; after a reload the
// "Включить звук" button (or any click or key) is.
function unlockAudio() {
  try {
    if (!audio) {
      audio = new AudioContext();
      audio.addEventListener('statechange', paintSound);
    }
    if (audio.state === 'suspended') audio.resume().catch(() => {});
  } catch {
    audio = null;
  }
  paintSound();
}

function paintSound() {
  $('sound').hidden = Boolean(audio && audio.state === 'running');
}

function alarm() {
  if (!audio || audio.state !== 'running') {
    paintSound();
    return;
  }
  const start = audio.currentTime + 0.02;
  const gain = audio.createGain();
  gain.gain.setValueAtTime(0.0001, start);
  gain.connect(audio.destination);
  const osc = audio.createOscillator();
  osc.type = 'square';
  for (let i = 0; i < 6; i += 1) { // two tones, six beeps: not mistaken for a notification sound
    const at = start + i * 0.25;
    osc.frequency.setValueAtTime(i % 2 ? 660 : 880, at);
    gain.gain.linearRampToValueAtTime(0.25, at + 0.01);
    gain.gain.setValueAtTime(0.25, at + 0.18);
    gain.gain.linearRampToValueAtTime(0.0001, at + 0.2);
  }
  osc.connect(gain);
  osc.start(start);
  osc.stop(start + 1.6);
  osc.addEventListener('ended', () => gain.disconnect());
}

// ---- cards ------------------------------------------------------------------------------------------------------

function row(label, ...value) {
  return [el('dt', {text: label}), el('dd', {}, ...value)];
}

function marks(alert) {
  const report = alert.report;
  const out = [];
  if (alert.priority === 'flash') out.push(el('span', {class: 'mark flash', text: t('alert.flash')}));
  if (report.status === 'exercise') out.push(el('span', {class: 'mark drill', text: t('alert.exercise')}));
  if (report.status === 'test') out.push(el('span', {class: 'mark drill', text: t('alert.test')}));
  if (alert.stale) out.push(el('span', {class: 'mark stale', text: t('alert.stale')}));
  return out;
}

function heading(report) {
  if (report.heading_deg == null) return t('alert.unknown');
  const arrow = el('span', {class: 'arrow', 'aria-hidden': 'true', text: '↑'});
  arrow.style.transform = `rotate(${report.heading_deg}deg)`; // CSSOM, which the CSP allows; a style="" would not
  return [arrow, ' ', t('alert.heading_value', {deg: report.heading_deg, compass: compass(report.heading_deg)})];
}

function channels(alert) {
  const mine = alert.deliveries.filter((d) => d.desk_id === session.id);
  return channelStates(mine).map(({channel, state}) => el('span', {
    class: `chan chan-${state}`, text: t('delivery.item', {channel: channelName(channel), state: t(`delivery.${state}`)}),
  }));
}

function ago(observedAt) {
  const at = Date.parse(observedAt);
  return el('span', {class: 'ago', dataset: {at: String(at)}, text: t('alert.ago', {t: duration(serverNow() - at)})});
}

function details(alert) {
  const r = alert.report;
  const {place, coords} = placeLines(r);
  const rows = [
    row(t('alert.place'), el('span', {class: 'place', text: place})),
    row(t('alert.coords'), el('span', {class: 'coords', text: coords})),
    row(t('alert.type'), enumLabel('uav_type', r.uav_type || 'unknown')),
    row(t('alert.count'), el('span', {class: 'count', text: String(r.count ?? 1)})),
    row(t('alert.heading'), heading(r)),
    row(t('alert.altitude'), altitudeText(r) || t('alert.unknown')),
  ];
  for (const field of ['movement', 'sound', 'perception']) {
    if (r[field] && r[field] !== 'unknown') rows.push(row(t(`alert.${field}`), enumLabel(field, r[field])));
  }
  if (r.notes) rows.push(row(t('alert.notes'), r.notes));
  rows.push(row(t('alert.channels'), channels(alert)));
  return el('dl', {class: 'facts'}, rows);
}

function cardTop(alert) {
  return el('div', {class: 'card-top'},
    el('span', {class: 'code'}, el('span', {class: 'visually-hidden', text: `${t('alert.code')} `}), alert.short_code),
    el('span', {class: 'seen'},
      el('span', {class: 'label', text: t('alert.observed')}), ' ',
      el('time', {datetime: alert.report.observed_at, text: clock(alert.report.observed_at)}), ' ',
      ago(alert.report.observed_at)),
    el('span', {class: 'marks'}, marks(alert)));
}

function makeCard(alert) {
  const note = el('p', {class: 'note', role: 'status'});
  const button = el('button', {type: 'button', class: 'ack', text: t('dispatcher.ack')});
  button.addEventListener('click', () => acknowledge(alert.alert_id, button, note));
  const body = el('div', {class: 'card-body'});
  const node = el('li', {class: 'alert', dataset: {alertId: alert.alert_id}},
    body, el('div', {class: 'actions'}, button, note));
  const card = {node, body, button, note};
  fill(card, alert);
  return card;
}

function fill(card, alert) {
  // only the facts are rebuilt: the button stays the same element, so keyboard focus on it survives an update
  card.body.replaceChildren(cardTop(alert), details(alert),
    alert.state === 'unacknowledged' ? el('p', {class: 'given-up-note', text: t('dispatcher.given_up')}) : '');
  card.node.classList.toggle('new', flashing.has(alert.alert_id));
  card.node.classList.toggle('given-up', alert.state === 'unacknowledged');
  card.node.setAttribute('aria-label', `${alert.short_code}: ${placeLines(alert.report).place}`);
}

function historyItem(alert) {
  const r = alert.report;
  const ack = alert.ack;
  return el('li', {class: 'done', dataset: {alertId: alert.alert_id}},
    el('span', {class: 'code small', text: alert.short_code}),
    el('span', {text: `${clock(r.observed_at)} · ${placeLines(r).place} · ${enumLabel('uav_type', r.uav_type || 'unknown')}`
      + ` ×${r.count ?? 1}`}),
    ack ? el('span', {class: 'state state-acknowledged', text: `${t('states.acknowledged')}: ${ack.by || ack.desk_id}`
      + `, ${clock(ack.at)}`}) : '');
}

// ---- the lists ----------------------------------------------------------------------------------------------

function isOpen(alert) {
  return alert.state !== 'acknowledged';
}

function render() {
  const all = table.all();
  const open = all.filter(isOpen).sort(newestFirst);
  const done = all.filter((a) => !isOpen(a))
    .sort((a, b) => (a.ack && b.ack && a.ack.at < b.ack.at ? 1 : -1));
  for (const old of done.slice(HISTORY)) table.drop(old.alert_id);

  const list = $('open');
  const wanted = new Set(open.map((a) => a.alert_id));
  for (const [id, card] of cards) {
    if (!wanted.has(id)) {
      card.node.remove();
      cards.delete(id);
    }
  }
  open.forEach((alert, i) => {
    let card = cards.get(alert.alert_id);
    if (card) fill(card, alert);
    else {
      card = makeCard(alert);
      cards.set(alert.alert_id, card);
    }
    // moved only when out of place: moving a node would take the keyboard focus off its button
    if (list.children[i] !== card.node) list.insertBefore(card.node, list.children[i] || null);
  });
  $('none-open').hidden = open.length > 0;
  $('open-h').textContent = open.length ? t('dispatcher.open_count', {n: open.length}) : t('dispatcher.open');
  document.title = open.length ? t('dispatcher.title_alerts', {n: open.length}) : t('dispatcher.title');

  $('history').replaceChildren(...done.slice(0, HISTORY).map(historyItem));
  $('none-history').hidden = done.length > 0;
}

function tick() {
  const now = serverNow();
  for (const span of document.querySelectorAll('.ago')) {
    span.textContent = t('alert.ago', {t: duration(now - Number(span.dataset.at))});
  }
}

// ---- talking to the relay --------------------------------------------------------------------------------------

const fresh = []; // alerts first seen since the last render: one alarm and one announcement for them

function accept(alert, ticket) {
  if (!table.put(alert, ticket)) return;
  const id = alert.alert_id;
  if (!isOpen(alert)) flashing.delete(id);
  else if (!seen.has(id)) {
    flashing.add(id);
    fresh.push(alert);
  }
  seen.add(id);
}

function announceFresh() {
  if (!fresh.length) return;
  const alert = fresh[0];
  $('announce').textContent = t('dispatcher.new_alert', {code: alert.short_code, place: placeLines(alert.report).place});
  fresh.length = 0;
  alarm();
}

async function refresh(id) {
  const ticket = table.ticket();
  let answer;
  try {
    answer = await session.call(`/api/v1/alerts/${encodeURIComponent(id)}`);
  } catch (err) {
    if (err instanceof Offline) return; // the stream notices too, and reloads everything when it is back
    throw err;
  }
  if (!answer.ok) return;
  accept(answer.data, ticket);
  render();
  announceFresh();
}

async function reload() {
  const ticket = table.ticket();
  let answers;
  try {
    answers = await Promise.all([
      session.call(`/api/v1/alerts?state=open&limit=${OPEN_LIMIT}`),
      session.call('/api/v1/alerts?state=unacknowledged&limit=50'),
      session.call(`/api/v1/alerts?state=acknowledged&limit=${HISTORY}`),
    ]);
  } catch (err) {
    if (err instanceof Offline) return;
    throw err;
  }
  if (!answers.every((a) => a.ok)) return;
  const listed = new Set();
  for (const answer of answers) {
    for (const alert of answer.data.alerts) {
      accept(alert, ticket);
      listed.add(alert.alert_id);
    }
  }
  // shown as open but no longer listed: acknowledged while this page was not listening
  for (const alert of table.all()) if (isOpen(alert) && !listed.has(alert.alert_id)) refresh(alert.alert_id);
  render();
  announceFresh();
}

function poll() {
  if (!isOnline()) return;
  const stirring = table.all().filter((a) => isOpen(a) && a.deliveries.some((d) => d.state === 'queued'));
  for (const alert of stirring.slice(0, 10)) refresh(alert.alert_id);
}

async function acknowledge(id, button, note) {
  const by = $('by').value.trim();
  localStorage.setItem(BY_KEY, by);
  button.disabled = true;
  note.textContent = t('dispatcher.acking');
  const ticket = table.ticket();
  let answer;
  try {
    answer = await session.call(`/api/v1/alerts/${encodeURIComponent(id)}/ack`, {method: 'POST', body: {by}});
  } catch {
    note.textContent = t('dispatcher.ack_offline');
    button.disabled = false;
    return;
  }
  if (!answer.ok) {
    const reason = answer.data && typeof answer.data.detail === 'string' ? answer.data.detail : String(answer.status);
    note.textContent = t('dispatcher.ack_failed', {reason});
    button.disabled = false;
    return;
  }
  flashing.delete(id);
  const next = nextButton(id);
  accept(answer.data, ticket);
  render();
  (next || $('open-h')).focus();
}

function nextButton(id) {
  const ids = [...cards.keys()];
  const at = ids.indexOf(id);
  const other = cards.get(ids[at + 1]) || cards.get(ids[at - 1]);
  return other ? other.button : null;
}

function start(s) {
  session = s;
  $('by').value = localStorage.getItem(BY_KEY) || '';
  $('by').addEventListener('change', () => localStorage.setItem(BY_KEY, $('by').value.trim()));
  $('sound').addEventListener('click', unlockAudio);
  document.addEventListener('pointerdown', unlockAudio, {once: true});
  document.addEventListener('keydown', unlockAudio, {once: true});
  paintSound();
  render();
  isOnline = followRelay(session, {reload, refresh});
  setInterval(tick, 1000);
  setInterval(poll, POLL_MS);
  setInterval(() => { if (isOnline()) reload(); }, RELOAD_MS);
  setInterval(() => { if (flashing.size) alarm(); }, ALARM_REPEAT_MS);
}

$('login').addEventListener('submit', unlockAudio); // the gesture that lets the page sound later
$('open-h').tabIndex = -1;
login('desk', start);
