// The dispatcher's board: this desk's tracks (one card per drone, not per call), triaged, beside a plot of the
// airspace around the airfield; one alarm loop while any track waits for an acknowledgement; the keyboard does
// everything; each alert put on screen is confirmed to the relay (the operator sees it reached the web console).
import {$, AlertTable, Offline, followRelay, login, plural, serverNow, t} from './common.js';
import {Alarm} from './alarm.js';
import {agoText, codesText, distanceText, etaText, fillCard, makeCard, trackView, triage} from './board.js';
import {Timeline} from './board_timeline.js';
import {Plot} from './plot.js';

const OPEN_LIMIT = 100;
const ACKED_LIMIT = 50;
const ALERT_LIMIT = 200;
const RELOAD_MS = 15000; // distances and ETAs are the relay's, dead-reckoned when read: re-read them often
const RENDER_MS = 5000; // stale marks, ETAs in minutes, the plot
const LOOK_MS = 700; // pointing at a card this long is looking at it (passing over it is not)
const BY_KEY = 'uav-relay.desk.by';
const LOOKED_KEY = 'uav-relay.desk.looked';
const OPEN_STATES = new Set(['pending', 'delivered']);

const tracks = new AlertTable('track_id');
const alerts = new AlertTable();
const readAt = new Map(); // track_id -> when (relay's clock) its JSON was read: its ETA counts down from there
const cards = new Map(); // track_id -> card (see board.js)
const looked = new Set(readJson(sessionStorage.getItem(LOOKED_KEY), [])); // tracks the dispatcher has looked at
const received = new Set(); // alerts confirmed to the relay as shown
const knownAlerts = new Set(); // alerts this page has shown: the next one is an arrival, announced
const arrived = new Map(); // track_id -> when this page first showed it
let haveData = false; // the relay's lists have been read once
let loaded = false; // ... and announced
let views = [];
let session = null;
let desk = null; // GET /console/session: {id, name, area, tile_url, join_window_s}
let isOnline = () => false;
let pointed = null; // the card or marker under the pointer
let focused = null; // the card holding the keyboard focus
let lookTimer = 0;

const alarm = new Alarm({onChange: paintSound});
let plot = null;
let timeline = null;

function readJson(text, fallback) {
  try {
    return text ? JSON.parse(text) : fallback;
  } catch {
    return fallback;
  }
}

// ---- reading the relay -----------------------------------------------------------------------------------------

async function loadSession() {
  if (desk) return true;
  const answer = await session.call('/console/session');
  if (!answer.ok || !answer.data) return false;
  desk = answer.data;
  $('who').textContent = desk.name && desk.name !== desk.id ? t('board.desk', {id: desk.id, name: desk.name})
    : t('dispatcher.desk', {id: desk.id});
  plot.configure({area: desk.area, name: desk.name || desk.id, tileUrl: desk.tile_url});
  $('plot-box').classList.toggle('no-area', !desk.area);
  return true;
}

