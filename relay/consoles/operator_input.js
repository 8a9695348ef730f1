// What a caller says, as an operator types it, turned into what the relay's report takes: a heading as a compass
// point, a count as a range, coordinates as a pasted pair, with comma decimals or in degrees-minutes-seconds.
// Pure functions (no DOM), so the page and its tests use the same ones.

// 16 points, clockwise from north, in the letters a Russian operator types (and the Latin ones a map shows).
const POINTS_RU = ['С', 'ССВ', 'СВ', 'ВСВ', 'В', 'ВЮВ', 'ЮВ', 'ЮЮВ', 'Ю', 'ЮЮЗ', 'ЮЗ', 'ЗЮЗ', 'З', 'ЗСЗ', 'СЗ', 'ССЗ'];
const POINTS_EN = ['N', 'NNE', 'NE', 'ENE', 'E', 'ESE', 'SE', 'SSE', 'S', 'SSW', 'SW', 'WSW', 'W', 'WNW', 'NW', 'NNW'];
const WORDS = [ // the words, as in "на северо-запад"
  ['север', 'С'], ['юг', 'Ю'], ['восток', 'В'], ['запад', 'З'],
];

function compact(text) {
  return String(text).trim().toUpperCase().replace(/Ё/g, 'Е').replace(/[\s.\-–—]/g, '');
}

// "СЗ", "сз", "NW", "северо-запад", "315", "315°" -> 315; null when it is none of these.
export function headingDegrees(text) {
  const raw = String(text).trim();
  if (!raw) return null;
  const number = raw.replace(/[°º]$/, '').trim();
  if (/^\d{1,3}$/.test(number)) return Number(number) <= 360 ? Number(number) % 360 : null;
  let key = compact(raw);
  for (const [word, letter] of WORDS) key = key.replace(new RegExp(word.toUpperCase(), 'g'), letter);
  key = key.replace(/О/g, ''); // "северо-запад" -> "СЗ" after the words are letters: the linking "о" goes
  let index = POINTS_RU.indexOf(key);
  if (index < 0) index = POINTS_EN.indexOf(key);
  if (index < 0) index = POINTS_RU.indexOf(key.replace(/C/g, 'С').replace(/B/g, 'В')); // Latin look-alikes
  return index < 0 ? null : Math.round(index * 22.5) % 360;
}

// "3-4", "3–4", "3..4", "3 - 4", "от 3 до 4" -> {count: 4, range: "3-4"} (the larger: a warning must not
// understate a raid; the range goes in the notes); "5" -> {count: 5, range: null}; null when it is neither.
export function countRange(text) {
  const raw = String(text).trim();
  if (/^\d{1,4}$/.test(raw)) return {count: Number(raw), range: null};
  const m = raw.match(/^(?:от\s*)?(\d{1,4})\s*(?:-|–|—|\.\.|до)\s*(\d{1,4})$/i);
  if (!m) return null;
  const [low, high] = [Number(m[1]), Number(m[2])].sort((a, b) => a - b);
  return {count: high, range: `${low}-${high}`};
}

// One coordinate: "52.61", "52,61", "−52,61", "52°36'36\"", "52 36 36", "52°36.6'", "N52 36 36", "52 36 36 с.ш."
// -> decimal degrees; null when it is none of these.
export function coordinate(text) {
  let raw = String(text).trim().replace(/−/g, '-').replace(/[′’']/g, "'").replace(/[″”"]/g, '"');
  let sign = 1;
  const hemisphere = raw.match(/^([NSEWСЮВЗ])\s*|\s*([NSEWСЮВЗ]|с\.?\s*ш\.?|ю\.?\s*ш\.?|в\.?\s*д\.?|з\.?\s*д\.?)$/i);
  if (hemisphere) {
    const h = (hemisphere[1] || hemisphere[2]).toUpperCase()[0];
    if ('SWЮЗ'.includes(h)) sign = -1;
    raw = raw.replace(hemisphere[0], '').trim();
  }
  if (/^-?\d+(?:[.,]\d+)?$/.test(raw)) return sign * Number(raw.replace(',', '.'));
  const dms = raw.match(/^(-?\d{1,3})\s*(?:°|º|\s)\s*(\d{1,2}(?:[.,]\d+)?)\s*'?\s*(?:(\d{1,2}(?:[.,]\d+)?)\s*"?)?$/);
  if (!dms) return null;
  const deg = Number(dms[1]);
  const min = Number(dms[2].replace(',', '.'));
  const sec = dms[3] ? Number(dms[3].replace(',', '.')) : 0;
  if (min >= 60 || sec >= 60) return null;
  const value = Math.abs(deg) + min / 60 + sec / 3600;
  return Math.round(sign * (deg < 0 ? -value : value) * 1e6) / 1e6;
}

// A pasted pair: "52.61, 39.59", "52,61, 39,59", "52,61 39,59", "52.61;39.59", "52°36'36\"N 39°35'24\"E",
// "N52 36 36 E39 35 24" -> {lat, lon}; null when it is not a pair.
export function coordinatePair(text) {
  const raw = String(text).trim();
  const splits = [
    /^(.+?)\s*[;]\s*(.+)$/, // a semicolon is only ever between the two
    /^(-?\d+[.,]\d+)\s*,\s*(-?\d+[.,]\d+)$/, // comma decimals and a comma between: "52,61, 39,59" reads only one way
    /^(-?\d+\.\d+)\s*[,\s]\s*(-?\d+\.\d+)$/,
    /^(-?\d+,\d+)\s+(-?\d+,\d+)$/,
    /^([NSСЮ]\s*[\d°º'"., ]+?)\s*,?\s*([EWВЗ]\s*[\d°º'"., ]+)$/i, // "N52 36 36 E39 35 24"
    /^(.*?["NSСЮ]|.*?с\.?\s*ш\.?)\s*,?\s*([EWВЗ].*|-?\d.*)$/i, // degrees-minutes-seconds with marks or hemispheres
    /^(\d{1,2}\s+\d{1,2}\s+\d{1,2}(?:[.,]\d+)?)\s*,?\s+(\d{1,3}\s+\d{1,2}\s+\d{1,2}(?:[.,]\d+)?)$/, // "52 36 36 39 35 24"
  ];
  for (const pattern of splits) {
    const m = raw.match(pattern);
    if (!m) continue;
    const lat = coordinate(m[1]);
    const lon = coordinate(m[2]);
    if (lat !== null && lon !== null && Math.abs(lat) <= 90 && Math.abs(lon) <= 180) return {lat, lon};
  }
  return null;
}

// "8 900 123-45-67", "+7 (900) 123 45 67", "79001234567" -> "+79001234567"; null: not a phone number the relay
// takes (E.164: + and 7..15 digits).
export function phoneNumber(text) {
  const digits = String(text).replace(/[\s()\-.]/g, '');
  let number = digits;
  if (/^8\d{10}$/.test(digits)) number = `+7${digits.slice(1)}`; // 8 900 ... is how Russians say +7 900 ...
  else if (/^7\d{10}$/.test(digits)) number = `+${digits}`;
  return /^\+[1-9]\d{6,14}$/.test(number) ? number : null;
}
