import { act, fireEvent, render, screen, waitFor, within } from '@testing-library/react';
import { describe, expect, it } from 'vitest';
import App from '../src/App.jsx';
import { jsonResponse, predictBody, predictCalls, stubBackend } from './helpers.js';

const POPULAR = { popular: true, k: 12, display: true };

/** Open the page at `path` (the address a visitor typed or followed). */
async function renderAt(path = '/') {
  window.history.replaceState(null, '', path);
  render(<App />);
  const button = screen.getByRole('button', { name: 'Recommend' });
  await waitFor(() => expect(button.disabled).toBe(false)); // config loaded
  return button;
}

/** The heading over the results ("12 popular movies"), once an answer is on screen. */
function resultsHeading() {
  return screen.getByRole('region', { name: /popular movie|recommendation/ }).querySelector('h2');
}

/** Render the page at `path` and wait for its first answer to be on screen. */
async function openAt(path = '/') {
  await renderAt(path);
  await screen.findByRole('region', { name: /popular movie|recommendation/ });
}

function askFor(userId) {
  fireEvent.change(screen.getByLabelText('User id'), { target: { value: String(userId) } });
  fireEvent.click(screen.getByRole('button', { name: 'Recommend' }));
}

function cards() {
  return within(screen.getByRole('list', { name: 'Recommendations' })).getAllByRole('listitem');
}

function address() {
  return `${window.location.pathname}${window.location.search}`;
}

function chips() {
  const list = screen.queryByRole('list', { name: 'Movies in your history' });
  return list ? within(list).getAllByRole('listitem').map((li) => li.textContent.replace('×', '').trim()) : [];
}

/** Press the browser's back (or forward) button and wait for the page to react. */
async function go(delta) {
  const popped = new Promise((resolve) => window.addEventListener('popstate', resolve, { once: true }));
  act(() => window.history.go(delta));
  await act(() => popped);
}

describe('App opens on the popular movies', () => {
  it('asks for them on load and shows them with the version that answered, not as a warning', async () => {
    const fetch = stubBackend(() =>
      jsonResponse(predictBody({ version: '7', fallback: true, reason: 'no user_id or history given: popularity ranking' })),
    );
    await openAt('/');
    expect(predictCalls(fetch)).toEqual([{ url: '/v1/models/movie-recommender:predict', body: { instances: [POPULAR] } }]);
    expect(resultsHeading().textContent).toBe('2 popular movies');
    expect(screen.getByTestId('model-version').textContent).toContain('v7');
    expect(screen.getByTestId('popular-note').textContent).toMatch(/same list for everyone, not personalised/);
    expect(screen.queryByTestId('fallback-notice')).toBeNull();
    expect(screen.queryByRole('alert')).toBeNull();
    expect(cards()).toHaveLength(2);
    expect(screen.getByLabelText('User id').value).toBe('');
    expect(address()).toBe('/');
  });

  it('shows popular movies, not an error, in anonymous mode before any pick', async () => {
    const fetch = stubBackend(() => jsonResponse(predictBody({ fallback: true })));
    await openAt('/');
    fireEvent.click(screen.getByRole('radio', { name: 'Anonymous' }));
    await waitFor(() => expect(predictCalls(fetch)).toHaveLength(2));
    expect(predictCalls(fetch)[1].body).toEqual({ instances: [POPULAR] });
    await screen.findByTestId('popular-note');
    expect(screen.queryByRole('alert')).toBeNull();
    expect(screen.queryByTestId('fallback-notice')).toBeNull();
    expect(address()).toBe('/?history=');
  });

  it('offers "Try again" when the popular movies cannot be fetched', async () => {
    let calls = 0;
    stubBackend(() => (++calls === 1 ? new Response('', { status: 503 }) : jsonResponse(predictBody())));
    await renderAt('/');
    expect((await screen.findByRole('alert')).textContent).toContain('not ready yet');
    fireEvent.click(screen.getByRole('button', { name: 'Try again' }));
    await screen.findByRole('list', { name: 'Recommendations' });
    expect(calls).toBe(2);
  });
});