async function reload() {
  const trackTicket = tracks.ticket();
  const alertTicket = alerts.ticket();
  const now = serverNow();
  let answers;
  try {
    if (!(await loadSession())) return;
    answers = await Promise.all([
      session.call(`/api/v1/tracks?state=open&limit=${OPEN_LIMIT}`),
      session.call(`/api/v1/tracks?state=acknowledged&limit=${ACKED_LIMIT}`),
      session.call(`/api/v1/alerts?state=open&limit=${ALERT_LIMIT}`),
      session.call('/api/v1/alerts?state=unacknowledged&limit=50'),
    ]);
  } catch (err) {
    if (err instanceof Offline) return; // the stream notices too, and reloads everything when it is back
    throw err;
  }
  if (!answers.every((a) => a.ok)) return;
  const listed = new Set();
  for (const answer of answers.slice(0, 2)) {
    for (const track of answer.data.tracks) {
      if (tracks.put(track, trackTicket)) readAt.set(track.track_id, now);
      listed.add(track.track_id);
    }
  }
  // no longer listed: closed, or merged into another, while nothing told this page
  for (const track of tracks.all()) if (!listed.has(track.track_id)) forgetTrack(track.track_id, trackTicket);
  const openNow = new Set();
  for (const answer of answers.slice(2)) {
    for (const alert of answer.data.alerts) {
      alerts.put(alert, alertTicket);
      openNow.add(alert.alert_id);
    }
  }
  // shown as open but no longer listed: acknowledged while this page was not listening
  const closed = alerts.all().filter((a) => OPEN_STATES.has(a.state) && !openNow.has(a.alert_id));
  await Promise.all(closed.map((a) => fetchAlert(a.alert_id)));
  await fetchLatest();
  haveData = true;
  for (const alert of alerts.all()) if (!tracks.has(alert.track_id)) alerts.drop(alert.alert_id);
  render();
}

function forgetTrack(id, ticket) {
  const entry = tracks.alerts.get(id);
  if (entry && entry.ticket < ticket) tracks.drop(id);
}

/** Each track's newest alert (its report is the card's type, count, heading, altitude) when not read yet. */
async function fetchLatest() {
  const missing = tracks.all().map((tr) => tr.alert_ids[tr.alert_ids.length - 1]).filter((id) => id && !alerts.has(id));
  await Promise.all(missing.map(fetchAlert));
}

async function fetchAlert(id) {
  const ticket = alerts.ticket();
  try {
    const answer = await session.call(`/api/v1/alerts/${encodeURIComponent(id)}`);
    if (answer.ok) {
      alerts.put(answer.data, ticket);
      return answer.data;
    }
  } catch (err) {
    if (!(err instanceof Offline)) throw err;
  }
  return null;
}

async function fetchTrack(id) {
  const ticket = tracks.ticket();
  const now = serverNow();
  let answer;
  try {
    answer = await session.call(`/api/v1/tracks/${encodeURIComponent(id)}`);
  } catch (err) {
    if (!(err instanceof Offline)) throw err;
    return;
  }
  if (answer.status === 404 || (answer.ok && answer.data.state === 'closed')) forgetTrack(id, ticket + 1);
  else if (answer.ok && tracks.put(answer.data, ticket)) readAt.set(id, now);
}

// Events come in bursts (a raid, a track acknowledged: one per alert): they are gathered for a moment and each
// alert and track named is read once.
const pending = {alerts: new Set(), tracks: new Set(), full: false};
let flushing = null;
let flushTimer = 0;

function refresh(alertId, event = {}) {
  pending.alerts.add(alertId);
  const known = alerts.get(alertId);
  if (!event.track_id || !tracks.has(event.track_id) || (known && known.track_id !== event.track_id)) {
    pending.full = true; // a new track, or one merged or split: the list is read again
  } else {
    pending.tracks.add(event.track_id);
  }
  clearTimeout(flushTimer);
  flushTimer = setTimeout(flush, 40);
}

async function flush() {
  if (flushing) {
    await flushing;
    if (!pending.alerts.size && !pending.full) return;
  }
  const ids = [...pending.alerts];
  const trackIds = new Set(pending.tracks);
  let full = pending.full;
  pending.alerts.clear();
  pending.tracks.clear();
  pending.full = false;
  flushing = (async () => {
    const got = await Promise.all(ids.map(fetchAlert));
    for (const alert of got) {
      if (!alert) continue;
      if (tracks.has(alert.track_id)) trackIds.add(alert.track_id);
      else full = true;
    }
    if (full) await reload();
    else {
      await Promise.all([...trackIds].map(fetchTrack));
      await fetchLatest();
      render();
    }
  })();
  try {
    await flushing;
  } finally {
    flushing = null;
  }
}

// ---- the board -------------------------------------------------------------------------------------------------

