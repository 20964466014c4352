import { useEffect, useId, useRef, useState } from 'react';
import { DEFAULT_CONFIG, loadConfig, predict } from './api.js';
import { anonymousId, feedbackEvents, sendFeedback, userKey } from './feedback.js';
import { HistoryBar } from './components/HistoryBar.jsx';
import { LinkProblem } from './components/LinkProblem.jsx';
import { Results } from './components/Results.jsx';
import { K_CHOICES, parseSearch, parseWholeNumber, toSearch } from './url.js';

/**
 * The view the address names, with history ids turned into chips. Titles cannot ride in the
 * address, so they come from the history entry's state (set when this page pushed it) or from
 * movies already seen on screen; a cold deep link names its movies by id.
 */
function readLocation(titles) {
  const { view, problems } = parseSearch(window.location.search);
  const saved = window.history.state?.titles ?? {};
  const history = view.history.map((contentId) => ({
    contentId,
    title: saved[contentId] ?? titles.get(contentId) ?? `Movie #${contentId}`,
  }));
  return { query: { ...view, history }, problems };
}

export default function App() {
  // Titles of movies seen on screen this session, for history chips restored from the address.
  const titles = useRef(new Map());
  const [initial] = useState(() => readLocation(titles.current));
  const [config, setConfig] = useState(null);
  const [mode, setMode] = useState(initial.query.mode);
  const [userIdText, setUserIdText] = useState(initial.query.userId === null ? '' : String(initial.query.userId));
  const [userIdError, setUserIdError] = useState(null);
  const [k, setK] = useState(initial.query.k);
  const [history, setHistory] = useState(initial.query.history);
  const [linkProblems, setLinkProblems] = useState(initial.problems);
  // The request on screen (the address says the same); a fresh object on every change so
  // "Recommend" always refetches. With neither a user nor a history it is the popular movies.
  const [query, setQuery] = useState(initial.query);
  const [result, setResult] = useState({ status: 'loading', query: initial.query });
  const [anonId] = useState(() => anonymousId());
  // result sets whose impressions were sent (once each, also under StrictMode's double effects)
  const reported = useRef(new WeakSet());
  const ids = useId();

  useEffect(() => {
    let live = true;
    loadConfig().then((c) => live && setConfig(c));
    return () => {
      live = false;
    };
  }, []);

  useEffect(() => {
    if (!config) return undefined;
    const controller = new AbortController();
    setResult({ status: 'loading', query });
    const user = userKey(query.userId, anonId);
    predict(
      { modelName: config.modelName, k: query.k, userId: query.userId, history: query.history.map((m) => m.contentId), user },
      { signal: controller.signal },
    ).then(
      (answer) => {
        const data = { ...answer, user };
        for (const item of data.items) if (item.title) titles.current.set(item.contentId, item.title);
        setResult({ status: 'success', query, data });
      },
      (err) => {
        if (err?.name === 'AbortError') return; // superseded by a newer request
        setResult({ status: 'error', query, error: err?.message || 'Something went wrong.' });
      },
    );
    return () => controller.abort();
  }, [query, config, anonId]);

  // Impressions: the cards of each result set on screen, in one batch, once.
  useEffect(() => {
    if (result.status !== 'success' || reported.current.has(result.data)) return;
    reported.current.add(result.data);
    const { data } = result;
    const cards = data.items.map((item, position) => ({ contentId: item.contentId, position }));
    const events = feedbackEvents('impression', data, data.user, cards);
    if (events.length > 0) sendFeedback(events);
  }, [result]);

  /** A click on a card of the result set on screen (its poster, or "More like this"). */
  function clicked(item) {
    if (result.status !== 'success') return;
    const { data } = result;
    const position = data.items.findIndex((i) => i.contentId === item.contentId);
    if (position < 0) return;
    const events = feedbackEvents('click', data, data.user, [{ contentId: item.contentId, position }]);
    if (events.length > 0) sendFeedback(events);
  }

  // Back / forward: the address is the state, so restore the form and ask again.
  useEffect(() => {
    function restore() {
      const { query: next, problems } = readLocation(titles.current);
      setMode(next.mode);
      if (next.mode === 'user') setUserIdText(next.userId === null ? '' : String(next.userId));
      else setHistory(next.history);
      setK(next.k);
      setUserIdError(null);
      setLinkProblems(problems);
      setQuery(next);
    }
    window.addEventListener('popstate', restore);
    return () => window.removeEventListener('popstate', restore);
  }, []);

  /** Show `next` and record it in the address: a new history entry unless it is the same one. */
  function navigate(next) {
    setQuery(next);
    setLinkProblems([]);
    const url = `${window.location.pathname}${toSearch({ ...next, history: next.history.map((m) => m.contentId) })}`;
    const state = { titles: Object.fromEntries(next.history.map((m) => [m.contentId, m.title])) };
    if (url === `${window.location.pathname}${window.location.search}`) window.history.replaceState(state, '', url);
    else window.history.pushState(state, '', url);
  }

  function submit(event) {
    event.preventDefault();
    if (mode === 'anonymous') {
      navigate({ mode, userId: null, history, k });
      return;
    }
    const userId = parseWholeNumber(userIdText);
    if (userId === null) {
      setUserIdError('Enter a user id as a whole number, for example 42.');
      return;
    }
    setUserIdError(null);
    navigate({ mode, userId, history: [], k });
  }

  function changeMode(next) {
    setMode(next);
    setUserIdError(null);
    if (next === 'anonymous') {
      navigate({ mode: next, userId: null, history, k });
    } else {
      // Back to the user typed before, if any; else the popular movies until one is entered.
      navigate({ mode: next, userId: parseWholeNumber(userIdText), history: [], k });
    }
  }

  function changeK(nextK) {
    setK(nextK);
    navigate({ ...query, k: nextK });
  }

  function showHistory(nextHistory) {
    setHistory(nextHistory);
    navigate({ mode: 'anonymous', userId: null, history: nextHistory, k });
  }

  function moreLikeThis(item) {
    clicked(item);
    const movie = { contentId: item.contentId, title: item.title ?? `Movie #${item.contentId}` };
    // From a known user's list this starts an anonymous history seeded with the movie.
    const base = mode === 'anonymous' ? history : [];
    const next = base.some((m) => m.contentId === movie.contentId) ? base : [...base, movie];
    setMode('anonymous');
    showHistory(next);
  }

  const userIdId = `${ids}-user-id`;
  const userIdErrorId = `${ids}-user-id-error`;
  const kId = `${ids}-k`;

  return (
    <>
      <header className="site-header">
        <h1>Movie recommendations</h1>
      </header>
      <main>
        <form className="controls" onSubmit={submit} noValidate aria-label="Recommendation request">
          <fieldset className="modes">
            <legend>Who is watching?</legend>
            <div className="mode-options">
              <label>
                <input type="radio" name="mode" value="user" checked={mode === 'user'} onChange={() => changeMode('user')} />
                Known user
              </label>
              <label>
                <input
                  type="radio"
                  name="mode"
                  value="anonymous"
                  checked={mode === 'anonymous'}
                  onChange={() => changeMode('anonymous')}
                />
                Anonymous
              </label>
            </div>
          </fieldset>
          {mode === 'user' && (
            <div className="field">
              <label htmlFor={userIdId}>User id</label>
              <input
                id={userIdId}
                type="number"
                inputMode="numeric"
                min="0"
                step="1"
                value={userIdText}
                onChange={(e) => setUserIdText(e.target.value)}
                aria-invalid={userIdError ? 'true' : undefined}
                aria-describedby={userIdError ? userIdErrorId : undefined}
                placeholder="e.g. 42"
              />
              {userIdError && (
                <span id={userIdErrorId} className="field-error">
                  {userIdError}
                </span>
              )}
            </div>
          )}
          <div className="field">
            <label htmlFor={kId}>How many</label>
            <select id={kId} value={k} onChange={(e) => changeK(Number(e.target.value))}>
              {K_CHOICES.map((choice) => (
                <option key={choice} value={choice}>
                  {choice}
                </option>
              ))}
            </select>
          </div>
          <button type="submit" className="primary" disabled={!config}>
            Recommend
          </button>
        </form>
        <LinkProblem problems={linkProblems} />
        {mode === 'anonymous' && (
          <HistoryBar
            history={history}
            onRemove={(id) => showHistory(history.filter((m) => m.contentId !== id))}
            onClear={() => showHistory([])}
          />
        )}
        <Results
          state={result}
          posterBaseUrl={(config ?? DEFAULT_CONFIG).posterBaseUrl}
          onMoreLikeThis={moreLikeThis}
          onPosterClick={clicked}
          onRetry={() => setQuery({ ...query })}
        />
      </main>
    </>
  );
}
