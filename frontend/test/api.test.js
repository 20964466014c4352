import { describe, expect, it, vi } from 'vitest';
import { DEFAULT_CONFIG, loadConfig, parsePrediction, posterUrl, predict, PredictError } from '../src/api.js';
import { jsonResponse, predictBody } from './helpers.js';

function fetchReturning(response) {
  return vi.fn(async () => (typeof response === 'function' ? response() : response));
}

describe('predict request', () => {
  it('posts a user_id instance to the V1 predict URL of the configured model', async () => {
    const fetch = fetchReturning(jsonResponse(predictBody()));
    await predict({ modelName: 'movie-recommender', userId: 42, k: 12 }, { fetch });
    const [url, init] = fetch.mock.calls[0];
    expect(url).toBe('/v1/models/movie-recommender:predict');
    expect(init.method).toBe('POST');
    expect(init.headers['Content-Type']).toBe('application/json');
    expect(JSON.parse(init.body)).toEqual({ instances: [{ user_id: 42, k: 12, display: true }] });
  });

  it('posts a history instance when there is no user id', async () => {
    const fetch = fetchReturning(jsonResponse(predictBody()));
    await predict({ modelName: 'movie-recommender', history: [550, 680], k: 6 }, { fetch });
    expect(JSON.parse(fetch.mock.calls[0][1].body)).toEqual({ instances: [{ history: [550, 680], k: 6, display: true }] });
  });

  it('asks for the popular movies when there is neither a user nor a history', async () => {
    const fetch = fetchReturning(() => jsonResponse(predictBody({ fallback: true })));
    await predict({ modelName: 'm', history: [], k: 12 }, { fetch });
    await predict({ modelName: 'm', userId: null, k: 6 }, { fetch });
    expect(fetch.mock.calls.map(([, init]) => JSON.parse(init.body).instances)).toEqual([
      [{ popular: true, k: 12, display: true }],
      [{ popular: true, k: 6, display: true }],
    ]);
  });

  it('sends user id 0 as a user id, not as an empty history', async () => {
    const fetch = fetchReturning(jsonResponse(predictBody()));
    await predict({ modelName: 'm', userId: 0, k: 6 }, { fetch });
    expect(JSON.parse(fetch.mock.calls[0][1].body).instances[0]).toEqual({ user_id: 0, k: 6, display: true });
  });
});

describe('predict response', () => {
  it('parses items in ranking order with year, rating and score', async () => {
    const fetch = fetchReturning(jsonResponse(predictBody()));
    const result = await predict({ modelName: 'movie-recommender', userId: 1, k: 2 }, { fetch });
    expect(result.modelName).toBe('movie-recommender');
    expect(result.modelVersion).toBe('3');
    expect(result.fallback).toBe(false);
    expect(result.reason).toBeNull();
    expect(result.items).toEqual([
      { contentId: 11, title: 'Alpha', posterPath: '/alpha.jpg', year: '2024', rating: 7.1, score: 0.9 },
      { contentId: 22, title: 'Beta', posterPath: null, year: '1999', rating: 6.25, score: 0.8 },
    ]);
  });

  it('takes the version from X-Model-Version when the body has none', async () => {
    const body = predictBody();
    delete body.model_version;
    const fetch = fetchReturning(jsonResponse(body, { headers: { 'X-Model-Version': '7' } }));
    const result = await predict({ modelName: 'movie-recommender', userId: 1, k: 2 }, { fetch });
    expect(result.modelVersion).toBe('7');
  });

  it('prefers the body model_version over the header and accepts a numeric version', async () => {
    const body = { ...predictBody(), model_version: 4 };
    const fetch = fetchReturning(jsonResponse(body, { headers: { 'X-Model-Version': '9' } }));
    const result = await predict({ modelName: 'movie-recommender', userId: 1, k: 2 }, { fetch });
    expect(result.modelVersion).toBe('4');
  });

  it('reports an unknown version as null rather than inventing one', async () => {
    const body = predictBody();
    delete body.model_version;
    const fetch = fetchReturning(jsonResponse(body));
    expect((await predict({ modelName: 'm', userId: 1, k: 2 }, { fetch })).modelVersion).toBeNull();
  });

  it('carries fallback and reason through', async () => {
    const fetch = fetchReturning(
      jsonResponse(predictBody({ fallback: true, reason: 'unknown user 999 and no history: popularity ranking' })),
    );
    const result = await predict({ modelName: 'm', userId: 999, k: 2 }, { fetch });
    expect(result.fallback).toBe(true);
    expect(result.reason).toBe('unknown user 999 and no history: popularity ranking');
  });
});

