import { useEffect, useId, useState } from 'react';
import { DEFAULT_CONFIG, loadConfig, predict } from './api.js';
import { HistoryBar } from './components/HistoryBar.jsx';
import { Results } from './components/Results.jsx';

export const K_CHOICES = [6, 12, 24];
const DEFAULT_K = 12;

/** `"42"` -> 42; anything that is not a whole, safe, non-negative number -> null. */
export function parseUserId(text) {
  const trimmed = String(text).trim();
  if (!/^\d+$/.test(trimmed)) return null;
  const n = Number(trimmed);
  return Number.isSafeInteger(n) ? n : null;
}

export default function App() {
  const [config, setConfig] = useState(null);
  const [mode, setMode] = useState('user');
  const [userIdText, setUserIdText] = useState('');
  const [userIdError, setUserIdError] = useState(null);
  const [k, setK] = useState(DEFAULT_K);
  const [history, setHistory] = useState([]);
  // The request on screen; a fresh object on every submit so "Recommend" always refetches.
  const [query, setQuery] = useState(null);
  const [result, setResult] = useState({ status: 'idle' });
  const ids = useId();

  useEffect(() => {
    let live = true;
    loadConfig().then((c) => live && setConfig(c));
    return () => {
      live = false;
    };
  }, []);

  useEffect(() => {
    if (!query || !config) return undefined;
    const controller = new AbortController();
    setResult({ status: 'loading', query });
    predict(
      { modelName: config.modelName, k: query.k, userId: query.userId, history: query.history?.map((m) => m.contentId) },
      { signal: controller.signal },
    ).then(
      (data) => setResult({ status: 'success', query, data }),
      (err) => {
        if (err?.name === 'AbortError') return; // superseded by a newer request
        setResult({ status: 'error', query, error: err?.message || 'Something went wrong.' });
      },
    );
    return () => controller.abort();
  }, [query, config]);

  function submit(event) {
    event.preventDefault();
    if (mode === 'anonymous') {
      setQuery({ mode, history, k });
      return;
    }
    const userId = parseUserId(userIdText);
    if (userId === null) {
      setUserIdError('Enter a user id as a whole number, for example 42.');
      return;
    }
    setUserIdError(null);
    setQuery({ mode, userId, k });
  }

  function changeMode(next) {
    setMode(next);
    if (next === 'anonymous') {
      setQuery({ mode: next, history, k });
    } else {
      setQuery(null);
      setResult({ status: 'idle' });
    }
  }

  function changeK(nextK) {
    setK(nextK);
    if (query) setQuery({ ...query, k: nextK });
  }

  function showHistory(nextHistory) {
    setHistory(nextHistory);
    setQuery({ mode: 'anonymous', history: nextHistory, k });
  }

  function moreLikeThis(item) {
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
          onRetry={() => query && setQuery({ ...query })}
        />
      </main>
    </>
  );
}
