// The airspace around the desk's airfield as an SVG the page draws itself: north up, range rings in km, each track
// at its latest position with a heading arrow, its code and a fading trail of its latest reports. Nothing is
// fetched from elsewhere (air-gapped networks); where the site has a tile server (`consoles.tile_url`), raster
// tiles go under the plot as SVG <image>s.
//
// One projection everywhere: Web Mercator, the tiles' own, so tiles and markers agree. The <svg>'s viewBox is its
// size in CSS pixels; the airfield is at (data-cx, data-cy) and the outer ring (data-km km) has radius data-r px,
// so a point's place is   x = cx + (mercX(lon) - mercX(lon0)) * s,  y = cy + (mercY(lat) - mercY(lat0)) * s,
// s = r * EARTH_KM * cos(lat0) / km   (mercX, mercY in [0, 1] of the world's width).

const NS = 'http://www.w3.org/2000/svg';
const EARTH_KM = 40075.016686; // the equator: one world width of Web Mercator at latitude 0
const SCALES_KM = [5, 10, 25, 50, 100, 150, 200, 300, 500];
const RINGS = [0.2, 0.5, 1]; // of the outer ring: 10/25/50 km around a 50-km ring
const TILE_PX = 256;
const LABEL_GAP = 28; // px left around the outer ring for its labels

export function mercX(lon) {
  return (lon + 180) / 360;
}

export function mercY(lat) {
  const phi = (Math.max(-85.05, Math.min(85.05, lat)) * Math.PI) / 180;
  return (1 - Math.log(Math.tan(phi) + 1 / Math.cos(phi)) / Math.PI) / 2;
}

/** The smallest of the plot's scales that holds `km` (the desk's area radius): the outer ring's radius. */
export function ringScale(km) {
  return SCALES_KM.find((s) => s >= km) || SCALES_KM[SCALES_KM.length - 1];
}

export function svg(tag, attrs = {}, ...children) {
  const node = document.createElementNS(NS, tag);
  for (const [key, value] of Object.entries(attrs)) {
    if (value == null || value === false) continue;
    if (key === 'class') node.setAttribute('class', value);
    else if (key === 'text') node.textContent = value;
    else if (key === 'dataset') Object.assign(node.dataset, value);
    else node.setAttribute(key, String(value));
  }
  for (const child of children.flat(Infinity)) if (child) node.append(child);
  return node;
}

export class Plot {
  /** `node`: the <svg>; `onPick(trackId)`: a marker clicked; `onHover(trackId|null)`: a marker pointed at. */
  constructor(node, {t, onPick = () => {}, onHover = () => {}}) {
    Object.assign(this, {node, t, onPick, onHover});
    this.centre = null; // {lat, lon, name}: the airfield, or the tracks' middle for a desk without an area
    this.airfield = false;
    this.km = 50;
    this.tileUrl = null;
    this.items = [];
    this.highlighted = null;
    this.width = 0;
    this.height = 0;
    this.layers = {
      tiles: svg('g', {class: 'tiles'}),
      grid: svg('g', {class: 'grid'}),
      trails: svg('g', {class: 'trails'}),
      tracks: svg('g', {class: 'markers'}),
    };
    node.replaceChildren(...Object.values(this.layers));
    new ResizeObserver(() => this.resize()).observe(node);
    node.addEventListener('click', (event) => {
      const mark = event.target.closest && event.target.closest('.track');
      if (mark) this.onPick(mark.dataset.trackId);
    });
    node.addEventListener('pointerover', (event) => {
      const mark = event.target.closest && event.target.closest('.track');
      this.onHover(mark ? mark.dataset.trackId : null);
    });
    node.addEventListener('pointerleave', () => this.onHover(null));
  }

  /** The desk's session: its airfield and area (or none), and its tile server (or none). */
  configure({area, name, tileUrl}) {
    this.airfield = Boolean(area);
    this.centre = area ? {lat: area.lat, lon: area.lon, name} : null;
    this.km = ringScale(area ? area.radius_km : 50);
    this.tileUrl = tileUrl || null;
    if (this.width) this.drawAll();
    else this.resize();
  }

  zoom(step) {
    const at = SCALES_KM.indexOf(this.km);
    const next = SCALES_KM[Math.max(0, Math.min(SCALES_KM.length - 1, (at < 0 ? 3 : at) + step))];
    if (next === this.km) return;
    this.km = next;
    this.drawAll();
  }