describe('parsePrediction', () => {
  it('builds cards from content_ids and scores when items is missing', () => {
    const parsed = parsePrediction({ content_ids: [5, 6], scores: [0.5, 0.25], fallback: false, reason: null });
    expect(parsed.items).toEqual([
      { contentId: 5, title: null, posterPath: null, year: null, rating: null, score: 0.5 },
      { contentId: 6, title: null, posterPath: null, year: null, rating: null, score: 0.25 },
    ]);
  });

  it('keeps the ranking of content_ids even if items come in another order', () => {
    const parsed = parsePrediction({
      content_ids: [2, 1],
      scores: [0.9, 0.1],
      items: [
        { content_id: 1, title: 'One', poster_path: null },
        { content_id: 2, title: 'Two', poster_path: '' },
      ],
    });
    expect(parsed.items.map((i) => [i.contentId, i.title, i.posterPath, i.score])).toEqual([
      [2, 'Two', null, 0.9],
      [1, 'One', null, 0.1],
    ]);
  });

  it('treats null title, null poster and a bad date as absent', () => {
    const parsed = parsePrediction({
      content_ids: [3],
      scores: [0.3],
      items: [{ content_id: 3, title: null, poster_path: null, release_date: null, vote_average: null, score: 0.3 }],
    });
    expect(parsed.items[0]).toEqual({ contentId: 3, title: null, posterPath: null, year: null, rating: null, score: 0.3 });
  });
});

describe('predict errors', () => {
  async function errorOf(promise) {
    try {
      await promise;
    } catch (err) {
      return err;
    }
    throw new Error('expected a rejection');
  }

  it('shows the server message of a 4xx JSON error', async () => {
    const fetch = fetchReturning(jsonResponse({ error: 'k must be an integer between 1 and 100' }, { status: 400 }));
    const err = await errorOf(predict({ modelName: 'm', userId: 1, k: 0 }, { fetch }));
    expect(err).toBeInstanceOf(PredictError);
    expect(err.status).toBe(400);
    expect(err.message).toBe('k must be an integer between 1 and 100');
  });

  it('explains a non-JSON error page by its status', async () => {
    const fetch = fetchReturning(new Response('<html>Bad gateway</html>', { status: 502, statusText: 'Bad Gateway' }));
    const err = await errorOf(predict({ modelName: 'm', userId: 1, k: 6 }, { fetch }));
    expect(err.status).toBe(502);
    expect(err.message).toBe('The model server answered HTTP 502 Bad Gateway.');
  });

  it('says the model is not served on a bare 404', async () => {
    const fetch = fetchReturning(new Response('', { status: 404 }));
    const err = await errorOf(predict({ modelName: 'm', userId: 1, k: 6 }, { fetch }));
    expect(err.message).toMatch(/not being served/);
  });

  it('maps a network failure to a readable message', async () => {
    const fetch = vi.fn(async () => {
      throw new TypeError('Failed to fetch');
    });
    const err = await errorOf(predict({ modelName: 'm', userId: 1, k: 6 }, { fetch }));
    expect(err).toBeInstanceOf(PredictError);
    expect(err.status).toBeNull();
    expect(err.message).toMatch(/Could not reach the model server/);
  });

  it('rejects a 200 without predictions', async () => {
    const fetch = fetchReturning(jsonResponse({ model_name: 'm', predictions: [] }));
    const err = await errorOf(predict({ modelName: 'm', userId: 1, k: 6 }, { fetch }));
    expect(err.message).toMatch(/no predictions/);
  });

  it('lets an abort through unchanged so the caller can ignore it', async () => {
    const fetch = vi.fn(async () => {
      throw new DOMException('aborted', 'AbortError');
    });
    const err = await errorOf(predict({ modelName: 'm', userId: 1, k: 6 }, { fetch }));
    expect(err.name).toBe('AbortError');
  });
});

describe('loadConfig', () => {
  it('reads posterBaseUrl and modelName, trimming a trailing slash', async () => {
    const fetch = fetchReturning(jsonResponse({ posterBaseUrl: 'http://127.0.0.1:8080/posters/', modelName: 'other' }));
    expect(await loadConfig({ fetch })).toEqual({ posterBaseUrl: 'http://127.0.0.1:8080/posters', modelName: 'other' });
    expect(fetch.mock.calls[0][0]).toBe('/config.json');
  });

  it('falls back to the defaults when /config.json is missing', async () => {
    const fetch = fetchReturning(new Response('nope', { status: 404 }));
    expect(await loadConfig({ fetch })).toEqual(DEFAULT_CONFIG);
  });

  it('falls back to the defaults when a SPA fallback answers with HTML', async () => {
    const fetch = fetchReturning(new Response('<!doctype html><html></html>', { status: 200 }));
    expect(await loadConfig({ fetch })).toEqual(DEFAULT_CONFIG);
  });

  it('fills a missing key from the defaults', async () => {
    const fetch = fetchReturning(jsonResponse({ modelName: 'x' }));
    expect(await loadConfig({ fetch })).toEqual({ posterBaseUrl: DEFAULT_CONFIG.posterBaseUrl, modelName: 'x' });
  });
});

describe('posterUrl', () => {
  it('joins base, size and path', () => {
    expect(posterUrl('https://image.tmdb.org/t/p', '/abc.jpg')).toBe('https://image.tmdb.org/t/p/w342/abc.jpg');
  });

  it('is null without a poster path', () => {
    expect(posterUrl('https://image.tmdb.org/t/p', null)).toBeNull();
    expect(posterUrl('https://image.tmdb.org/t/p', '')).toBeNull();
  });
});
