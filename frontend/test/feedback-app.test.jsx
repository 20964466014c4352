import { fireEvent, render, screen, waitFor, within } from '@testing-library/react';
import { afterEach, describe, expect, it } from 'vitest';
import App from '../src/App.jsx';
import { ANON_KEY_STORAGE } from '../src/feedback.js';
import { feedbackCalls, jsonResponse, predictBody, stubBackend } from './helpers.js';

afterEach(() => window.localStorage.clear());

let served = 0;
/** Each prediction gets its own request id, as the ingress gives it. */
function answer() {
  served += 1;
  return jsonResponse(predictBody({ version: '5' }), { headers: { 'X-Request-Id': `req-${served}`, 'X-Model-Version': '5' } });
}

async function openAt(path) {
  window.history.replaceState(null, '', path);
  render(<App />);
  await screen.findByRole('list', { name: 'Recommendations' });
}

function predictHeaders(fetch) {
  return fetch.mock.calls.filter(([url]) => String(url).startsWith('/v1/')).map(([, init]) => init.headers['X-User-Id']);
}

describe('the page says who is asking and what they saw and clicked', () => {
  it('sends the known user id from ?user= and reports the cards shown once, with the request id', async () => {
    const fetch = stubBackend(answer);
    await openAt('/?user=42');
    expect(predictHeaders(fetch)).toEqual(['42']);
    await waitFor(() => expect(feedbackCalls(fetch)).toHaveLength(1));
    const [impressions] = feedbackCalls(fetch);
    const requestId = impressions[0].request_id;
    expect(requestId).toMatch(/^req-\d+$/);
    expect(impressions).toEqual([
      { type: 'impression', request_id: requestId, item_id: 11, position: 0, model_version: '5', user_id: '42' },
      { type: 'impression', request_id: requestId, item_id: 22, position: 1, model_version: '5', user_id: '42' },
    ]);
  });

  it('gives an anonymous visitor one anon id kept in localStorage, and records clicks', async () => {
    const fetch = stubBackend(answer);
    await openAt('/');
    const anon = window.localStorage.getItem(ANON_KEY_STORAGE);
    expect(anon).toMatch(/^anon-[0-9a-f-]{36}$/);
    expect(predictHeaders(fetch)).toEqual([anon]);
    await waitFor(() => expect(feedbackCalls(fetch)).toHaveLength(1));
    const requestId = feedbackCalls(fetch)[0][0].request_id;

    const card = screen.getAllByRole('listitem').find((li) => li.dataset.contentId === '22');
    fireEvent.click(card.querySelector('.poster'));
    await waitFor(() => expect(feedbackCalls(fetch)).toHaveLength(2));
    expect(feedbackCalls(fetch)[1]).toEqual([
      { type: 'click', request_id: requestId, item_id: 22, position: 1, model_version: '5', user_id: anon },
    ]);

    fireEvent.click(within(card).getByRole('button', { name: 'More like Beta' }));
    // the click on the list it was in, then the impressions of the new list (a new request id)
    await waitFor(() => expect(feedbackCalls(fetch)).toHaveLength(4));
    const [click, next] = feedbackCalls(fetch).slice(2);
    expect(click).toEqual([
      { type: 'click', request_id: requestId, item_id: 22, position: 1, model_version: '5', user_id: anon },
    ]);
    expect(next.every((e) => e.type === 'impression' && e.request_id !== requestId && e.user_id === anon)).toBe(true);
    expect(predictHeaders(fetch)).toEqual([anon, anon]); // the same id on every request
  });

  it('keeps working when the feedback route fails', async () => {
    const fetch = stubBackend(answer, {
      onFeedback: () => {
        throw new TypeError('Failed to fetch');
      },
    });
    await openAt('/?user=7');
    await waitFor(() => expect(feedbackCalls(fetch)).toHaveLength(1));
    const card = screen.getAllByRole('listitem').find((li) => li.dataset.contentId === '11');
    fireEvent.click(within(card).getByRole('button', { name: 'More like Alpha' }));
    await waitFor(() => expect(document.getElementById('results-heading').textContent).toMatch(/based on 1 movie/));
    expect(screen.queryByRole('alert')).toBeNull();
  });

  it('sends no feedback when the answer has no request id to join it to', async () => {
    const fetch = stubBackend(() => jsonResponse(predictBody({ version: '5' })));
    await openAt('/?user=42');
    await screen.findByRole('list', { name: 'Recommendations' });
    await new Promise((resolve) => setTimeout(resolve, 50));
    expect(feedbackCalls(fetch)).toEqual([]);
  });
});
