import { describe, expect, it, vi } from 'vitest';
import { ANON_KEY_STORAGE, anonymousId, feedbackEvents, sendFeedback, userKey } from '../src/feedback.js';
import { jsonResponse } from './helpers.js';

function memoryStorage(initial = {}) {
  const data = new Map(Object.entries(initial));
  return { getItem: (k) => (data.has(k) ? data.get(k) : null), setItem: (k, v) => data.set(k, String(v)), data };
}

describe('anonymousId', () => {
  it('creates anon-<uuid> once and reads it back from storage afterwards', () => {
    const storage = memoryStorage();
    const uuid = vi.fn(() => '3f2a9c1e-5b7d-4e8f-9a0b-1c2d3e4f5a6b');
    const first = anonymousId({ storage, randomUUID: uuid });
    expect(first).toBe('anon-3f2a9c1e-5b7d-4e8f-9a0b-1c2d3e4f5a6b');
    expect(storage.data.get(ANON_KEY_STORAGE)).toBe(first);
    const saved = 'anon-00000000-0000-4000-8000-000000000001';
    expect(anonymousId({ storage: memoryStorage({ [ANON_KEY_STORAGE]: saved }), randomUUID: uuid })).toBe(saved);
  });

  it('still gives an id when storage is blocked or holds garbage', () => {
    const blocked = {
      getItem: () => {
        throw new Error('SecurityError');
      },
      setItem: () => {
        throw new Error('QuotaExceededError');
      },
    };
    expect(anonymousId({ storage: blocked })).toMatch(/^anon-[0-9a-f-]{36}$/);
    expect(anonymousId({ storage: memoryStorage({ [ANON_KEY_STORAGE]: '<script>' }) })).toMatch(/^anon-[0-9a-f-]{36}$/);
  });
});

describe('feedback events', () => {
  it('name the known user, else the anonymous id', () => {
    expect(userKey(42, 'anon-x')).toBe('42');
    expect(userKey(0, 'anon-x')).toBe('0');
    expect(userKey(null, 'anon-x')).toBe('anon-x');
  });

  it('carry request id, item, position, model version and user; none without a request id', () => {
    const prediction = { requestId: 'abc123', modelVersion: '7' };
    expect(feedbackEvents('click', prediction, '42', [{ contentId: 11, position: 3 }])).toEqual([
      { type: 'click', request_id: 'abc123', item_id: 11, position: 3, model_version: '7', user_id: '42' },
    ]);
    expect(feedbackEvents('impression', { requestId: null, modelVersion: '7' }, '42', [{ contentId: 1, position: 0 }])).toEqual([]);
  });

  it('go out in batches of at most 100 and a failure never rejects', async () => {
    const fetch = vi.fn(async () => jsonResponse({}, { status: 202 }));
    const events = Array.from({ length: 250 }, (_, i) => ({ type: 'impression', item_id: i }));
    expect(await sendFeedback(events, { fetch })).toBe(true);
    expect(fetch.mock.calls.map(([, init]) => JSON.parse(init.body).events.length)).toEqual([100, 100, 50]);
    expect(fetch.mock.calls.every(([url, init]) => url === '/events/feedback' && init.method === 'POST')).toBe(true);
    const down = vi.fn(async () => {
      throw new TypeError('Failed to fetch');
    });
    expect(await sendFeedback(events.slice(0, 3), { fetch: down })).toBe(false);
    const refused = vi.fn(async () => jsonResponse({ error: 'events[0].position' }, { status: 422 }));
    expect(await sendFeedback(events.slice(0, 3), { fetch: refused })).toBe(false);
  });
});
