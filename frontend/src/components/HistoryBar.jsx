/** The anonymous visitor's history: movies picked with "More like this". */
export function HistoryBar({ history, onRemove, onClear }) {
  if (history.length === 0) {
    return (
      <p className="history-empty">
        Anonymous mode: pick <em>More like this</em> on any movie to build a history. Until then you see popular
        movies.
      </p>
    );
  }
  return (
    <section className="history" aria-labelledby="history-heading">
      <h2 id="history-heading" className="history-heading">
        Your history
      </h2>
      <ul className="chips" aria-label="Movies in your history">
        {history.map((movie) => (
          <li key={movie.contentId} className="chip">
            <span>{movie.title}</span>
            <button type="button" className="chip-remove" onClick={() => onRemove(movie.contentId)} aria-label={`Remove ${movie.title} from history`}>
              <span aria-hidden="true">×</span>
            </button>
          </li>
        ))}
      </ul>
      <button type="button" className="link" onClick={onClear}>
        Clear history
      </button>
    </section>
  );
}
