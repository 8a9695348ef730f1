// Shared by both consoles: the strings, the API with the bearer token, the live event stream, login, and
// small DOM and formatting helpers. The DOM is only ever built from text nodes (the CSP's Trusted Types
// setting makes any HTML-string sink throw), so a hostile string in a report stays text.

export const S = JSON.parse(document.getElementById('strings').textContent);

export function t(key, vars = {}) {
  const text = key.split('.').reduce((node, part) => (node == null ? undefined : node[part]), S);
  if (typeof text !== 'string') return key;
  return text.replace(/\{(\w+)\}/g, (whole, name) => (name in vars ? String(vars[name]) : whole));
}

// Russian counts have three forms (1 сообщение, 3 сообщения, 7 сообщений): `key` names an object of the
// Intl.PluralRules categories ("one", "few", "many", "other"), each a string with {n}.
export function plural(key, n, vars = {}) {
  const form = new Intl.PluralRules(S.locale).select(n);
  const forms = key.split('.').reduce((node, part) => (node == null ? undefined : node[part]), S) || {};
  return t(`${key}.${form in forms ? form : 'other'}`, {n, ...vars});
}

export function $(id) {
  return document.getElementById(id);
}

export function el(tag, props = {}, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(props)) {
    if (value == null || value === false) continue;
    if (key === 'class') node.className = value;
    else if (key === 'text') node.textContent = value;
    else if (key === 'dataset') Object.assign(node.dataset, value);
    else if (key.startsWith('on')) node.addEventListener(key.slice(2), value);
    else node.setAttribute(key, value === true ? '' : String(value));
  }
  for (const child of children.flat(Infinity)) {
    if (child == null || child === false || child === '') continue;
    node.append(child instanceof Node ? child : String(child));
  }
  return node;
}

// ---- time -----------------------------------------------------------------------------------------------

// The workstation's clock may be off; the relay's is the one that judges observed_at (at most 5 min ahead), so
// "now" and "minutes ago" are taken from it (its Date header, to the second) when they differ by more than 2 s.
let skewMs = 0;

export function serverNow() {
  return Date.now() + skewMs;
}

function noteServerDate(response) {
  const header = response.headers.get('Date');
  const at = header ? Date.parse(header) : NaN;
  if (Number.isNaN(at)) return;
  const skew = at + 500 - Date.now();
  skewMs = Math.abs(skew) > 2000 ? skew : 0;
}

export function duration(ms) {
  if (ms < 0) return t('time.future');
  const total = Math.floor(ms / 1000);
  const h = Math.floor(total / 3600);
  const m = Math.floor((total % 3600) / 60);
  const s = total % 60;
  if (h > 0) return t('time.hm', {h, m: String(m).padStart(2, '0')});
  if (m > 0) return t('time.ms', {m, s: String(s).padStart(2, '0')});
  return t('time.s', {s});
}

export function clock(iso) {
  const at = new Date(iso);
  return Number.isNaN(at.getTime()) ? '' : at.toLocaleTimeString(S.locale, {hour12: false});
}

export function number(value, digits = 1) {
  return Number(value).toLocaleString(S.locale, {maximumFractionDigits: digits});
}

// ---- the API ----------------------------------------------------------------------------------------------

export class Offline extends Error {}

const API_TIMEOUT_MS = 10000;

export async function api(token, path, {method = 'GET', body} = {}) {
  const headers = {Authorization: `Bearer ${token}`, Accept: 'application/json'};
  if (body !== undefined) headers['Content-Type'] = 'application/json';
  let response;
  try {
    response = await fetch(path, {
      method, headers, cache: 'no-store', credentials: 'omit',
      body: body === undefined ? undefined : JSON.stringify(body),
      signal: AbortSignal.timeout(API_TIMEOUT_MS),
    });
  } catch (err) {
    throw new Offline(String(err));
  }
  noteServerDate(response);
  let data = null;
  if ((response.headers.get('Content-Type') || '').includes('json')) {
    try {
      data = await response.json();
    } catch {
      data = null;
    }
  }
  return {status: response.status, ok: response.ok, data, headers: response.headers};
}

