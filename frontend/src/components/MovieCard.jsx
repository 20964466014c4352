import { Poster } from './Poster.jsx';

export function formatScore(score) {
  if (score === null) return '—';
  // Model scores sit in 0..1; popularity fallback scores are counts. Three significant digits
  // reads well for both.
  return String(Number(score.toPrecision(3)));
}

/** One recommended movie: poster, title, year, rating, score and "More like this". */
export function MovieCard({ item, posterBaseUrl, onMoreLikeThis, onPosterClick }) {
  const title = item.title ?? `Movie #${item.contentId}`;
  return (
    <li className="card" data-content-id={item.contentId}>
      {/* a click on the poster is recorded as interest (feedback); it changes nothing on screen */}
      <Poster
        posterBaseUrl={posterBaseUrl}
        posterPath={item.posterPath}
        title={title}
        contentId={item.contentId}
        onClick={onPosterClick ? () => onPosterClick(item) : undefined}
      />
      <div className="card-body">
        <h3 className="card-title">{title}</h3>
        <p className="card-meta">
          <span>{item.year ?? 'Year unknown'}</span>
          {item.rating !== null && (
            <span aria-label={`Rating ${item.rating.toFixed(1)} out of 10`}>
              <span aria-hidden="true">★ </span>
              {item.rating.toFixed(1)}
            </span>
          )}
        </p>
        <p className="card-score">
          Score <span className="card-score-value">{formatScore(item.score)}</span>
        </p>
        {onMoreLikeThis && (
          <button type="button" className="secondary" onClick={() => onMoreLikeThis(item)} aria-label={`More like ${title}`}>
            More like this
          </button>
        )}
      </div>
    </li>
  );
}
