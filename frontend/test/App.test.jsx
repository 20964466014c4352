import { fireEvent, render, screen, waitFor, within } from '@testing-library/react';
import { describe, expect, it } from 'vitest';
import App from '../src/App.jsx';
import { jsonResponse, predictBody, predictCalls, stubBackend } from './helpers.js';

async function renderReady() {
  render(<App />);
  const button = screen.getByRole('button', { name: 'Recommend' });
  await waitFor(() => expect(button.disabled).toBe(false)); // config loaded
  return button;
}

function askFor(userId) {
  fireEvent.change(screen.getByLabelText('User id'), { target: { value: String(userId) } });
  fireEvent.click(screen.getByRole('button', { name: 'Recommend' }));
}

function cards() {
  return within(screen.getByRole('list', { name: 'Recommendations' })).getAllByRole('listitem');
}

describe('App', () => {
  it('asks for a known user and shows the grid, the version badge and no fallback notice', async () => {
    const fetch = stubBackend(() => jsonResponse(predictBody({ version: '3' })));
    await renderReady();
    askFor(42);
    await screen.findByRole('list', { name: 'Recommendations' });
    expect(cards()).toHaveLength(2);
    expect(screen.getByTestId('model-version').textContent).toContain('v3');
    expect(screen.queryByTestId('fallback-notice')).toBeNull();
    expect(predictCalls(fetch)).toEqual([
      { url: '/v1/models/movie-recommender:predict', body: { instances: [{ user_id: 42, k: 12, display: true }] } },
    ]);
    // The poster base comes from /config.json at run time.
    expect(screen.getByRole('img', { name: 'Poster of Alpha' }).getAttribute('src')).toBe(
      'http://posters.test/t/p/w342/alpha.jpg',
    );
    expect(screen.getByRole('img', { name: 'Beta (no poster available)' })).toBeTruthy();
  });

  it('shows the fallback notice and reason for an unknown user', async () => {
    stubBackend(() =>
      jsonResponse(predictBody({ fallback: true, reason: 'unknown user 999999 and no history: popularity ranking' })),
    );
    await renderReady();
    askFor(999999);
    const notice = await screen.findByTestId('fallback-notice');
    expect(notice.textContent).toContain('Unknown user — showing popular movies');
    expect(notice.textContent).toContain('unknown user 999999 and no history');
  });

  it('shows the server error message for a 4xx, keeping the page usable', async () => {
    stubBackend(() => jsonResponse({ error: 'user_id must be a non-negative integer' }, { status: 422 }));
    await renderReady();
    askFor(5);
    const alert = await screen.findByRole('alert');
    expect(alert.textContent).toContain('user_id must be a non-negative integer');
    expect(screen.getByRole('button', { name: 'Recommend' })).toBeTruthy();
  });

  it('retries after an error', async () => {
    let calls = 0;
    stubBackend(() => (++calls === 1 ? new Response('', { status: 503 }) : jsonResponse(predictBody())));
    await renderReady();
    askFor(5);
    fireEvent.click(await screen.findByRole('button', { name: 'Try again' }));
    await screen.findByRole('list', { name: 'Recommendations' });
    expect(calls).toBe(2);
  });

  it('rejects a non-numeric user id without calling the server', async () => {
    const fetch = stubBackend(() => jsonResponse(predictBody()));
    await renderReady();
    askFor('4.5');
    const input = screen.getByLabelText('User id');
    expect(input.getAttribute('aria-invalid')).toBe('true');
    expect(screen.getByText(/whole number/)).toBeTruthy();
    expect(predictCalls(fetch)).toEqual([]);
  });

  it('shows an empty state when no recommendations come back', async () => {
    stubBackend(() => jsonResponse(predictBody({ items: [] })));
    await renderReady();
    askFor(1);
    expect(await screen.findByText('No recommendations came back for this request.')).toBeTruthy();
  });

  it('shows a loading state while the request is in flight', async () => {
    let release;
    stubBackend(() => new Promise((resolve) => (release = () => resolve(jsonResponse(predictBody())))));
    await renderReady();
    askFor(1);
    expect(await screen.findByText('Loading recommendations…')).toBeTruthy();
    release();
    await screen.findByRole('list', { name: 'Recommendations' });
    expect(screen.queryByText('Loading recommendations…')).toBeNull();
  });

  it('refetches with the new k when the selector changes', async () => {
    const fetch = stubBackend(() => jsonResponse(predictBody()));
    await renderReady();
    askFor(7);
    await screen.findByRole('list', { name: 'Recommendations' });
    fireEvent.change(screen.getByLabelText('How many'), { target: { value: '24' } });
    await waitFor(() => expect(predictCalls(fetch)).toHaveLength(2));
    expect(predictCalls(fetch)[1].body).toEqual({ instances: [{ user_id: 7, k: 24, display: true }] });
  });

  it('"More like this" builds an anonymous history and refreshes from it', async () => {
    const fetch = stubBackend(() => jsonResponse(predictBody()));
    await renderReady();
    askFor(42);
    await screen.findByRole('list', { name: 'Recommendations' });
    fireEvent.click(screen.getByRole('button', { name: 'More like Alpha' }));
    await waitFor(() => expect(predictCalls(fetch)).toHaveLength(2));
    expect(predictCalls(fetch)[1].body).toEqual({ instances: [{ history: [11], k: 12, display: true }] });
    expect(screen.getByRole('radio', { name: 'Anonymous' }).checked).toBe(true);
    expect(within(screen.getByRole('list', { name: 'Movies in your history' })).getByText('Alpha')).toBeTruthy();

    await screen.findByRole('button', { name: 'More like Beta' });
    fireEvent.click(screen.getByRole('button', { name: 'More like Beta' }));
    await waitFor(() => expect(predictCalls(fetch)).toHaveLength(3));
    expect(predictCalls(fetch)[2].body).toEqual({ instances: [{ history: [11, 22], k: 12, display: true }] });

    fireEvent.click(await screen.findByRole('button', { name: 'Remove Alpha from history' }));
    await waitFor(() => expect(predictCalls(fetch)).toHaveLength(4));
    expect(predictCalls(fetch)[3].body).toEqual({ instances: [{ history: [22], k: 12, display: true }] });
  });

  it('words the anonymous fallback as missing history', async () => {
    stubBackend(() => jsonResponse(predictBody({ fallback: true, reason: 'no user_id or history given: popularity ranking' })));
    await renderReady();
    fireEvent.click(screen.getByRole('radio', { name: 'Anonymous' }));
    const notice = await screen.findByTestId('fallback-notice');
    expect(notice.textContent).toContain('Not enough history — showing popular movies');
  });

  it('uses the TMDB defaults when /config.json is missing', async () => {
    stubBackend(() => jsonResponse(predictBody()), { config: null });
    await renderReady();
    askFor(1);
    const img = await screen.findByRole('img', { name: 'Poster of Alpha' });
    expect(img.getAttribute('src')).toBe('https://image.tmdb.org/t/p/w342/alpha.jpg');
  });
});
