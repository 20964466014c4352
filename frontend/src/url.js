/**
 * The page's state in its address, so a link opens the same recommendations:
 *
 *   /                       popular movies (nobody chosen yet)
 *   /?user=42               user 42's recommendations
 *   /?history=550,680       an anonymous visitor who picked movies 550 and 680
 *   /?history=              anonymous mode before any pick (popular movies)
 *   ...&k=24                how many (6, 12 or 24; 12 when absent)
 *
 * A view is `{mode: 'user' | 'anonymous', userId: number | null, history: number[], k}`.
 * `parseSearch` never throws: a link it cannot read gives the popular view and the problems
 * to show, in words a visitor understands.
 */

export const K_CHOICES = [6, 12, 24];
export const DEFAULT_K = 12;

/** Nobody chosen: what `/` shows. */
export const POPULAR_VIEW = Object.freeze({ mode: 'user', userId: null, history: Object.freeze([]), k: DEFAULT_K });

/** `"42"` -> 42; anything that is not a whole, safe, non-negative number -> null. */
export function parseWholeNumber(text) {
  const trimmed = String(text).trim();
  if (!/^\d+$/.test(trimmed)) return null;
  const n = Number(trimmed);
  return Number.isSafeInteger(n) ? n : null;
}

/** True when the view asks for nobody in particular: the predictor's popular movies. */
export function isPopular(view) {
  return view.mode === 'user' ? view.userId === null : view.history.length === 0;
}

function quoted(text) {
  return `“${text.length > 40 ? `${text.slice(0, 37)}…` : text}”`;
}

/**
 * Read a location's query string (`?user=42`, with or without the `?`).
 *
 * @param {string} search
 * @returns {{view: {mode: 'user' | 'anonymous', userId: number | null, history: number[], k: number},
 *            problems: string[]}}
 */
export function parseSearch(search) {
  const params = new URLSearchParams(search);
  const problems = [];
  let k = DEFAULT_K;
  if (params.has('k')) {
    const raw = params.get('k');
    const n = parseWholeNumber(raw);
    if (n !== null && K_CHOICES.includes(n)) k = n;
    else problems.push(`The link asks for ${quoted(raw)} movies; the choices are ${K_CHOICES.join(', ')}.`);
  }
  const hasUser = params.has('user');
  const hasHistory = params.has('history');
  let view = { mode: 'user', userId: null, history: [], k };
  if (hasUser && hasHistory) {
    problems.push('The link names both a user and a history; it can name one of them.');
  } else if (hasUser) {
    const raw = params.get('user');
    const userId = parseWholeNumber(raw);
    if (userId === null) {
      problems.push(`The link's user id ${quoted(raw)} is not a whole number such as 42.`);
    } else {
      view = { ...view, userId };
    }
  } else if (hasHistory) {
    const raw = params.get('history');
    const parts = raw.trim() === '' ? [] : raw.split(',');
    const ids = parts.map(parseWholeNumber);
    const bad = parts.filter((_, i) => ids[i] === null);
    if (bad.length > 0) {
      const which = bad.length === 1 ? 'this is not an id' : 'these are not ids';
      const shown = bad.slice(0, 3).map((b) => quoted(b.trim())).join(', ') + (bad.length > 3 ? ', …' : '');
      problems.push(`The link's history ${quoted(raw)} is not a list of movie ids such as 550,680 (${which}: ${shown}).`);
    } else {
      view = { ...view, mode: 'anonymous', history: [...new Set(ids)] };
    }
  }
  // An unreadable user or history gives the popular view (with a readable k kept).
  if (problems.length > 0) return { view: { ...POPULAR_VIEW, history: [], k }, problems };
  return { view, problems };
}

/**
 * The query string for a view (`''` for the popular view with the default k): the inverse of
 * `parseSearch` for every view it returns.
 *
 * @param {{mode: 'user' | 'anonymous', userId?: number | null, history?: number[], k?: number}} view
 */
export function toSearch(view) {
  const parts = [];
  if (view.mode === 'anonymous') parts.push(`history=${(view.history ?? []).join(',')}`);
  else if (view.userId !== null && view.userId !== undefined) parts.push(`user=${view.userId}`);
  if (view.k !== undefined && view.k !== DEFAULT_K) parts.push(`k=${view.k}`);
  return parts.length > 0 ? `?${parts.join('&')}` : '';
}
