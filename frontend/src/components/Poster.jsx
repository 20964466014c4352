import { useState } from 'react';
import { posterUrl } from '../api.js';

/** A stable hue per movie so placeholder cards are told apart at a glance. */
function hueFor(contentId) {
  return (Math.abs(Number(contentId) || 0) * 47) % 360;
}

/**
 * The poster image, or a gradient placeholder carrying the title when there is no poster
 * path or the image fails to load (offline machine, TMDB path gone stale).
 */
export function Poster({ posterBaseUrl, posterPath, title, contentId, onClick }) {
  const src = posterUrl(posterBaseUrl, posterPath);
  const [failedSrc, setFailedSrc] = useState(null);
  const style = { '--hue': hueFor(contentId) };

  if (src && failedSrc !== src) {
    return (
      <div className="poster" style={style} onClick={onClick}>
        <img
          src={src}
          alt={`Poster of ${title}`}
          width="342"
          height="513"
          loading="lazy"
          decoding="async"
          onError={() => setFailedSrc(src)}
        />
      </div>
    );
  }
  return (
    <div
      className="poster poster-placeholder"
      style={style}
      role="img"
      aria-label={`${title} (no poster available)`}
      onClick={onClick}
    >
      <span aria-hidden="true">{title}</span>
    </div>
  );
}