describe('App for a known user', () => {
  it('asks for the user and shows the grid, the version badge and no fallback notice', async () => {
    const fetch = stubBackend(() => jsonResponse(predictBody({ version: '3' })));
    await openAt('/');
    askFor(42);
    await screen.findByRole('heading', { name: '2 recommendations for user 42' });
    expect(cards()).toHaveLength(2);
    expect(screen.getByTestId('model-version').textContent).toContain('v3');
    expect(screen.queryByTestId('fallback-notice')).toBeNull();
    expect(screen.queryByTestId('popular-note')).toBeNull();
    expect(predictCalls(fetch)[1]).toEqual({
      url: '/v1/models/movie-recommender:predict',
      body: { instances: [{ user_id: 42, k: 12, display: true }] },
    });
    expect(address()).toBe('/?user=42');
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
    await openAt('/');
    askFor(999999);
    const notice = await screen.findByTestId('fallback-notice');
    expect(notice.textContent).toContain('Unknown user — showing popular movies');
    expect(notice.textContent).toContain('unknown user 999999 and no history');
    expect(screen.queryByTestId('popular-note')).toBeNull();
  });

  it('shows the server error message for a 4xx, keeping the page usable', async () => {
    stubBackend((init) =>
      JSON.parse(init.body).instances[0].popular
        ? jsonResponse(predictBody())
        : jsonResponse({ error: 'user_id must be a non-negative integer' }, { status: 422 }),
    );
    await openAt('/');
    askFor(5);
    const alert = await screen.findByRole('alert');
    expect(alert.textContent).toContain('user_id must be a non-negative integer');
    expect(screen.getByRole('button', { name: 'Recommend' })).toBeTruthy();
  });

  it('rejects a non-numeric user id without calling the server', async () => {
    const fetch = stubBackend(() => jsonResponse(predictBody()));
    await openAt('/');
    askFor('4.5');
    const input = screen.getByLabelText('User id');
    expect(input.getAttribute('aria-invalid')).toBe('true');
    expect(screen.getByText(/whole number/)).toBeTruthy();
    expect(predictCalls(fetch)).toHaveLength(1); // the popular movies on load, nothing since
    expect(address()).toBe('/');
  });

  it('shows an empty state when no recommendations come back', async () => {
    stubBackend(() => jsonResponse(predictBody({ items: [] })));
    await openAt('/');
    askFor(1);
    expect(await screen.findByText('No recommendations came back for this request.')).toBeTruthy();
  });

  it('shows a loading state while the request is in flight', async () => {
    let release;
    stubBackend(() => new Promise((resolve) => (release = () => resolve(jsonResponse(predictBody())))));
    await renderAt('/');
    expect(await screen.findByText('Loading recommendations…')).toBeTruthy();
    release();
    await screen.findByRole('list', { name: 'Recommendations' });
    expect(screen.queryByText('Loading recommendations…')).toBeNull();
  });

  it('refetches with the new k when the selector changes, and says so in the address', async () => {
    const fetch = stubBackend(() => jsonResponse(predictBody()));
    await openAt('/');
    askFor(7);
    await screen.findByRole('heading', { name: /for user 7/ });
    fireEvent.change(screen.getByLabelText('How many'), { target: { value: '24' } });
    await waitFor(() => expect(predictCalls(fetch)).toHaveLength(3));
    expect(predictCalls(fetch)[2].body).toEqual({ instances: [{ user_id: 7, k: 24, display: true }] });
    expect(address()).toBe('/?user=7&k=24');
  });

  it('asking again for the same user refetches without adding a history entry', async () => {
    const fetch = stubBackend(() => jsonResponse(predictBody()));
    await openAt('/');
    const entries = window.history.length;
    askFor(42);
    await screen.findByRole('heading', { name: /for user 42/ });
    askFor(42);
    await waitFor(() => expect(predictCalls(fetch)).toHaveLength(3));
    expect(window.history.length).toBe(entries + 1);
  });
});

