// A track's history in a dialog: each report, what each channel did for this desk, acks and corrections, from the
// history of each of its alerts, merged by time. From here a dispatcher corrects the relay: merges the track into
// another (the same drone after all) or splits a report out (another drone), each after a confirmation.
import {$, Offline, altitudeText, clock, compass, el, enumLabel, placeLines, plural, t} from './common.js';
import {codesText, distanceText} from './board.js';

const MAX_ALERTS = 40; // the latest reports of a long track; older ones stay in the API
const PEOPLE_CHANNELS = new Set(['sms', 'email', 'voice']); // their target (a phone, an address) says who was told

export function channelLabel(channel) {
  for (const key of [`board.channels.${channel}`, `channels.${channel}`]) {
    const name = t(key);
    if (name !== key) return name;
  }
  return channel;
}

export class Timeline {
  /** `views()`: the board's tracks now; `changed()`: the board should reload; `by()`: who is acting. */
  constructor({session, views, changed, by}) {
    Object.assign(this, {session, views, changed, by});
    this.dialog = $('timeline');
    this.trackId = null;
    this.pending = null;
    this.loading = 0;
    $('tl-close').addEventListener('click', () => this.dialog.close());
    $('tl-merge').addEventListener('click', () => this.askMerge());
    $('tl-no').addEventListener('click', () => this.cancel());
    $('tl-yes').addEventListener('click', () => this.confirm());
    this.dialog.addEventListener('close', () => {
      this.trackId = null;
      this.cancel();
    });
  }

  get isOpen() {
    return this.dialog.open;
  }

  async open(trackId) {
    this.trackId = trackId;
    this.cancel();
    $('tl-status').textContent = t('board.tl.loading');
    if (!this.dialog.open) this.dialog.showModal();
    await this.load();
  }

  async load() {
    const trackId = this.trackId;
    const loading = ++this.loading;
    let track;
    let alerts;
    let histories;
    try {
      const answer = await this.session.call(`/api/v1/tracks/${encodeURIComponent(trackId)}`);
      if (!answer.ok) {
        if (loading === this.loading) $('tl-status').textContent = t('board.tl.gone');
        return;
      }
      track = answer.data;
      const ids = track.alert_ids.slice(-MAX_ALERTS);
      [alerts, histories] = await Promise.all([
        Promise.all(ids.map((id) => this.session.call(`/api/v1/alerts/${encodeURIComponent(id)}`))),
        Promise.all(ids.map((id) => this.session.call(`/api/v1/alerts/${encodeURIComponent(id)}/history`))),
      ]);
    } catch (err) {
      if (!(err instanceof Offline)) throw err;
      if (loading === this.loading) $('tl-status').textContent = t('board.tl.offline');
      return;
    }
    if (loading !== this.loading || trackId !== this.trackId) return; // another track was opened meanwhile
    alerts = alerts.filter((a) => a.ok).map((a) => a.data);
    const events = new Map(histories.filter((h) => h.ok).map((h) => [h.data.alert_id, h.data.events]));
    this.paint(track, alerts, events);
  }

  /** The board changed: an open history whose track got a report, an ack or a correction is read again. */
  sync(views) {
    if (!this.isOpen || !this.shown || this.pending) return;
    const view = views.find((v) => v.id === this.trackId);
    const now = view ? `${view.track.reports}/${view.acked}/${view.track.last_seen}` : 'gone';
    if (now !== this.shown) {
      this.shown = now;
      this.load();
    }
  }

  paint(track, alerts, events) {
    const me = this.session.id;
    const view = this.views().find((v) => v.id === track.track_id);
    this.shown = view ? `${view.track.reports}/${view.acked}/${view.track.last_seen}` : 'gone';
    const codes = alerts.filter((a) => a.state !== 'acknowledged').map((a) => a.short_code);
    const shownCodes = codesText(codes.length ? codes : alerts.slice(-1).map((a) => a.short_code));
    $('tl-h').textContent = t('board.tl.title', {codes: shownCodes});
    const desk = (track.desks || []).find((d) => d.desk_id === me);
    $('tl-summary').textContent = [
      plural('board.reports', track.reports),
      track.first_seen === track.last_seen ? t('board.tl.at', {at: clock(track.last_seen)})
        : t('board.tl.span', {from: clock(track.first_seen), to: clock(track.last_seen)}),
      distanceText(desk),
      track.speed_kmh != null ? t('board.tl.speed', {v: Math.round(track.speed_kmh)}) : '',
      track.heading_deg != null ? t('board.heading', {deg: track.heading_deg, compass: compass(track.heading_deg)})
        : '',
    ].filter(Boolean).join(' · ');
    $('tl-status').textContent = track.reports > alerts.length ? t('board.tl.latest', {n: alerts.length}) : '';

    const others = this.views().filter((v) => v.id !== track.track_id);
    $('tl-into').replaceChildren(...others.map((v) => el('option', {value: v.id,
      text: [codesText(v.codes) || v.id, distanceText(v.desk), plural('board.reports', v.track.reports)]
        .filter(Boolean).join(' — ')})));
    $('tl-into').disabled = others.length === 0;
    $('tl-merge').disabled = others.length === 0;

    const items = [];
    const alone = track.alert_ids.length < 2;
    for (const alert of alerts) {
      items.push({at: alert.created_at, node: this.reportItem(alert, alone)});
      for (const d of alert.deliveries.filter((x) => x.desk_id === me)) {
        if (d.sent_at && d.channel !== 'web') { // the web console's delivery is this page's own confirmation
          const target = PEOPLE_CHANNELS.has(d.channel) ? d.target || '' : '';
          items.push({at: d.sent_at, node: item('sent', d.sent_at, alert.short_code,
            t('board.tl.sent', {channel: channelLabel(d.channel), target}).replace(/ :/, ':'))});
        }
        if (d.state === 'failed') {
          items.push({at: d.sent_at || alert.created_at, node: item('failed', d.sent_at || alert.created_at,
            alert.short_code, t('board.tl.failed', {channel: channelLabel(d.channel), error: d.error || ''}))});
        }
      }
      for (const e of events.get(alert.alert_id) || []) {
        const text = this.eventText(e);
        if (text) items.push({at: e.at, node: item(e.kind, e.at, alert.short_code, text)});
      }
    }
    items.sort((a, b) => Date.parse(a.at) - Date.parse(b.at));
    $('tl-events').replaceChildren(...items.map((i) => i.node));
  }