  resize() {
    const box = this.node.getBoundingClientRect();
    const width = Math.round(box.width);
    const height = Math.round(box.height);
    if (!width || !height || (width === this.width && height === this.height && this.drawn)) return;
    this.width = width;
    this.height = height;
    this.node.setAttribute('viewBox', `0 0 ${width} ${height}`);
    this.drawAll();
  }

  /** `items`: [{id, lat, lon, heading, label, trail: [{lat, lon}], classes: [...]}], drawn in this order (the
   *  first on top). */
  show(items) {
    this.items = items;
    if (!this.airfield) this.centreOnTracks();
    this.drawTracks();
  }

  highlight(id) {
    this.highlighted = id;
    for (const mark of this.node.querySelectorAll('.track, .trail')) {
      mark.classList.toggle('hl', mark.dataset.trackId === id);
    }
    const mark = id && this.layers.tracks.querySelector(`.track[data-track-id="${CSS.escape(id)}"]`);
    if (mark) this.layers.tracks.append(mark); // on top of its neighbours
  }

  // ---- projection ----------------------------------------------------------------------------------------

  get scale() { // px per world width
    return (this.radius * EARTH_KM * Math.cos((this.centre.lat * Math.PI) / 180)) / this.km;
  }

  get radius() {
    return Math.max(40, Math.min(this.width, this.height) / 2 - LABEL_GAP);
  }

  project(lat, lon) {
    const s = this.scale;
    return [this.width / 2 + (mercX(lon) - mercX(this.centre.lon)) * s,
      this.height / 2 + (mercY(lat) - mercY(this.centre.lat)) * s];
  }

  centreOnTracks() {
    const points = this.items.map((i) => [i.lat, i.lon]);
    if (!points.length) {
      this.centre = null;
      return;
    }
    const lat = points.reduce((sum, p) => sum + p[0], 0) / points.length;
    const lon = points.reduce((sum, p) => sum + p[1], 0) / points.length;
    const far = Math.max(...points.map(([a, b]) => kmBetween(lat, lon, a, b)));
    const km = ringScale(far * 1.1);
    const moved = !this.centre || kmBetween(lat, lon, this.centre.lat, this.centre.lon) > km / 10;
    if (moved || km !== this.km) {
      this.centre = {lat, lon, name: ''};
      this.km = km;
      this.drawGrid();
    }
  }

  // ---- drawing ------------------------------------------------------------------------------------------------

  drawAll() {
    this.drawn = true;
    this.drawGrid();
    this.drawTracks();
  }

  drawGrid() {
    const {node, width, height} = this;
    node.dataset.km = String(this.km);
    if (!this.centre || !width) {
      this.layers.tiles.replaceChildren();
      this.layers.grid.replaceChildren();
      node.dataset.centred = 'none';
      return;
    }
    node.dataset.centred = this.airfield ? 'airfield' : 'tracks';
    Object.assign(node.dataset, {
      lat0: String(this.centre.lat), lon0: String(this.centre.lon), cx: String(width / 2), cy: String(height / 2),
      r: String(this.radius),
    });
    this.drawTiles();
    const cx = width / 2;
    const cy = height / 2;
    const r = this.radius;
    const parts = [];
    for (const [dx, dy, key] of [[0, -1, 'n'], [1, 0, 'e'], [0, 1, 's'], [-1, 0, 'w']]) {
      parts.push(svg('line', {class: 'axis', x1: cx, y1: cy, x2: cx + dx * (r + 6), y2: cy + dy * (r + 6)}));
      parts.push(svg('text', {class: `cardinal cardinal-${key}`, x: cx + dx * (r + 16), y: cy + dy * (r + 16),
        text: this.t(`board.plot.${key}`)}));
    }
    for (const part of RINGS) {
      const km = this.km * part;
      parts.push(svg('circle', {class: 'ring', cx, cy, r: r * part, dataset: {km: String(km)}}));
      parts.push(svg('text', {class: 'ring-label', x: cx - 5, y: cy - r * part + 15,
        text: this.t('board.plot.ring', {km})}));
    }
    if (this.airfield) {
      parts.push(svg('g', {class: 'airfield', transform: `translate(${cx} ${cy})`},
        svg('title', {text: this.t('board.plot.airfield', {name: this.centre.name})}),
        svg('rect', {x: -7, y: -7, width: 14, height: 14}),
        svg('text', {x: 11, y: 18, text: this.centre.name})));
    }
    this.layers.grid.replaceChildren(...parts);
  }