// ---- the live stream ------------------------------------------------------------------------------------------

// EventSource cannot send an Authorization header, so the stream is read with fetch(). Reconnects by itself with
// a capped, jittered backoff; a stream silent for longer than three of the relay's 15-s pings is taken as dead
// (a cut cable closes nothing).
const RETRY_MIN_MS = 500;
const RETRY_MAX_MS = 5000;
const SILENT_MS = 45000;

/** Follow the relay's event stream: show the connection state, reload on (re)connect, refresh what an event names
 *  (`refresh(alert_id, event)`), and tell `onState` ('online' or 'offline') when the stream comes or goes.
 *  Returns a function telling whether the stream is up now. */
export function followRelay(session, {reload, refresh, onState = () => {}}) {
  let online = false;
  new EventStream(session.token, {
    onOpen: () => {
      online = true;
      showConnection('online');
      onState('online');
      reload();
    },
    onEvent: (event) => refresh(event.alert_id, event),
    onDown: (retryMs) => {
      online = false;
      showConnection('offline', retryMs);
      onState('offline');
    },
    onUnauthorized: () => session.logout(t('login.bad_token')),
  }).start();
  return () => online;
}

export class EventStream {
  constructor(token, {onOpen, onEvent, onDown, onUnauthorized}) {
    Object.assign(this, {token, onOpen, onEvent, onDown, onUnauthorized});
    this.stopped = true;
  }

  start() {
    this.stopped = false;
    this.loop();
  }

  stop() {
    this.stopped = true;
    if (this.controller) this.controller.abort();
    clearTimeout(this.retryTimer);
  }

  async loop() {
    let delay = RETRY_MIN_MS;
    while (!this.stopped) {
      const controller = new AbortController();
      this.controller = controller;
      try {
        const response = await fetch('/api/v1/events', {
          headers: {Authorization: `Bearer ${this.token}`, Accept: 'text/event-stream'},
          cache: 'no-store', credentials: 'omit', signal: controller.signal,
        });
        if (response.status === 401) {
          this.stopped = true;
          this.onUnauthorized();
          return;
        }
        if (!response.ok || !response.body) throw new Error(`HTTP ${response.status}`);
        delay = RETRY_MIN_MS;
        this.onOpen();
        await this.read(response.body.getReader(), controller);
      } catch {
        // the relay is gone or the stream broke: retried below
      }
      if (this.stopped) return;
      const wait = Math.round(delay * (0.8 + Math.random() * 0.4));
      this.onDown(wait);
      await new Promise((resolve) => { this.retryTimer = setTimeout(resolve, wait); });
      delay = Math.min(delay * 2, RETRY_MAX_MS);
    }
  }

  async read(reader, controller) {
    const decoder = new TextDecoder();
    let buffer = '';
    let silence = setTimeout(() => controller.abort(), SILENT_MS);
    try {
      for (;;) {
        const {value, done} = await reader.read();
        if (done) return;
        clearTimeout(silence);
        silence = setTimeout(() => controller.abort(), SILENT_MS);
        buffer += decoder.decode(value, {stream: true}).replace(/\r\n?/g, '\n');
        let end;
        while ((end = buffer.indexOf('\n\n')) >= 0) {
          this.dispatch(buffer.slice(0, end));
          buffer = buffer.slice(end + 2);
        }
      }
    } finally {
      clearTimeout(silence);
    }
  }

  dispatch(block) {
    let type = 'message';
    const data = [];
    for (const line of block.split('\n')) {
      if (line.startsWith(':')) continue;
      const colon = line.indexOf(':');
      const field = colon < 0 ? line : line.slice(0, colon);
      const value = colon < 0 ? '' : line.slice(colon + 1).replace(/^ /, '');
      if (field === 'event') type = value;
      else if (field === 'data') data.push(value);
    }
    if (type !== 'alert' || data.length === 0) return;
    try {
      this.onEvent(JSON.parse(data.join('\n')));
    } catch (err) {
      console.error('bad event', err);
    }
  }
}