let renderTimer = 0;

// The board never moves under a pressed pointer. Pressing a new card's button focuses it, which makes it seen and
// re-renders it; a track arriving re-orders the list. Between the press and the release either moved the button
// away, and the click was lost, or landed on another card's button. A render waits for the release (bounded: a
// release the page never hears must not freeze the board).
const PRESS_HOLD_MAX_MS = 3000;
let pressedAt = 0;
let renderHeld = false;

function pressing() {
  return pressedAt > 0 && performance.now() - pressedAt < PRESS_HOLD_MAX_MS;
}

function pressed() {
  pressedAt = performance.now();
}

function released() {
  pressedAt = 0;
  if (!renderHeld) return;
  renderHeld = false;
  setTimeout(render, 0); // after the click this release belongs to
}

function render() {
  clearTimeout(renderTimer);
  if (pressing()) {
    renderHeld = true;
    renderTimer = setTimeout(render, PRESS_HOLD_MAX_MS);
    return;
  }
  renderTimer = setTimeout(render, RENDER_MS);
  if (!session) return;
  const now = serverNow();
  const byTrack = new Map();
  for (const alert of alerts.all()) {
    if (!byTrack.has(alert.track_id)) byTrack.set(alert.track_id, []);
    byTrack.get(alert.track_id).push(alert);
  }
  views = tracks.all().filter((tr) => tr.state !== 'closed')
    .map((tr) => trackView(tr, byTrack.get(tr.track_id) || [], session.id, now, readAt.get(tr.track_id) ?? now));
  const waiting = views.filter((v) => v.needsAck).sort(triage);
  const acked = views.filter((v) => !v.needsAck).sort(triage);
  views = [...waiting, ...acked];
  announce(views);

  const wanted = new Set(views.map((v) => v.id));
  for (const [id, card] of cards) {
    if (!wanted.has(id)) {
      card.node.remove();
      cards.delete(id);
    }
  }
  place($('tracks'), waiting, now);
  place($('acked'), acked, now);
  $('none-open').hidden = waiting.length > 0;
  $('acked-section').hidden = acked.length === 0;
  paintCounts(waiting, views);
  plot.show(views.map(plotItem));
  plot.highlight(pointed || focused);
  alarm.set(!waiting.length ? 'none' : waiting.some((v) => v.flash) ? 'flash' : 'normal');
  confirmShown();
  paintSound();
  if (timeline) timeline.sync(views);
}

function place(list, shown, now) {
  shown.forEach((view, i) => {
    let card = cards.get(view.id);
    if (!card) {
      card = makeCard(view.id, {onAck: acknowledge, onOpen: openTimeline, onLook: look});
      cards.set(view.id, card);
    }
    fillCard(card, view, {now, fresh: isFresh(view)});
    // moved only when out of place: moving a node takes the keyboard focus off it
    if (list.children[i] !== card.node) {
      const had = card.node.contains(document.activeElement) ? document.activeElement : null;
      list.insertBefore(card.node, list.children[i] || null);
      if (had) had.focus({preventScroll: true});
    }
  });
}

function isFresh(view) {
  return view.needsAck && !looked.has(view.id);
}

function paintCounts(waiting, all) {
  const flash = waiting.filter((v) => v.flash).length;
  const approaching = all.filter((v) => v.approaching && !v.stale).length;
  $('count-waiting').textContent = t('board.count_waiting', {n: waiting.length});
  $('count-waiting').classList.toggle('alarm', waiting.length > 0);
  $('count-flash').textContent = t('board.count_flash', {n: flash});
  $('count-flash').classList.toggle('alarm', flash > 0);
  $('count-approaching').textContent = t('board.count_approaching', {n: approaching});
  $('count-approaching').classList.toggle('warn', approaching > 0);
  $('count-all').textContent = t('board.count_all', {n: all.length});
  // the newest arrival first: the one the dispatcher has not seen yet is most likely the one that just came
  const fresh = waiting.filter(isFresh).sort((a, b) => (arrived.get(b.id) || 0) - (arrived.get(a.id) || 0));
  const jump = $('jump-new');
  jump.dataset.trackId = fresh.length ? fresh[0].id : '';
  jump.hidden = fresh.length === 0;
  jump.textContent = fresh.length ? t('board.jump_new', {n: fresh.length, codes: codesText(fresh.map((v) => v.codes[0]))})
    : '';
  document.title = waiting.length ? t('dispatcher.title_alerts', {n: waiting.length}) : t('dispatcher.title');
}

