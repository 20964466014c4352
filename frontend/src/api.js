/**
 * The page's only contact with the back end: runtime config and the KServe V1 predict call.
 *
 * Everything the components render goes through `parsePrediction`, so a missing `items`
 * array, a null title or a null poster is handled once here and never in the view.
 */

/** Used when `/config.json` is missing or unreadable. */
export const DEFAULT_CONFIG = Object.freeze({
  posterBaseUrl: 'https://image.tmdb.org/t/p',
  modelName: 'movie-recommender',
});

/** Poster width the grid asks TMDB (or the sandbox) for. */
export const POSTER_SIZE = 'w342';

/** An error the user should read: the server's own message when it sent one. */
export class PredictError extends Error {
  /**
   * @param {string} message what to show the user
   * @param {{status?: number | null, cause?: unknown}} [options]
   */
  constructor(message, { status = null, cause } = {}) {
    super(message, cause === undefined ? undefined : { cause });
    this.name = 'PredictError';
    /** HTTP status, or null when the server was never reached. */
    this.status = status;
  }
}

function nonEmptyString(value) {
  return typeof value === 'string' && value.trim() !== '' ? value.trim() : null;
}

/**
 * Read the runtime config. It is fetched at run time (not baked in at build time) so the
 * same `dist/` works against the local sandbox and in the cluster.
 *
 * @param {{fetch?: typeof fetch, url?: string}} [options]
 * @returns {Promise<{posterBaseUrl: string, modelName: string}>}
 */
export async function loadConfig({ fetch: fetchImpl = globalThis.fetch, url = '/config.json' } = {}) {
  let body = {};
  try {
    const res = await fetchImpl(url, { headers: { Accept: 'application/json' } });
    // A SPA fallback answers unknown paths with index.html: treat a non-JSON answer as missing.
    if (res.ok) body = await res.json();
  } catch {
    body = {};
  }
  const raw = body && typeof body === 'object' ? body : {};
  return {
    posterBaseUrl: (nonEmptyString(raw.posterBaseUrl) ?? DEFAULT_CONFIG.posterBaseUrl).replace(/\/+$/, ''),
    modelName: nonEmptyString(raw.modelName) ?? DEFAULT_CONFIG.modelName,
  };
}

/**
 * Build the poster URL, or null when there is no poster to ask for.
 *
 * @param {string} posterBaseUrl e.g. `https://image.tmdb.org/t/p`
 * @param {string | null | undefined} posterPath e.g. `/abc.jpg`
 */
export function posterUrl(posterBaseUrl, posterPath) {
  const path = nonEmptyString(posterPath);
  if (!path) return null;
  return `${posterBaseUrl.replace(/\/+$/, '')}/${POSTER_SIZE}${path.startsWith('/') ? '' : '/'}${path}`;
}

/** `2024-05-01` -> `2024`; anything unparseable -> null. */
export function releaseYear(releaseDate) {
  const match = typeof releaseDate === 'string' ? /^(\d{4})/.exec(releaseDate) : null;
  return match ? match[1] : null;
}

function finiteOrNull(value) {
  return typeof value === 'number' && Number.isFinite(value) ? value : null;
}

/**
 * Normalise one `predictions[i]` entry into the shape the grid renders.
 *
 * `items` is optional in the contract; when absent the cards are built from `content_ids`
 * and `scores` alone (no title, no poster: the placeholder card shows the id).
 *
 * @param {unknown} prediction
 */
export function parsePrediction(prediction) {
  if (!prediction || typeof prediction !== 'object') {
    throw new PredictError('The model server returned a prediction in an unexpected format.');
  }
  const p = /** @type {Record<string, any>} */ (prediction);
  const ids = Array.isArray(p.content_ids) ? p.content_ids : [];
  const scores = Array.isArray(p.scores) ? p.scores : [];
  const byId = new Map();
  if (Array.isArray(p.items)) {
    for (const item of p.items) {
      if (item && typeof item === 'object' && Number.isInteger(item.content_id)) byId.set(item.content_id, item);
    }
  }
  // content_ids is the ranking; items is display metadata keyed by content_id.
  const order = ids.length > 0 ? ids : [...byId.keys()];
  const items = order
    .filter((id) => Number.isInteger(id))
    .map((id, i) => {
      const item = byId.get(id) ?? {};
      return {
        contentId: id,
        title: nonEmptyString(item.title),
        posterPath: nonEmptyString(item.poster_path),
        year: releaseYear(item.release_date),
        rating: finiteOrNull(item.vote_average),
        score: finiteOrNull(item.score) ?? finiteOrNull(scores[i]),
      };
    });
  return {
    items,
    fallback: p.fallback === true,
    reason: nonEmptyString(p.reason),
  };
}