// ---- connection banner ------------------------------------------------------------------------------------

let retryAt = 0;
let retryTicker = 0;
let wasOffline = false;

function paintOffline() {
  const left = Math.max(0, Math.ceil((retryAt - Date.now()) / 1000));
  $('offline').textContent = t('conn.offline', {s: left});
}

export function showConnection(state, retryMs = 0) {
  const conn = $('conn');
  const offline = $('offline');
  conn.dataset.state = state;
  clearInterval(retryTicker);
  if (state === 'offline') {
    wasOffline = true;
    retryAt = Date.now() + retryMs;
    conn.textContent = t('conn.offline_short');
    paintOffline();
    retryTicker = setInterval(paintOffline, 250);
    offline.hidden = false;
    document.body.classList.add('is-offline');
    return;
  }
  conn.textContent = t(state === 'online' && wasOffline ? 'conn.restored' : `conn.${state}`);
  offline.hidden = true;
  document.body.classList.remove('is-offline');
}

// ---- login ------------------------------------------------------------------------------------------------------

// The token lives in sessionStorage: gone when the tab closes, never sent anywhere but this relay's API.
export function login(role, onReady) {
  const tokenKey = `uav-relay.${role}.token`;
  const whoKey = `uav-relay.${role}.id`;

  const enter = (token, id) => {
    sessionStorage.setItem(tokenKey, token);
    sessionStorage.setItem(whoKey, id);
    $('login-view').hidden = true;
    $('app').hidden = false;
    $('tools').hidden = false;
    $('who').textContent = t(role === 'desk' ? 'dispatcher.desk' : 'operator.operator', {id});
    // the API as this session: a 401 (the token was withdrawn) ends the session
    const call = async (path, options) => {
      const answer = await api(token, path, options);
      if (answer.status === 401) logout(t('login.bad_token'));
      return answer;
    };
    onReady({token, id, logout, call});
  };

  const showLogin = (message = '') => {
    $('app').hidden = true;
    $('tools').hidden = true;
    $('who').textContent = '';
    $('login-view').hidden = false;
    $('login-error').textContent = message;
    $('conn').textContent = '';
    $('offline').hidden = true;
    $('token').focus();
  };

  function logout(message = '') {
    sessionStorage.removeItem(tokenKey);
    sessionStorage.removeItem(whoKey);
    // a fresh page drops every timer, stream and alert of the old session
    if (message) sessionStorage.setItem('uav-relay.logout-message', message);
    window.location.reload();
  }

  $('login').addEventListener('submit', async (event) => {
    event.preventDefault();
    const token = $('token').value.trim();
    if (!token) return;
    $('login-error').textContent = t('login.checking');
    let answer;
    try {
      answer = await api(token, '/console/session');
    } catch {
      $('login-error').textContent = t('login.offline');
      return;
    }
    if (answer.status === 401 || !answer.ok || !answer.data) {
      $('login-error').textContent = t('login.bad_token');
      $('token').select();
      return;
    }
    if (answer.data.role !== role) {
      $('login-error').textContent = t(role === 'desk' ? 'login.wrong_role_dispatcher' : 'login.wrong_role_operator');
      $('token').select();
      return;
    }
    $('token').value = '';
    enter(token, answer.data.id);
  });
  $('logout').addEventListener('click', () => logout());

  const message = sessionStorage.getItem('uav-relay.logout-message') || '';
  sessionStorage.removeItem('uav-relay.logout-message');
  const saved = sessionStorage.getItem(tokenKey);
  const savedId = sessionStorage.getItem(whoKey);
  if (saved && savedId) enter(saved, savedId);
  else showLogin(message);
}

// ---- what alerts say ------------------------------------------------------------------------------------------

