// The board's cards: one per track, what a duty officer reads at a glance (codes, where from the airfield, how
// soon, how many reports), and the order of triage. Pure functions of the track, its alerts and the clock, except
// for the card's DOM (built from text nodes only).
import {altitudeText, clock, compass, el, enumLabel, placeLines, plural, t} from './common.js';

export const STALE_MS = 10 * 60 * 1000; // a drone flies 25-30 km in ten minutes: an older position is history
const OPEN_STATES = new Set(['pending', 'delivered', 'unacknowledged']);
const CODES_SHOWN = 2; // more would push the distance off a 1366-px card: the rest as +N

/** What the board knows of one track, seen from this desk. `alerts`: the track's alerts this page has read. */
export function trackView(track, alerts, deskId, now, fetchedAt) {
  const desk = (track.desks || []).find((d) => d.desk_id === deskId) || null;
  const open = alerts.filter((a) => OPEN_STATES.has(a.state)).sort(byCreated);
  const latest = [...alerts].sort((a, b) => observed(b) - observed(a))[0] || null;
  const lastSeen = Date.parse(track.last_seen);
  // Acknowledged by this desk, unless a flash report came since: a flash report always alarms on its own.
  const acked = Boolean(desk && desk.acknowledged) && !open.some((a) => a.priority === 'flash');
  const approaching = Boolean(desk && desk.eta_s != null);
  const codes = (open.length ? open : latest ? [latest] : []).map((a) => a.short_code);
  return {
    id: track.track_id,
    track,
    desk,
    alerts,
    open,
    latest,
    codes,
    acked,
    needsAck: !acked,
    flash: track.priority === 'flash',
    stale: now - lastSeen > STALE_MS,
    approaching,
    // the relay's ETA was for the moment it answered: it counts down from there
    etaAt: approaching ? fetchedAt + desk.eta_s * 1000 : null,
    lastSeen,
    givenUp: open.some((a) => a.state === 'unacknowledged'),
    ack: alerts.map((a) => a.ack).filter((a) => a && a.desk_id === deskId).sort((a, b) => (a.at < b.at ? -1 : 1))[0]
      || null,
  };
}

function observed(alert) {
  return Date.parse(alert.report.observed_at);
}

function byCreated(a, b) {
  return a.created_at < b.created_at ? 1 : a.created_at > b.created_at ? -1 : 0;
}

/** Triage: flash first, then approaching tracks by ETA, then the rest by latest activity; stale tracks last. */
export function triage(a, b) {
  return (a.stale - b.stale)
    || (b.flash - a.flash)
    || (b.approaching - a.approaching)
    || (a.approaching && b.approaching ? a.etaAt - b.etaAt : 0)
    || (b.lastSeen - a.lastSeen)
    || (a.id < b.id ? -1 : a.id > b.id ? 1 : 0);
}

// ---- words and numbers ------------------------------------------------------------------------------------------

/** "18 км З": integer km from 10 km on, one decimal below (4,3 км), and the compass point from the airfield. */
export function distanceText(desk) {
  if (!desk || desk.distance_km == null) return '';
  const km = desk.distance_km;
  const shown = km >= 10 ? String(Math.round(km)) : km.toLocaleString(t('locale'), {maximumFractionDigits: 1,
    minimumFractionDigits: 1});
  return t('board.distance', {km: shown, dir: compass(desk.bearing_deg ?? 0)});
}

/** "≈ 6 мин" (whole minutes, rounded), "< 1 мин", "≈ 1 ч 05 мин". */
export function etaText(ms) {
  const min = Math.round(ms / 60000);
  if (min < 1) return t('board.eta_now');
  if (min < 60) return t('board.eta_min', {m: min});
  return t('board.eta_hm', {h: Math.floor(min / 60), m: String(min % 60).padStart(2, '0')});
}

/** "40 с назад", "3 мин назад", "1 ч 05 мин назад": seconds only while they matter. */
export function agoText(ms) {
  const s = Math.max(0, Math.floor(ms / 1000));
  if (s < 60) return t('board.ago_s', {s});
  if (s < 3600) return t('board.ago_m', {m: Math.floor(s / 60)});
  return t('board.ago_hm', {h: Math.floor(s / 3600), m: String(Math.floor((s % 3600) / 60)).padStart(2, '0')});
}

export function codesText(codes) {
  const shown = codes.slice(0, CODES_SHOWN).join(' ');
  return codes.length > CODES_SHOWN ? `${shown} ${t('board.more_codes', {n: codes.length - CODES_SHOWN})}` : shown;
}

function headingText(report) {
  if (report.heading_deg == null) return '';
  return t('board.heading', {deg: report.heading_deg, compass: compass(report.heading_deg)});
}

// ---- the card --------------------------------------------------------------------------------------------------

/** A card whose <li>, history button and ack button stay the same elements for the track's life on the page (the
 *  keyboard focus survives every update). */
