import { fireEvent, render, screen, within } from '@testing-library/react';
import { describe, expect, it } from 'vitest';
import { FallbackNotice } from '../src/components/FallbackNotice.jsx';
import { MovieCard } from '../src/components/MovieCard.jsx';
import { VersionBadge } from '../src/components/VersionBadge.jsx';

const BASE = 'http://posters.test/t/p';

function renderCard(item) {
  return render(
    <ul>
      <MovieCard item={item} posterBaseUrl={BASE} onMoreLikeThis={() => {}} />
    </ul>,
  );
}

const ITEM = { contentId: 11, title: 'Alpha', posterPath: '/alpha.jpg', year: '2024', rating: 7.1, score: 0.9 };

describe('MovieCard', () => {
  it('shows the poster at w342 with alt text, and title, year, rating, score', () => {
    renderCard(ITEM);
    const img = screen.getByRole('img', { name: 'Poster of Alpha' });
    expect(img.getAttribute('src')).toBe('http://posters.test/t/p/w342/alpha.jpg');
    expect(screen.getByRole('heading', { name: 'Alpha' })).toBeTruthy();
    expect(screen.getByText('2024')).toBeTruthy();
    expect(screen.getByLabelText('Rating 7.1 out of 10')).toBeTruthy();
    expect(screen.getByText('0.9')).toBeTruthy();
  });

  it('renders a titled placeholder instead of an image when poster_path is null', () => {
    const { container } = renderCard({ ...ITEM, posterPath: null });
    expect(container.querySelector('img')).toBeNull();
    const placeholder = screen.getByRole('img', { name: 'Alpha (no poster available)' });
    expect(placeholder.textContent).toBe('Alpha');
  });

  it('swaps to the placeholder when the poster image fails to load', () => {
    const { container } = renderCard(ITEM);
    fireEvent.error(screen.getByRole('img', { name: 'Poster of Alpha' }));
    expect(container.querySelector('img')).toBeNull();
    expect(screen.getByRole('img', { name: 'Alpha (no poster available)' })).toBeTruthy();
  });

  it('names an untitled movie by its id and hides an unknown rating', () => {
    renderCard({ contentId: 77, title: null, posterPath: null, year: null, rating: null, score: null });
    expect(screen.getByRole('heading', { name: 'Movie #77' })).toBeTruthy();
    expect(screen.getByText('Year unknown')).toBeTruthy();
    expect(screen.queryByLabelText(/Rating/)).toBeNull();
  });
});

describe('VersionBadge', () => {
  it('shows the model name and version', () => {
    render(<VersionBadge modelName="movie-recommender" version="3" />);
    expect(screen.getByTestId('model-version').textContent).toBe('Served by movie-recommender v3');
  });

  it('says the version is unknown instead of printing vnull', () => {
    render(<VersionBadge modelName="movie-recommender" version={null} />);
    const text = screen.getByTestId('model-version').textContent;
    expect(text).toContain('version unknown');
    expect(text).not.toContain('null');
  });
});

describe('FallbackNotice', () => {
  it('tells a known-user request that the user is unknown, with the reason', () => {
    render(<FallbackNotice mode="user" reason="unknown user 999 and no history: popularity ranking" />);
    const notice = screen.getByRole('status');
    expect(within(notice).getByText('Unknown user — showing popular movies')).toBeTruthy();
    expect(within(notice).getByText('unknown user 999 and no history: popularity ranking')).toBeTruthy();
  });

  it('words the anonymous case as missing history', () => {
    render(<FallbackNotice mode="anonymous" reason={null} />);
    expect(screen.getByRole('status').textContent).toBe('Not enough history — showing popular movies');
  });
});
