import { FallbackNotice } from './FallbackNotice.jsx';
import { MovieCard } from './MovieCard.jsx';
import { VersionBadge } from './VersionBadge.jsx';

function describe(query) {
  if (query.mode === 'user') return `for user ${query.userId}`;
  const n = query.history.length;
  return n === 0 ? 'for a new visitor' : `based on ${n} movie${n === 1 ? '' : 's'} you picked`;
}

/**
 * Everything under the controls: idle prompt, loading skeleton, error, empty, or the grid.
 *
 * @param {{state: {status: string, query?: any, data?: any, error?: string}, posterBaseUrl: string,
 *          onMoreLikeThis: (item: any) => void, onRetry: () => void}} props
 */
export function Results({ state, posterBaseUrl, onMoreLikeThis, onRetry }) {
  if (state.status === 'idle') {
    return <p className="hint">Enter a user id and press Recommend, or switch to Anonymous.</p>;
  }
  if (state.status === 'loading') {
    return (
      <div aria-busy="true">
        <p className="hint" role="status">
          Loading recommendations…
        </p>
        <ul className="grid" aria-hidden="true">
          {Array.from({ length: state.query.k }, (_, i) => (
            <li key={i} className="card skeleton">
              <div className="poster" />
              <div className="card-body" />
            </li>
          ))}
        </ul>
      </div>
    );
  }
  if (state.status === 'error') {
    return (
      <div className="error" role="alert">
        <strong>Could not get recommendations.</strong>
        <span data-testid="error-message">{state.error}</span>
        <button type="button" className="secondary" onClick={onRetry}>
          Try again
        </button>
      </div>
    );
  }
  const { data, query } = state;
  return (
    <section aria-labelledby="results-heading">
      <div className="results-header">
        <h2 id="results-heading">
          {data.items.length} recommendation{data.items.length === 1 ? '' : 's'} {describe(query)}
        </h2>
        <VersionBadge modelName={data.modelName} version={data.modelVersion} />
      </div>
      {data.fallback && <FallbackNotice mode={query.mode} reason={data.reason} />}
      {data.items.length === 0 ? (
        <p className="hint">No recommendations came back for this request.</p>
      ) : (
        <ul className="grid" aria-label="Recommendations">
          {data.items.map((item) => (
            <MovieCard key={item.contentId} item={item} posterBaseUrl={posterBaseUrl} onMoreLikeThis={onMoreLikeThis} />
          ))}
        </ul>
      )}
    </section>
  );
}