  drawTiles() {
    const tiles = [];
    if (this.tileUrl) {
      const s = this.scale;
      const dpr = window.devicePixelRatio || 1;
      const z = Math.max(0, Math.min(19, Math.round(Math.log2((s * dpr) / TILE_PX))));
      const n = 2 ** z;
      const size = s / n; // px per tile
      const left = mercX(this.centre.lon) - this.width / 2 / s;
      const top = mercY(this.centre.lat) - this.height / 2 / s;
      const x0 = Math.floor(left * n);
      const y0 = Math.max(0, Math.floor(top * n));
      const x1 = Math.floor((left + this.width / s) * n);
      const y1 = Math.min(n - 1, Math.floor((top + this.height / s) * n));
      for (let ty = y0; ty <= y1; ty += 1) {
        for (let tx = x0; tx <= x1; tx += 1) {
          const wrapped = ((tx % n) + n) % n;
          const href = this.tileUrl.replace('{z}', String(z)).replace('{x}', String(wrapped))
            .replace('{y}', String(ty));
          // +0.5 px each way: no hairline seams between neighbouring tiles
          tiles.push(svg('image', {href, x: (tx / n - left) * s - 0.25, y: (ty / n - top) * s - 0.25,
            width: size + 0.5, height: size + 0.5, preserveAspectRatio: 'none',
            dataset: {z: String(z), x: String(wrapped), y: String(ty)}}));
        }
      }
    }
    this.layers.tiles.replaceChildren(...tiles);
    this.node.classList.toggle('has-tiles', tiles.length > 0);
  }

  drawTracks() {
    if (!this.centre || !this.width) {
      this.layers.trails.replaceChildren();
      this.layers.tracks.replaceChildren();
      return;
    }
    const trails = [];
    const marks = [];
    for (const item of [...this.items].reverse()) { // the first item is drawn last: on top
      trails.push(this.trail(item));
      marks.push(this.marker(item));
    }
    this.layers.trails.replaceChildren(...trails);
    this.layers.tracks.replaceChildren(...marks);
    if (this.highlighted) this.highlight(this.highlighted);
  }

  trail(item) {
    const points = [...item.trail.map((p) => this.project(p.lat, p.lon)), this.project(item.lat, item.lon)];
    const group = svg('g', {class: ['trail', ...item.classes].join(' '), dataset: {trackId: item.id}});
    if (points.length > 1) {
      group.append(svg('polyline', {points: points.map((p) => `${p[0].toFixed(1)},${p[1].toFixed(1)}`).join(' ')}));
    }
    const old = points.length - 1;
    points.slice(0, -1).forEach(([x, y], i) => {
      // older reports fade: the latest at 0.7, the oldest at 0.15
      const dot = svg('circle', {cx: x.toFixed(1), cy: y.toFixed(1), r: 3.5});
      dot.style.opacity = String(0.15 + (0.55 * (i + 1)) / old);
      group.append(dot);
    });
    return group;
  }

  marker(item) {
    const [x, y] = this.project(item.lat, item.lon);
    const inside = x >= 0 && y >= 0 && x <= this.width && y <= this.height;
    const px = Math.max(12, Math.min(this.width - 12, x));
    const py = Math.max(12, Math.min(this.height - 12, y));
    const mark = svg('g', {class: ['track', ...item.classes, inside ? '' : 'outside'].join(' ').trim(),
      transform: `translate(${px.toFixed(1)} ${py.toFixed(1)})`,
      dataset: {trackId: item.id, x: x.toFixed(1), y: y.toFixed(1), heading: item.heading ?? ''}},
    svg('title', {text: item.title}),
    svg('circle', {class: 'halo', r: 20}));
    if (item.heading != null) {
      mark.append(svg('g', {class: 'heading', transform: `rotate(${item.heading})`},
        svg('line', {x1: 0, y1: -9, x2: 0, y2: -30}),
        svg('path', {d: 'M0,-40 L6,-28 L-6,-28 Z'})));
    }
    mark.append(svg('circle', {class: 'dot', r: 8}));
    const right = px < this.width - 90;
    mark.append(svg('text', {class: 'label', x: right ? 12 : -12, y: -10, 'text-anchor': right ? 'start' : 'end',
      text: item.label}));
    return mark;
  }
}

function kmBetween(lat1, lon1, lat2, lon2) {
  const rad = Math.PI / 180;
  const dLat = (lat2 - lat1) * rad;
  const dLon = (lon2 - lon1) * rad;
  const a = Math.sin(dLat / 2) ** 2 + Math.cos(lat1 * rad) * Math.cos(lat2 * rad) * Math.sin(dLon / 2) ** 2;
  return 2 * 6371.0088 * Math.asin(Math.sqrt(a));
}