describe('App for an anonymous visitor', () => {
  it('"More like this" builds an anonymous history, refreshes from it and records it in the address', async () => {
    const fetch = stubBackend(() => jsonResponse(predictBody()));
    await openAt('/');
    askFor(42);
    await screen.findByRole('heading', { name: /for user 42/ });
    fireEvent.click(screen.getByRole('button', { name: 'More like Alpha' }));
    await waitFor(() => expect(predictCalls(fetch)).toHaveLength(3));
    expect(predictCalls(fetch)[2].body).toEqual({ instances: [{ history: [11], k: 12, display: true }] });
    expect(screen.getByRole('radio', { name: 'Anonymous' }).checked).toBe(true);
    expect(chips()).toEqual(['Alpha']);
    expect(address()).toBe('/?history=11');

    await screen.findByRole('button', { name: 'More like Beta' });
    fireEvent.click(screen.getByRole('button', { name: 'More like Beta' }));
    await waitFor(() => expect(predictCalls(fetch)).toHaveLength(4));
    expect(predictCalls(fetch)[3].body).toEqual({ instances: [{ history: [11, 22], k: 12, display: true }] });
    expect(address()).toBe('/?history=11,22');

    fireEvent.click(await screen.findByRole('button', { name: 'Remove Alpha from history' }));
    await waitFor(() => expect(predictCalls(fetch)).toHaveLength(5));
    expect(predictCalls(fetch)[4].body).toEqual({ instances: [{ history: [22], k: 12, display: true }] });

    // An emptied history is the popular movies again, never an empty history the predictor refuses.
    fireEvent.click(screen.getByRole('button', { name: 'Clear history' }));
    await waitFor(() => expect(predictCalls(fetch)).toHaveLength(6));
    expect(predictCalls(fetch)[5].body).toEqual({ instances: [POPULAR] });
    await screen.findByTestId('popular-note');
    expect(screen.queryByRole('alert')).toBeNull();
  });

  it('switching back to Known user asks again for the user typed before', async () => {
    const fetch = stubBackend(() => jsonResponse(predictBody()));
    await openAt('/?user=5');
    fireEvent.click(screen.getByRole('radio', { name: 'Anonymous' }));
    fireEvent.click(screen.getByRole('radio', { name: 'Known user' }));
    await waitFor(() => expect(predictCalls(fetch).at(-1).body.instances[0]).toEqual({ user_id: 5, k: 12, display: true }));
    expect(address()).toBe('/?user=5');
  });
});

describe('App deep links', () => {
  it('/?user=42 opens the user\'s recommendations directly', async () => {
    const fetch = stubBackend(() => jsonResponse(predictBody()));
    await openAt('/?user=42');
    expect(predictCalls(fetch).map((c) => c.body)).toEqual([{ instances: [{ user_id: 42, k: 12, display: true }] }]);
    expect(resultsHeading().textContent).toBe('2 recommendations for user 42');
    expect(screen.getByRole('radio', { name: 'Known user' }).checked).toBe(true);
    expect(screen.getByLabelText('User id').value).toBe('42');
    expect(screen.queryByTestId('link-problem')).toBeNull();
  });

  it('/?history=1,2&k=6 opens an anonymous history, its movies named by id', async () => {
    const fetch = stubBackend(() => jsonResponse(predictBody()));
    await openAt('/?history=1,2&k=6');
    expect(predictCalls(fetch).map((c) => c.body)).toEqual([{ instances: [{ history: [1, 2], k: 6, display: true }] }]);
    expect(resultsHeading().textContent).toBe('2 recommendations based on 2 movies you picked');
    expect(screen.getByRole('radio', { name: 'Anonymous' }).checked).toBe(true);
    expect(chips()).toEqual(['Movie #1', 'Movie #2']);
    expect(screen.getByLabelText('How many').value).toBe('6');
  });

  it.each([
    ['/?user=abc', /user id “abc” is not a whole number/],
    ['/?history=1,x', /history “1,x” is not a list of movie ids/],
    ['/?user=1&history=2', /both a user and a history/],
    ['/?k=1000', /choices are 6, 12, 24/],
  ])('%s says what is wrong inline and shows the popular movies', async (path, message) => {
    const fetch = stubBackend(() => jsonResponse(predictBody({ fallback: true })));
    await openAt(path);
    const problem = screen.getByTestId('link-problem');
    expect(problem.textContent).toMatch(/could not be read, so you see the popular movies/);
    expect(problem.textContent).toMatch(message);
    expect(predictCalls(fetch).map((c) => c.body)).toEqual([{ instances: [POPULAR] }]);
    expect(screen.getByTestId('popular-note')).toBeTruthy();
    expect(screen.queryByRole('alert')).toBeNull();
    expect(address()).toBe(path); // what the visitor followed stays visible

    askFor(3); // a choice of their own replaces the bad link and its message
    await screen.findByRole('heading', { name: /for user 3/ });
    expect(screen.queryByTestId('link-problem')).toBeNull();
    expect(address()).toBe('/?user=3');
  });
});