async function readErrorMessage(res) {
  const text = await res.text().catch(() => '');
  try {
    const body = JSON.parse(text);
    const message = nonEmptyString(body?.error) ?? nonEmptyString(body?.detail) ?? nonEmptyString(body?.message);
    if (message) return message;
  } catch {
    // Not JSON (a proxy's HTML error page, say): fall through to the status line.
  }
  if (res.status === 404) return 'The model is not being served here (HTTP 404).';
  if (res.status === 503) return 'The model is not ready yet (HTTP 503). Try again in a moment.';
  return `The model server answered HTTP ${res.status}${res.statusText ? ` ${res.statusText}` : ''}.`;
}

/**
 * The V1 instance for a query: a user, else a non-empty history, else the popular movies
 * (`popular: true`, answered by the predictor's popularity fallback; it refuses an empty
 * history as missing input).
 *
 * @param {{k: number, userId?: number | null, history?: number[]}} query
 */
export function predictInstance({ k, userId, history }) {
  // display: ask the predictor for titles, posters, dates and ratings (opt-in, off by default)
  if (userId !== undefined && userId !== null) return { user_id: userId, k, display: true };
  if (history && history.length > 0) return { history, k, display: true };
  return { popular: true, k, display: true };
}

/**
 * Ask the predictor for recommendations (KServe V1: `POST /v1/models/<name>:predict`).
 *
 * `userId`, else a non-empty `history`, identifies the request; with neither it asks for the
 * popular movies (see `predictInstance`). Resolves with the parsed first
 * prediction plus the serving model version (from the body, else the `X-Model-Version`
 * header). Rejects with `PredictError` whose message is fit to show the user; an aborted
 * request rejects with the fetch's own `AbortError`.
 *
 * `user` (the assignment key: a user id or `anon-<uuid>`) is sent as `X-User-Id`, so a canary
 * keeps this visitor on one arm; the answer's `X-Request-Id` comes back as `requestId` (what
 * feedback joins to).
 *
 * @param {{modelName: string, k: number, userId?: number, history?: number[], user?: string}} query
 * @param {{fetch?: typeof fetch, signal?: AbortSignal}} [options]
 */
export async function predict({ modelName, k, userId, history, user }, { fetch: fetchImpl = globalThis.fetch, signal } = {}) {
  const instance = predictInstance({ k, userId, history });
  const url = `/v1/models/${encodeURIComponent(modelName)}:predict`;
  let res;
  try {
    res = await fetchImpl(url, {
      method: 'POST',
      headers: { 'Content-Type': 'application/json', Accept: 'application/json', ...(user ? { 'X-User-Id': user } : {}) },
      body: JSON.stringify({ instances: [instance] }),
      signal,
    });
  } catch (err) {
    if (err?.name === 'AbortError') throw err;
    throw new PredictError('Could not reach the model server. Check your connection and try again.', { cause: err });
  }
  if (!res.ok) {
    throw new PredictError(await readErrorMessage(res), { status: res.status });
  }
  let body;
  try {
    body = await res.json();
  } catch (err) {
    throw new PredictError('The model server returned a response that is not JSON.', { status: res.status, cause: err });
  }
  if (!body || !Array.isArray(body.predictions) || body.predictions.length === 0) {
    throw new PredictError('The model server returned no predictions.', { status: res.status });
  }
  const headerVersion = nonEmptyString(res.headers?.get?.('X-Model-Version') ?? null);
  const bodyVersion = body.model_version === undefined || body.model_version === null ? null : nonEmptyString(String(body.model_version));
  return {
    modelName: nonEmptyString(body.model_name) ?? modelName,
    modelVersion: bodyVersion ?? headerVersion,
    requestId: nonEmptyString(res.headers?.get?.('X-Request-Id') ?? null),
    ...parsePrediction(body.predictions[0]),
  };
}