  reportItem(alert, alone) {
    const r = alert.report;
    const parts = [placeLines(r).place, `${enumLabel('uav_type', r.uav_type || 'unknown')} ×${r.count ?? 1}`];
    if (r.heading_deg != null) parts.push(t('board.heading', {deg: r.heading_deg, compass: compass(r.heading_deg)}));
    const altitude = altitudeText(r);
    if (altitude) parts.push(altitude);
    if (alert.priority === 'flash') parts.push(t('alert.flash'));
    if (r.notes) parts.push(r.notes);
    const text = t('board.tl.report', {observed: clock(r.observed_at), what: parts.join(', ')});
    const node = item('report', alert.created_at, alert.short_code, text);
    if (!alone) {
      const split = el('button', {type: 'button', class: 'tl-split', text: t('board.tl.split'),
        'aria-label': t('board.tl.split_label', {code: alert.short_code})});
      split.addEventListener('click', () => this.askSplit(alert));
      node.append(split);
    }
    return node;
  }

  eventText(e) {
    const d = e.detail || {};
    const desk = d.desk_id && d.desk_id !== this.session.id ? ` (${d.desk_id})` : '';
    switch (e.kind) {
      case 'accepted': return '';
      case 'delivered': return t('board.tl.delivered', {channel: channelLabel(d.channel), desk});
      case 'acknowledged':
        return t(d.via_track ? 'board.tl.acked_track' : 'board.tl.acked',
          {by: d.by || d.desk_id || '', channel: channelLabel(d.channel), desk});
      case 'duplicate_ack': return t('board.tl.duplicate_ack', {by: d.by || d.desk_id || '',
        channel: channelLabel(d.channel), desk});
      case 'backup_round': return t('board.tl.backup_round', {n: d.round ?? '',
        targets: (d.targets || []).map((x) => channelLabel(String(x).split(':')[0])).filter(unique).join(', ')});
      case 'unacknowledged': return t('board.tl.given_up');
      case 'track_merged': return t('board.tl.merged', {from: this.trackName(d.from), into: this.trackName(d.into),
        by: d.by || d.desk_id || ''});
      case 'track_split': return t('board.tl.split_done', {into: this.trackName(d.into), by: d.by || d.desk_id || ''});
      default: return e.kind;
    }
  }

  trackName(id) {
    const view = this.views().find((v) => v.id === id);
    return view && view.codes.length ? codesText(view.codes) : `…${String(id || '').slice(-6)}`;
  }

  // ---- corrections, each after a confirmation ----------------------------------------------------------------

  askMerge() {
    const into = $('tl-into').value;
    const target = this.views().find((v) => v.id === into);
    if (!into || !target) return;
    const here = this.views().find((v) => v.id === this.trackId);
    this.ask({kind: 'merge', into}, t('board.tl.merge_confirm', {
      from: here ? codesText(here.codes) : this.trackName(this.trackId), into: codesText(target.codes) || into}),
    t('board.tl.merge_yes'));
  }

  askSplit(alert) {
    this.ask({kind: 'split', alertId: alert.alert_id}, t('board.tl.split_confirm', {code: alert.short_code}),
      t('board.tl.split_yes'));
  }

  ask(action, question, yes) {
    this.pending = action;
    $('tl-confirm-text').textContent = question;
    $('tl-yes').textContent = yes;
    $('tl-confirm').hidden = false;
    $('tl-yes').focus();
  }

  cancel() {
    this.pending = null;
    $('tl-confirm').hidden = true;
  }

  async confirm() {
    const action = this.pending;
    if (!action) return;
    this.cancel();
    const by = this.by();
    $('tl-status').textContent = t('board.tl.working');
    let answer;
    try {
      answer = action.kind === 'merge'
        ? await this.session.call(`/api/v1/tracks/${encodeURIComponent(this.trackId)}/merge`,
          {method: 'POST', body: {into: action.into, by}})
        : await this.session.call(`/api/v1/alerts/${encodeURIComponent(action.alertId)}/split`,
          {method: 'POST', body: {by}});
    } catch {
      $('tl-status').textContent = t('board.tl.offline');
      return;
    }
    if (!answer.ok) {
      const reason = answer.data && typeof answer.data.detail === 'string' ? answer.data.detail : String(answer.status);
      $('tl-status').textContent = t('board.tl.refused', {reason});
      return;
    }
    if (action.kind === 'merge') this.trackId = answer.data.track_id; // this track is gone: show the merged one
    await this.changed();
    await this.load();
    $('tl-status').textContent = t(action.kind === 'merge' ? 'board.tl.merge_done' : 'board.tl.split_ok');
  }
}

function item(kind, at, code, text) {
  return el('li', {class: `tl-item kind-${kind}`},
    el('time', {datetime: at, text: clock(at)}), el('span', {class: 'tl-code', text: code}),
    el('span', {class: 'tl-text', text}));
}

function unique(value, index, all) {
  return all.indexOf(value) === index;
}