function plotItem(view) {
  const report = view.latest ? view.latest.report : {};
  const classes = [view.needsAck ? 'waiting' : 'acked'];
  if (view.flash) classes.push('flash');
  if (view.stale) classes.push('stale');
  if (isFresh(view)) classes.push('fresh');
  const label = view.codes.length > 1 ? `${view.codes[0]} +${view.codes.length - 1}` : view.codes[0] || '';
  return {
    id: view.id, lat: view.track.position.lat, lon: view.track.position.lon,
    heading: view.track.heading_deg ?? report.heading_deg ?? null,
    label, classes, trail: view.track.trail || [],
    title: [codesText(view.codes), distanceText(view.desk), plural('board.reports', view.track.reports)]
      .filter(Boolean).join(' — '),
  };
}

/** Every arrival in the live region: a new track with where it is, or a track's new report. */
function announce(shown) {
  if (!haveData) return;
  const said = [];
  for (const view of shown) {
    const fresh = view.track.alert_ids.filter((id) => !knownAlerts.has(id));
    view.track.alert_ids.forEach((id) => knownAlerts.add(id));
    const isNew = !arrived.has(view.id);
    if (isNew) arrived.set(view.id, Date.now());
    if (!loaded || !fresh.length) continue;
    const where = [distanceText(view.desk), view.approaching ? etaText(view.etaAt - serverNow()) : '']
      .filter(Boolean).join(', ');
    const codes = codesText(view.codes);
    if (isNew) said.push(t(view.flash ? 'board.say_new_flash' : 'board.say_new', {codes, where}));
    else said.push(t('board.say_update', {codes, n: view.track.reports, where}));
  }
  if (!loaded) {
    loaded = true;
    const waiting = shown.filter((v) => v.needsAck).length;
    if (shown.length) said.push(t('board.say_loaded', {n: shown.length, waiting}));
  }
  if (said.length) $('announce').textContent = said.join('; ');
}

/** Each alert of a track on screen is confirmed once: POST .../received (a `web` delivery for this desk). Only
 *  while the page is visible: a tab in the background shows nobody anything. */
const toConfirm = [];
let confirming = 0;

function confirmShown() {
  if (document.visibilityState !== 'visible' || !isOnline()) return;
  for (const view of views) {
    if (view.track.state === 'acknowledged') continue; // every alert of it is answered: nothing left to deliver
    for (const id of view.track.alert_ids) {
      if (received.has(id)) continue;
      received.add(id);
      toConfirm.push(id);
    }
  }
  pumpConfirmations();
}

function pumpConfirmations() {
  while (confirming < 4 && toConfirm.length) {
    const id = toConfirm.shift();
    confirming += 1;
    session.call(`/api/v1/alerts/${encodeURIComponent(id)}/received`, {method: 'POST'})
      .then((answer) => { if (answer.status >= 500) received.delete(id); }, () => received.delete(id))
      .finally(() => {
        confirming -= 1;
        pumpConfirmations();
      });
  }
}

function tick() {
  const now = serverNow();
  for (const view of views) {
    const card = cards.get(view.id);
    if (!card) continue;
    const ago = card.facts.querySelector('.ago');
    if (ago) ago.textContent = agoText(now - view.lastSeen);
    const eta = card.where.querySelector('.t-eta');
    if (eta && view.approaching) eta.textContent = etaText(Math.max(0, view.etaAt - now));
  }
}

