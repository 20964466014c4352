/**
 * Shown when the model could not personalise and answered with the popularity ranking.
 *
 * @param {{mode: 'user' | 'anonymous', reason: string | null}} props
 */
export function FallbackNotice({ mode, reason }) {
  const headline =
    mode === 'user' ? 'Unknown user — showing popular movies' : 'Not enough history — showing popular movies';
  return (
    <div className="notice" role="status" data-testid="fallback-notice">
      <strong>{headline}</strong>
      {reason && <span className="notice-reason">{reason}</span>}
    </div>
  );
}