describe('App back and forward', () => {
  it('restores the form and the results of each earlier view', async () => {
    const fetch = stubBackend(() => jsonResponse(predictBody()));
    await openAt('/');
    askFor(42);
    await screen.findByRole('heading', { name: /for user 42/ });
    fireEvent.click(screen.getByRole('button', { name: 'More like Alpha' }));
    await screen.findByRole('heading', { name: /based on 1 movie you picked/ });
    fireEvent.click(screen.getByRole('button', { name: 'More like Beta' }));
    await screen.findByRole('heading', { name: /based on 2 movies you picked/ });
    expect(predictCalls(fetch)).toHaveLength(4);

    await go(-1);
    expect(address()).toBe('/?history=11');
    await screen.findByRole('heading', { name: /based on 1 movie you picked/ });
    expect(chips()).toEqual(['Alpha']); // the title, kept in the history entry
    expect(predictCalls(fetch).at(-1).body).toEqual({ instances: [{ history: [11], k: 12, display: true }] });

    await go(-1);
    expect(address()).toBe('/?user=42');
    await screen.findByRole('heading', { name: '2 recommendations for user 42' });
    expect(screen.getByRole('radio', { name: 'Known user' }).checked).toBe(true);
    expect(screen.getByLabelText('User id').value).toBe('42');
    expect(predictCalls(fetch).at(-1).body).toEqual({ instances: [{ user_id: 42, k: 12, display: true }] });

    await go(-1);
    expect(address()).toBe('/');
    await screen.findByRole('heading', { name: '2 popular movies' });
    expect(screen.getByLabelText('User id').value).toBe('');
    expect(predictCalls(fetch).at(-1).body).toEqual({ instances: [POPULAR] });

    await go(2);
    expect(address()).toBe('/?history=11');
    await screen.findByRole('heading', { name: /based on 1 movie you picked/ });
    expect(screen.getByRole('radio', { name: 'Anonymous' }).checked).toBe(true);
    expect(chips()).toEqual(['Alpha']);
  });

  it('going back to a bad link shows its message again', async () => {
    stubBackend(() => jsonResponse(predictBody()));
    await openAt('/?user=abc');
    askFor(8);
    await screen.findByRole('heading', { name: /for user 8/ });
    expect(screen.queryByTestId('link-problem')).toBeNull();
    await go(-1);
    expect((await screen.findByTestId('link-problem')).textContent).toMatch(/“abc”/);
    await screen.findByRole('heading', { name: '2 popular movies' });
  });
});

describe('App configuration', () => {
  it('uses the TMDB defaults when /config.json is missing', async () => {
    stubBackend(() => jsonResponse(predictBody()), { config: null });
    await renderAt('/');
    const img = await screen.findByRole('img', { name: 'Poster of Alpha' });
    expect(img.getAttribute('src')).toBe('https://image.tmdb.org/t/p/w342/alpha.jpg');
  });
});
