import { describe, expect, it } from 'vitest';
import { isPopular, parseSearch, parseWholeNumber, POPULAR_VIEW, toSearch } from '../src/url.js';

const popular = { mode: 'user', userId: null, history: [], k: 12 };

describe('parseSearch', () => {
  it.each([
    ['', popular],
    ['?', popular],
    ['?user=42', { ...popular, userId: 42 }],
    ['user=0', { ...popular, userId: 0 }],
    ['?history=550,680', { mode: 'anonymous', userId: null, history: [550, 680], k: 12 }],
    ['?history=550%2C680', { mode: 'anonymous', userId: null, history: [550, 680], k: 12 }],
    ['?history=7,7,3', { mode: 'anonymous', userId: null, history: [7, 3], k: 12 }],
    ['?history=', { mode: 'anonymous', userId: null, history: [], k: 12 }],
    ['?user=42&k=24', { ...popular, userId: 42, k: 24 }],
    ['?k=6', { ...popular, k: 6 }],
    ['?user=42&utm_source=mail', { ...popular, userId: 42 }],
  ])('reads %j', (search, view) => {
    expect(parseSearch(search)).toEqual({ view, problems: [] });
  });

  it.each([
    ['?user=abc', /user id “abc” is not a whole number/],
    ['?user=', /user id “” is not a whole number/],
    ['?user=4.5', /user id “4.5”/],
    ['?user=-3', /user id “-3”/],
    ['?user=99999999999999999999', /is not a whole number/],
    ['?history=1,x', /history “1,x” is not a list of movie ids.*this is not an id: “x”/],
    ['?history=1,,2', /these are not ids|this is not an id: “”/],
    ['?history=a,b', /these are not ids: “a”, “b”/],
    ['?user=1&history=2', /both a user and a history/],
    ['?user=42&k=7', /asks for “7” movies; the choices are 6, 12, 24/],
  ])('falls back to the popular view for %j, saying why', (search, message) => {
    const { view, problems } = parseSearch(search);
    expect(view).toEqual(popular);
    expect(isPopular(view)).toBe(true);
    expect(problems.join(' ')).toMatch(message);
  });

  it('keeps a readable k when the user is unreadable', () => {
    expect(parseSearch('?user=abc&k=24').view).toEqual({ ...popular, k: 24 });
  });

  it('shortens a very long bad value in its message', () => {
    expect(parseSearch(`?user=${'x'.repeat(500)}`).problems[0].length).toBeLessThan(120);
    const many = Array.from({ length: 300 }, (_, i) => `m${i}`).join(',');
    const [problem] = parseSearch(`?history=${many}`).problems;
    expect(problem).toMatch(/these are not ids: “m0”, “m1”, “m2”, …\)/);
    expect(problem.length).toBeLessThan(200);
  });
});

describe('toSearch', () => {
  it.each([
    [popular, ''],
    [{ ...popular, userId: 42 }, '?user=42'],
    [{ ...popular, userId: 0 }, '?user=0'],
    [{ ...popular, userId: 42, k: 24 }, '?user=42&k=24'],
    [{ mode: 'anonymous', userId: null, history: [550, 680], k: 12 }, '?history=550,680'],
    [{ mode: 'anonymous', userId: null, history: [], k: 6 }, '?history=&k=6'],
    [{ ...popular, k: 6 }, '?k=6'],
  ])('writes %j as %j', (view, search) => {
    expect(toSearch(view)).toBe(search);
  });

  it('round-trips through parseSearch', () => {
    const views = [
      popular,
      { ...popular, userId: 7, k: 24 },
      { mode: 'anonymous', userId: null, history: [1, 2, 3], k: 6 },
      { mode: 'anonymous', userId: null, history: [], k: 12 },
    ];
    for (const view of views) expect(parseSearch(toSearch(view))).toEqual({ view, problems: [] });
  });
});

describe('isPopular and parseWholeNumber', () => {
  it('calls a view popular when it names neither a user nor a history', () => {
    expect(isPopular(POPULAR_VIEW)).toBe(true);
    expect(isPopular({ ...popular, userId: 0 })).toBe(false);
    expect(isPopular({ mode: 'anonymous', userId: null, history: [], k: 12 })).toBe(true);
    expect(isPopular({ mode: 'anonymous', userId: null, history: [5], k: 12 })).toBe(false);
  });

  it('reads whole non-negative numbers only', () => {
    expect([' 42 ', '0', '4.5', '-1', '1e3', '', '9007199254740993'].map(parseWholeNumber)).toEqual([
      42,
      0,
      null,
      null,
      null,
      null,
      null,
    ]);
  });
});