// ---- looking, pointing, the keyboard -----------------------------------------------------------------------------

/** A card pointed at (for a moment) or focused is looked at: no longer new. Either highlights it on the plot. */
function look(id, on, how) {
  if (how === 'focus') focused = on ? id : focused === id ? null : focused;
  else {
    clearTimeout(lookTimer);
    pointed = on ? id : pointed === id ? null : pointed;
    if (on) lookTimer = setTimeout(() => seen(id), LOOK_MS);
  }
  plot.highlight(pointed || focused);
  if (on && how === 'focus') seen(id);
}

function seen(id) {
  if (looked.has(id)) return;
  looked.add(id);
  const current = new Set(tracks.all().map((tr) => tr.track_id));
  sessionStorage.setItem(LOOKED_KEY, JSON.stringify([...looked].filter((x) => current.has(x))));
  setTimeout(render, 0);
}

function orderedCards() {
  return [...$('tracks').children, ...$('acked').children];
}

function cardOf(node) {
  return node && node.closest ? node.closest('li.track') : null;
}

function move(step) {
  const all = orderedCards();
  if (!all.length) return;
  const at = all.indexOf(cardOf(document.activeElement));
  const next = all[at < 0 ? 0 : Math.max(0, Math.min(all.length - 1, at + step))];
  next.focus();
  next.scrollIntoView({block: 'nearest'});
}

/** The focused card's track, or the top one waiting for an acknowledgement. */
function chosenTrack() {
  const card = cardOf(document.activeElement);
  if (card) return card.dataset.trackId;
  const top = $('tracks').firstElementChild;
  return top ? top.dataset.trackId : null;
}

const TYPING = new Set(['INPUT', 'SELECT', 'TEXTAREA']);

function onKey(event) {
  // after a reload the first key only lets the page sound: it must not also acknowledge something unseen
  const wasBlocked = alarm.state === 'blocked' || alarm.connState === 'blocked';
  alarm.unlock();
  if (wasBlocked) {
    event.preventDefault();
    return;
  }
  if (!timeline || timeline.isOpen || event.altKey || event.ctrlKey || event.metaKey) return;
  const target = event.target;
  if (TYPING.has(target.tagName) || target.isContentEditable) return;
  const onButton = target.tagName === 'BUTTON';
  switch (event.code) {
    case 'ArrowDown': case 'KeyJ':
      move(1);
      break;
    case 'ArrowUp': case 'KeyK':
      move(-1);
      break;
    case 'Enter': case 'NumpadEnter': {
      if (onButton) return; // the button's own action
      const id = chosenTrack();
      if (id) acknowledge(id);
      break;
    }
    case 'KeyH': {
      const id = chosenTrack() || (views[0] && views[0].id);
      if (id) openTimeline(id);
      break;
    }
    case 'Equal': case 'NumpadAdd':
      plot.zoom(-1);
      paintScale();
      break;
    case 'Minus': case 'NumpadSubtract':
      plot.zoom(1);
      paintScale();
      break;
    default:
      return;
  }
  event.preventDefault();
}

function paintScale() {
  $('scale').textContent = t('board.plot.ring', {km: plot.km});
}

// ---- acting ----------------------------------------------------------------------------------------------------

