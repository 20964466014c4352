import { isPopular } from '../url.js';
import { FallbackNotice } from './FallbackNotice.jsx';
import { MovieCard } from './MovieCard.jsx';
import { VersionBadge } from './VersionBadge.jsx';

function heading(query, n) {
  if (isPopular(query)) return `${n} popular movie${n === 1 ? '' : 's'}`;
  const what = `${n} recommendation${n === 1 ? '' : 's'}`;
  if (query.mode === 'user') return `${what} for user ${query.userId}`;
  const picked = query.history.length;
  return `${what} based on ${picked} movie${picked === 1 ? '' : 's'} you picked`;
}

/** Says that the popular movies are the same for everyone, and how to get personal ones. */
function PopularNote({ mode }) {
  return (
    <p className="popular-note" data-testid="popular-note">
      Watched by the most people: the same list for everyone, not personalised.
      {mode === 'user' && ' Enter a user id, or press “More like this” on a movie you like.'}
    </p>
  );
}

/**
 * Everything under the controls: loading skeleton, error, empty, or the grid.
 *
 * The popular movies (a query with neither a user nor a history) are a view of their own,
 * not a warning; an unknown user's fallback to the same list is.
 *
 * @param {{state: {status: string, query: any, data?: any, error?: string}, posterBaseUrl: string,
 *          onMoreLikeThis: (item: any) => void, onRetry: () => void,
 *          onPosterClick?: (item: any) => void}} props
 */
export function Results({ state, posterBaseUrl, onMoreLikeThis, onRetry, onPosterClick }) {
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
  const popular = isPopular(query);
  return (
    <section aria-labelledby="results-heading">
      <div className="results-header">
        <h2 id="results-heading">{heading(query, data.items.length)}</h2>
        <VersionBadge modelName={data.modelName} version={data.modelVersion} />
      </div>
      {popular && <PopularNote mode={query.mode} />}
      {data.fallback && !popular && <FallbackNotice mode={query.mode} reason={data.reason} />}
      {data.items.length === 0 ? (
        <p className="hint">No recommendations came back for this request.</p>
      ) : (
        <ul className="grid" aria-label="Recommendations">
          {data.items.map((item) => (
            <MovieCard
              key={item.contentId}
              item={item}
              posterBaseUrl={posterBaseUrl}
              onMoreLikeThis={onMoreLikeThis}
              onPosterClick={onPosterClick}
            />
          ))}
        </ul>
      )}
    </section>
  );
}