export function makeCard(id, {onAck, onOpen, onLook}) {
  const codes = el('button', {type: 'button', class: 't-codes', 'aria-describedby': 'keys-history'});
  const heading = el('h3', {class: 't-head', id: `th-${id}`}, codes);
  const ack = el('button', {type: 'button', class: 'ack', text: t('dispatcher.ack')});
  const top = el('div', {class: 't-top'});
  const facts = el('p', {class: 't-facts'});
  const where = el('div', {class: 't-where'});
  const done = el('p', {class: 't-done'});
  const note = el('p', {class: 'note', role: 'status'});
  const node = el('li', {class: 'track', tabindex: '0', 'aria-labelledby': `th-${id}`, dataset: {trackId: id}},
    el('div', {class: 't-line'}, heading, top), where, el('div', {class: 't-act'}, ack, done), facts, note);
  const card = {id, node, codes, ack, top, facts, where, done, note};
  ack.addEventListener('click', (event) => {
    event.stopPropagation();
    onAck(card.id);
  });
  codes.addEventListener('click', () => onOpen(card.id));
  node.addEventListener('pointerenter', () => onLook(card.id, true, 'pointer'));
  node.addEventListener('pointerleave', () => onLook(card.id, false, 'pointer'));
  node.addEventListener('focusin', () => onLook(card.id, true, 'focus'));
  node.addEventListener('focusout', (event) => {
    if (!node.contains(event.relatedTarget)) onLook(card.id, false, 'focus');
  });
  return card;
}

export function fillCard(card, view, {now, fresh}) {
  const report = view.latest ? view.latest.report : {};
  const codeText = codesText(view.codes) || view.id;
  card.codes.replaceChildren(el('span', {class: 'visually-hidden', text: `${t('board.track')} `}), codeText);
  card.codes.title = t('board.open_history');
  const marks = [];
  if (fresh) marks.push(el('span', {class: 'mark new', text: t('board.new')}));
  if (view.flash) marks.push(el('span', {class: 'mark flash', text: t('alert.flash')}));
  if (view.track.status === 'exercise') marks.push(el('span', {class: 'mark drill', text: t('alert.exercise')}));
  if (view.track.status === 'test') marks.push(el('span', {class: 'mark drill', text: t('alert.test')}));
  if (view.stale) marks.push(el('span', {class: 'mark stale', text: t('board.stale')}));
  if (view.givenUp && view.needsAck) marks.push(el('span', {class: 'mark given-up', text: t('board.given_up')}));
  const {place} = placeLines(report);
  card.top.replaceChildren(el('span', {class: 'marks'}, marks), el('span', {class: 't-place', text: place}));

  const pos = view.track.position;
  const facts = [
    el('span', {class: 't-reports', text: plural('board.reports', view.track.reports)}),
    el('span', {class: 't-seen'}, el('time', {datetime: view.track.last_seen, text: clock(view.track.last_seen)}),
      ' ', el('span', {class: 'ago', text: agoText(now - view.lastSeen)})),
  ];
  if (report.uav_type) {
    facts.push(el('span', {class: 't-type', text: `${enumLabel('uav_type', report.uav_type)} ×${report.count ?? 1}`}));
  }
  const heading = headingText(report);
  if (heading) facts.push(el('span', {class: 't-heading', text: heading}));
  const altitude = altitudeText(report);
  if (altitude) facts.push(el('span', {class: 't-alt', text: altitude}));
  facts.push(el('span', {class: 'coords', text: `${pos.lat.toFixed(4)}, ${pos.lon.toFixed(4)}`}));
  card.facts.replaceChildren(...facts.flatMap((f, i) => (i ? [el('span', {class: 'sep', text: ' · '}), f] : [f])));

  const where = [];
  const dist = distanceText(view.desk);
  if (dist) where.push(el('span', {class: 't-dist', text: dist}));
  if (view.approaching) {
    where.push(el('span', {class: 't-eta', title: t('board.eta_title'),
      text: etaText(Math.max(0, view.etaAt - now))}));
  } else if (view.desk && view.desk.distance_km != null && view.track.heading_deg != null) {
    where.push(el('span', {class: 't-away', text: t('board.not_approaching')}));
  }
  card.where.replaceChildren(...where);

  const allCodes = view.codes.length ? view.codes.join(', ') : view.id;
  card.ack.setAttribute('aria-label', t('board.ack_label', {codes: allCodes}));
  card.ack.hidden = !view.needsAck;
  card.done.hidden = view.needsAck;
  card.done.textContent = view.ack ? t('board.acked_by', {by: view.ack.by || view.ack.desk_id, at: clock(view.ack.at)})
    : t('board.acked');

  const classes = {
    'needs-ack': view.needsAck, acked: !view.needsAck, fresh, flash: view.flash, stale: view.stale,
    approaching: view.approaching, 'given-up': view.givenUp,
  };
  for (const [name, on] of Object.entries(classes)) card.node.classList.toggle(name, Boolean(on));
  Object.assign(card.node.dataset, {
    distanceKm: view.desk && view.desk.distance_km != null ? String(view.desk.distance_km) : '',
    etaS: view.approaching ? String(Math.round((view.etaAt - now) / 1000)) : '',
  });
}