async function acknowledge(id) {
  const card = cards.get(id);
  const view = views.find((v) => v.id === id);
  if (!card || !view || !view.needsAck || card.ack.disabled) return;
  const by = $('by').value.trim();
  localStorage.setItem(BY_KEY, by);
  card.ack.disabled = true;
  card.note.textContent = t('dispatcher.acking');
  let answer;
  try {
    answer = await session.call(`/api/v1/tracks/${encodeURIComponent(id)}/ack`, {method: 'POST', body: {by}});
  } catch {
    card.note.textContent = t('dispatcher.ack_offline');
    card.ack.disabled = false;
    return;
  }
  card.ack.disabled = false;
  if (!answer.ok) {
    const reason = answer.data && typeof answer.data.detail === 'string' ? answer.data.detail : String(answer.status);
    card.note.textContent = t('dispatcher.ack_failed', {reason});
    return;
  }
  card.note.textContent = '';
  // The answer is the track after the ack: newer than any read started before it came back (one of those may have
  // been answered before the ack was committed, and must not put the track back on the list).
  const ticket = tracks.ticket();
  const hadFocus = card.node.contains(document.activeElement);
  const next = nextWaiting(id);
  looked.add(id);
  if (tracks.put(answer.data, ticket)) readAt.set(id, serverNow());
  await Promise.all(view.open.map((a) => fetchAlert(a.alert_id))); // acknowledged now: the card leaves the list
  render();
  if (hadFocus || !cardOf(document.activeElement)) (next ? next.node : $('open-h')).focus({preventScroll: !next});
  $('announce').textContent = t('board.say_acked', {codes: codesText(view.codes)});
}

function nextWaiting(id) {
  const ids = [...$('tracks').children].map((node) => node.dataset.trackId);
  const at = ids.indexOf(id);
  return cards.get(ids[at + 1]) || cards.get(ids[at - 1]) || null;
}

function openTimeline(id) {
  seen(id);
  timeline.open(id);
}

// ---- sound -----------------------------------------------------------------------------------------------------

function paintSound() {
  const blocked = alarm.state === 'blocked' || alarm.connState === 'blocked';
  $('sound-banner').hidden = !blocked;
  $('sound').hidden = alarm.allowed;
}

// ---- start -------------------------------------------------------------------------------------------------------

function start(s) {
  session = s;
  plot = new Plot($('plot'), {
    t,
    onPick: (id) => {
      const card = cards.get(id);
      if (card) {
        card.node.scrollIntoView({block: 'nearest'});
        card.node.focus({preventScroll: true});
      }
    },
    onHover: (id) => {
      pointed = id;
      plot.highlight(pointed || focused);
      for (const card of cards.values()) card.node.classList.toggle('pointed', card.id === id);
    },
  });
  timeline = new Timeline({
    session, views: () => views, by: () => $('by').value.trim(),
    changed: () => reload(),
  });
  $('by').value = localStorage.getItem(BY_KEY) || '';
  $('by').addEventListener('change', () => localStorage.setItem(BY_KEY, $('by').value.trim()));
  $('sound').addEventListener('click', () => alarm.unlock());
  $('sound-banner-button').addEventListener('click', () => alarm.unlock());
  $('zoom-in').addEventListener('click', () => { plot.zoom(-1); paintScale(); });
  $('zoom-out').addEventListener('click', () => { plot.zoom(1); paintScale(); });
  $('jump-new').addEventListener('click', () => {
    const first = cards.get($('jump-new').dataset.trackId);
    if (first) {
      first.node.scrollIntoView({block: 'nearest'});
      first.node.focus({preventScroll: true});
    }
  });
  document.addEventListener('visibilitychange', confirmShown);
  render();
  paintScale();
  isOnline = followRelay(session, {
    reload, refresh, onState: (state) => alarm.connection(state === 'offline'),
  });
  setInterval(tick, 1000);
  setInterval(() => { if (isOnline()) reload(); }, RELOAD_MS);
}

// Any click or key is the gesture that lets the page sound (the login's Enter or click is the first one).
document.addEventListener('pointerdown', () => alarm.unlock(), {capture: true});
document.addEventListener('pointerdown', pressed, {capture: true});
for (const type of ['pointerup', 'pointercancel']) document.addEventListener(type, released, {capture: true});
window.addEventListener('blur', released);
document.addEventListener('keydown', onKey);
$('open-h').tabIndex = -1;
login('desk', start);
