// The dispatcher's alarm: a small state machine driven by what the board needs, never by arrivals. One loop
// sounds while any track waits for this desk's acknowledgement (a sharper, faster one while a flash track does),
// and a separate one while the relay cannot be reached. A burst of twenty reports is still one alarm.
//
// States, on <body> for the page's tests and styles:
//   data-alarm      = off | ringing | ringing-flash | blocked   (blocked: a sound is needed, the browser allows none)
//   data-conn-alarm = off | ringing | blocked
//   data-alarm-plays: how many times a pattern has sounded (tests count loops, they cannot listen)
//
// Browsers let a page sound only after a user gesture in it (a click, a key): the login click is one; after a
// reload the page waits for the next one and says so in a full-width banner. The AudioContext is made only inside
// such a gesture, so "blocked" is the same in every browser, whatever its autoplay setting.

const PERIOD_MS = {ringing: 5000, 'ringing-flash': 2000};
const CONN_PERIOD_MS = 10000;

export class Alarm {
  constructor({onChange = () => {}} = {}) {
    this.onChange = () => {};
    this.need = 'none'; // none | normal | flash: set by the board after each render
    this.connLost = false;
    this.audio = null;
    this.state = '';
    this.connState = '';
    this.timer = 0;
    this.connTimer = 0;
    this.plays = 0;
    this.update();
    this.onChange = onChange;
  }

  /** Called from inside a user gesture: makes (or resumes) the AudioContext the browser now allows. */
  unlock() {
    try {
      if (!this.audio) {
        this.audio = new AudioContext();
        this.audio.addEventListener('statechange', () => this.update());
      }
      if (this.audio.state === 'suspended') this.audio.resume().then(() => this.update(), () => {});
    } catch {
      this.audio = null;
    }
    this.update();
  }

  get allowed() {
    return Boolean(this.audio && this.audio.state === 'running');
  }

  /** What the board needs now: 'none', 'normal' (a track waits for an ack) or 'flash' (a flash track does). */
  set(need) {
    if (need === this.need) return;
    this.need = need;
    this.update();
  }

  connection(lost) {
    if (lost === this.connLost) return;
    this.connLost = lost;
    this.update();
  }

  update() {
    let state = 'off';
    if (this.need !== 'none') state = !this.allowed ? 'blocked' : this.need === 'flash' ? 'ringing-flash' : 'ringing';
    let conn = 'off';
    if (this.connLost) conn = this.allowed ? 'ringing' : 'blocked';

    if (state !== this.state) {
      const was = this.state;
      this.state = state;
      document.body.dataset.alarm = state;
      clearTimeout(this.timer);
      // entering a ringing state (or escalating to flash) sounds at once; flash calming to normal keeps the beat
      if (state === 'ringing-flash' || (state === 'ringing' && was !== 'ringing-flash')) this.ring();
      else if (state === 'ringing') this.timer = setTimeout(() => this.ring(), PERIOD_MS.ringing);
      this.onChange(state);
    }
    if (conn !== this.connState) {
      this.connState = conn;
      document.body.dataset.connAlarm = conn;
      clearTimeout(this.connTimer);
      if (conn === 'ringing') this.ringConnection();
      this.onChange(state);
    }
  }

  ring() {
    clearTimeout(this.timer);
    if (!PERIOD_MS[this.state]) return;
    if (this.state === 'ringing-flash') this.play(FLASH);
    else this.play(NORMAL);
    this.timer = setTimeout(() => this.ring(), PERIOD_MS[this.state]);
  }

  ringConnection() {
    clearTimeout(this.connTimer);
    if (this.connState !== 'ringing') return;
    this.play(CONNECTION_LOST);
    this.connTimer = setTimeout(() => this.ringConnection(), CONN_PERIOD_MS);
  }

  play(pattern) {
    if (!this.allowed) return;
    this.plays += 1;
    document.body.dataset.alarmPlays = String(this.plays);
    playTones(this.audio, pattern);
  }
}

/** One pattern of tones on an AudioContext the browser allows (the operator's page sounds its own this way). */
export function playTones(ctx, pattern) {
  const start = ctx.currentTime + 0.02;
  const gain = ctx.createGain();
  gain.gain.setValueAtTime(0.0001, start);
  gain.connect(ctx.destination);
  const osc = ctx.createOscillator();
  osc.type = pattern.wave;
  let at = start;
  for (const [freq, endFreq, length] of pattern.notes) {
    osc.frequency.setValueAtTime(freq, at);
    if (endFreq !== freq) osc.frequency.linearRampToValueAtTime(endFreq, at + length);
    gain.gain.linearRampToValueAtTime(pattern.volume, at + 0.01);
    gain.gain.setValueAtTime(pattern.volume, at + length - 0.03);
    gain.gain.linearRampToValueAtTime(0.0001, at + length - 0.01);
    at += length + pattern.gap;
  }
  osc.connect(gain);
  osc.start(start);
  osc.stop(at);
  osc.addEventListener('ended', () => gain.disconnect());
}

// [frequency, end frequency, seconds] per note. Square and sawtooth waves: not mistaken for a chat notification.
const NORMAL = {wave: 'square', volume: 0.22, gap: 0.06, notes: [[880, 880, 0.2], [660, 660, 0.2], [880, 880, 0.2],
  [660, 660, 0.2]]};
const FLASH = {wave: 'sawtooth', volume: 0.3, gap: 0.03, notes: [[1320, 1320, 0.11], [990, 990, 0.11],
  [1320, 1320, 0.11], [990, 990, 0.11], [1320, 1320, 0.11], [990, 990, 0.11]]};
const CONNECTION_LOST = {wave: 'triangle', volume: 0.3, gap: 0.15, notes: [[700, 250, 0.7], [700, 250, 0.7]]};
// the operator's page: three falling tones, "something went wrong", unlike the dispatcher's alarm
export const UNANSWERED = {wave: 'triangle', volume: 0.3, gap: 0.1, notes: [[700, 700, 0.25], [580, 580, 0.25],
  [460, 460, 0.25]]};
