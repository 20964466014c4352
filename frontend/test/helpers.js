import { vi } from 'vitest';

/** A fetch Response with a JSON body. */
export function jsonResponse(body, { status = 200, headers = {} } = {}) {
  return new Response(JSON.stringify(body), {
    status,
    headers: { 'Content-Type': 'application/json', ...headers },
  });
}

export const CONFIG = { posterBaseUrl: 'http://posters.test/t/p', modelName: 'movie-recommender' };

/** A predict response body in the exact contract shape. */
export function predictBody({ version = '3', fallback = false, reason = null, items } = {}) {
  const rows = items ?? [
    { content_id: 11, title: 'Alpha', poster_path: '/alpha.jpg', release_date: '2024-05-01', vote_average: 7.1, score: 0.9 },
    { content_id: 22, title: 'Beta', poster_path: null, release_date: '1999-12-31', vote_average: 6.25, score: 0.8 },
  ];
  return {
    model_name: 'movie-recommender',
    model_version: version,
    predictions: [
      {
        content_ids: rows.map((r) => r.content_id),
        scores: rows.map((r) => r.score),
        fallback,
        reason,
        items: rows,
      },
    ],
  };
}

/** The predictor's rule for an instance (model_server/request.py), or null when it passes. */
function refusal(instances) {
  for (const [i, inst] of (instances ?? []).entries()) {
    const hasUser = inst.user_id !== undefined && inst.user_id !== null;
    const hasHistory = Array.isArray(inst.history) && inst.history.length > 0;
    if (inst.popular === true && (hasUser || inst.history !== undefined)) {
      return `instances[${i}] asks for popular movies: it takes no user_id or history`;
    }
    if (inst.popular !== true && !hasUser && !hasHistory) {
      return `instances[${i}] needs a user_id, a non-empty history or popular: true`;
    }
  }
  return null;
}

/**
 * Route `/config.json` and the predict URL to canned answers; record every call. A predict
 * body the real predictor would refuse (an empty history, say) gets its 400, not the answer.
 *
 * @param {(init: RequestInit) => Response | Promise<Response>} onPredict
 */
export function stubBackend(onPredict, { config = CONFIG, onFeedback = () => jsonResponse({}, { status: 202 }) } = {}) {
  const fetchMock = vi.fn(async (url, init = {}) => {
    if (url === '/config.json') return config ? jsonResponse(config) : new Response('not found', { status: 404 });
    if (url === '/events/feedback') return onFeedback(init);
    if (String(url).startsWith('/v1/models/')) {
      const refused = refusal(JSON.parse(init.body).instances);
      return refused ? jsonResponse({ error: refused }, { status: 400 }) : onPredict(init, url);
    }
    throw new Error(`unexpected fetch ${url}`);
  });
  vi.stubGlobal('fetch', fetchMock);
  return fetchMock;
}

/** The feedback events the page posted, batch by batch. */
export function feedbackCalls(fetchMock) {
  return fetchMock.mock.calls.filter(([url]) => url === '/events/feedback').map(([, init]) => JSON.parse(init.body).events);
}

export function predictCalls(fetchMock) {
  return fetchMock.mock.calls
    .filter(([url]) => String(url).startsWith('/v1/'))
    .map(([url, init]) => ({ url, body: JSON.parse(init.body) }));
}