export function enumLabel(field, value) {
  return (S.enums[field] || {})[value] || value || '';
}

export function compass(deg) {
  return S.compass[Math.round(deg / 45) % 8];
}

export function placeLines(report) {
  const loc = report.location || {};
  const lines = [loc.district, loc.address].filter(Boolean);
  const coords = (typeof loc.lat === 'number' && typeof loc.lon === 'number')
    ? `${loc.lat.toFixed(5)}, ${loc.lon.toFixed(5)}` : '';
  return {place: lines.join(', ') || coords, coords};
}

export function altitudeText(report) {
  const parts = [];
  if (report.altitude && report.altitude !== 'unknown') parts.push(enumLabel('altitude', report.altitude));
  if (report.altitude_m != null) parts.push(t('alert.altitude_m', {m: report.altitude_m}));
  return parts.join(', ');
}

// Channels grouped: "консоль: доставлено · SMS: отправлено" (the best state per channel).
const DELIVERY_RANK = {failed: 0, cancelled: 0, queued: 1, sent: 2, delivered: 3};

export function channelStates(deliveries) {
  const best = new Map();
  for (const d of deliveries) {
    const now = best.get(d.channel);
    if (!now || (DELIVERY_RANK[d.state] ?? 0) > (DELIVERY_RANK[now] ?? 0)) best.set(d.channel, d.state);
  }
  return [...best].map(([channel, state]) => ({channel, state}));
}

export function channelName(channel) {
  return S.channels[channel] || channel;
}

// A single state for the operator: the alert's own, with "sent" told apart from still queued.
export function shownState(alert) {
  if (alert.state === 'pending' && alert.deliveries.some((d) => d.state === 'sent' || d.state === 'delivered')) {
    return 'sent';
  }
  return alert.state;
}

export function stateDetail(alert) {
  const state = shownState(alert);
  const names = (wanted) => [...new Set(alert.deliveries.filter((d) => wanted.includes(d.state))
    .map((d) => channelName(d.channel)))].join(', ');
  if (state === 'acknowledged' && alert.ack && alert.ack.via_track) {
    return t('state_detail.acknowledged_track', {by: alert.ack.by || alert.ack.desk_id, desk: alert.ack.desk_id});
  }
  if (state === 'acknowledged' && alert.ack) {
    return t('state_detail.acknowledged', {
      by: alert.ack.by || alert.ack.desk_id, desk: alert.ack.desk_id, channel: channelName(alert.ack.channel),
      latency: number(alert.ack.latency_s),
    });
  }
  if (state === 'delivered') return t('state_detail.delivered', {channels: names(['delivered'])});
  if (state === 'sent') return t('state_detail.sent', {channels: names(['sent', 'delivered'])});
  if (state === 'unacknowledged') return t('state_detail.unacknowledged');
  return '';
}

// Fetches answered out of order must not undo a newer answer: each request takes a number when it starts, and
// an alert is replaced only by an answer to a request started after the one it came from.
// `key`: the field that names a record (alerts by alert_id; the dispatcher's tracks by track_id).
export class AlertTable {
  constructor(key = 'alert_id') {
    this.key = key;
    this.alerts = new Map();
    this.seq = 0;
  }

  ticket() {
    this.seq += 1;
    return this.seq;
  }

  put(alert, ticket) {
    const id = alert[this.key];
    const known = this.alerts.get(id);
    if (known && known.ticket > ticket) return false;
    this.alerts.set(id, {alert, ticket});
    return true;
  }

  get(id) {
    const entry = this.alerts.get(id);
    return entry ? entry.alert : undefined;
  }

  has(id) {
    return this.alerts.has(id);
  }

  all() {
    return [...this.alerts.values()].map((entry) => entry.alert);
  }

  drop(id) {
    this.alerts.delete(id);
  }
}

export function newestFirst(a, b) {
  return a.created_at < b.created_at ? 1 : a.created_at > b.created_at ? -1 : 0;
}
