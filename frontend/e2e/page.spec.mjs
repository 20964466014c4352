/**
 * Browser test of the built page in headless Debian Chromium (playwright-core, no bundled
 * browser download).
 *
 *   BASE_URL=http://127.0.0.1:8080 SCREENSHOT=/tmp/page.png npm run test:e2e
 *
 * BASE_URL is where the page and `/v1/models/...:predict` are served on one origin (the local
 * ingress). Without it the test starts e2e/stub-server.mjs over ./dist (run `npm run build`
 * first). Assertions are structural — n cards == k, a non-empty version badge, which notice is
 * shown, what the address says — so they hold for the real model server's data too. Every view
 * must load under the page's Content-Security-Policy (the ingress and the stub both send one)
 * without a single violation in the console.
 *
 * Environment:
 *   BASE_URL             page origin (default: start the stub)
 *   SCREENSHOT           where to save a full-page PNG of the known user's deep link (optional);
 *                        the other views go next to it with a suffix: `-popular` (`/`),
 *                        `-history`, `-fallback` (unknown user), `-bad-link` (`/?user=abc`)
 *   E2E_USER_ID          user id to ask for (default 1); when set, the test also asserts
 *                        that this user gets personalised results (no fallback notice)
 *   E2E_UNKNOWN_USER_ID  a user id the model has never seen (default 999999999)
 *   E2E_HISTORY          content ids the model knows, for `/?history=` (default: the first two
 *                        popular movies the page shows on `/`)
 *   E2E_K                how many recommendations to ask for: 6, 12 or 24 (default 12)
 *   CHROMIUM_PATH        browser binary (default /usr/bin/chromium)
 */
import assert from 'node:assert/strict';
import { existsSync, mkdtempSync, rmSync } from 'node:fs';
import { mkdir } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { dirname, extname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { after, before, describe, it } from 'node:test';
import { chromium } from 'playwright-core';

const CHROMIUM_ARGS = [
  '--headless',
  '--no-sandbox',
  '--disable-gpu',
  '--disable-quic',
  '--no-first-run',
  '--disable-background-networking',
  '--disable-component-update',
  '--disable-sync',
];
const TIMEOUT_MS = 30_000;

const explicitUser = process.env.E2E_USER_ID !== undefined && process.env.E2E_USER_ID !== '';
const USER_ID = explicitUser ? process.env.E2E_USER_ID : '1';
const UNKNOWN_USER_ID = process.env.E2E_UNKNOWN_USER_ID || '999999999';
const K = Number(process.env.E2E_K || 12);
const DEFAULT_K = 12; // what `/` shows, without a `k` in the address
const K_PARAM = K === DEFAULT_K ? '' : `&k=${K}`;
const HISTORY = (process.env.E2E_HISTORY || '').split(',').filter((id) => id.trim() !== '').map(Number);
const SCREENSHOT = process.env.SCREENSHOT || '';

let baseUrl = process.env.BASE_URL || '';
let stub = null;
let context = null;
let userDataDir = null;
const pageErrors = [];
const cspViolations = [];
const CSP_MESSAGE = /Content[- ]Security[- ]Policy|Refused to (load|apply|execute|connect|frame)/i;

/** No script error and no CSP violation so far, on any page the test opened. */
function assertClean() {
  assert.deepEqual(pageErrors, []);
  assert.deepEqual(cspViolations, [], 'the page broke its own Content-Security-Policy');
}

function withSuffix(path, suffix) {
  const ext = extname(path);
  return `${path.slice(0, path.length - ext.length)}${suffix}${ext || '.png'}`;
}

async function screenshot(page, path) {
  if (!path) return;
  await mkdir(dirname(path), { recursive: true });
  // Let posters settle (loaded, or swapped for placeholders) so the picture is honest.
  await page
    .waitForFunction(() => [...document.images].every((img) => img.complete), null, { timeout: 10_000 })
    .catch(() => {});
  await page.screenshot({ path, fullPage: true });
}

async function openPage(path = '/') {
  const page = await context.newPage();
  page.setDefaultTimeout(TIMEOUT_MS);
  page.on('pageerror', (err) => pageErrors.push(err));
  page.on('console', (msg) => {
    if (CSP_MESSAGE.test(msg.text())) cspViolations.push(msg.text());
  });
  const response = await page.goto(new URL(path, baseUrl).href, { waitUntil: 'domcontentloaded' });
  // The check above means something only if the page is under a policy at all.
  const policy = response.headers()['content-security-policy'] ?? '';
  assert.match(policy, /default-src 'none'/, `the page is served with a CSP: ${JSON.stringify(policy)}`);
  assert.match(policy, /frame-ancestors 'none'/);
  assert.equal(response.headers()['x-content-type-options'], 'nosniff');
  await page.getByRole('heading', { name: 'Movie recommendations' }).waitFor();
  return page;
}

/** The page's address without its origin: `/?user=42`. */
function address(page) {
  const url = new URL(page.url());
  return `${url.pathname}${url.search}`;
}

async function askForUser(page, userId) {
  await page.getByLabel('User id').fill(String(userId));
  await page.getByLabel('How many').selectOption(String(K));
  await page.getByRole('button', { name: 'Recommend' }).click();
  return waitForResults(page);
}

/** Wait for the grid (or fail with the error the page shows), and return the cards. */
async function waitForResults(page) {
  const grid = page.getByRole('list', { name: 'Recommendations' });
  const alert = page.getByRole('alert');
  await grid.or(alert).first().waitFor();
  if (await alert.isVisible()) assert.fail(`the page shows an error: ${await alert.innerText()}`);
  return grid.getByRole('listitem');
}

/** Wait until the results heading reads `name` (the answer to the latest request is shown). */
async function waitForHeading(page, name) {
  await page.getByRole('heading', { level: 2, name }).waitFor();
  return waitForResults(page);
}

async function contentIds(cards) {
  return cards.evaluateAll((items) => items.map((li) => Number(li.dataset.contentId)));
}

async function assertCards(cards, n = K) {
  assert.equal(await cards.count(), n, `expected ${n} recommendation cards`);
  for (let i = 0; i < n; i += 1) {
    const card = cards.nth(i);
    // A poster with alt text, or the titled placeholder: never a bare box.
    const picture = card.getByRole('img');
    assert.equal(await picture.count(), 1, `card ${i} has one poster or placeholder`);
    const name = (await picture.getAttribute('alt')) ?? (await picture.getAttribute('aria-label'));
    assert.ok(name && name.trim().length > 0, `card ${i} poster has a text alternative`);
    assert.ok((await card.getByRole('heading').innerText()).trim().length > 0, `card ${i} has a title`);
  }
  const ids = await contentIds(cards);
  assert.ok(ids.every(Number.isInteger), `every card names its movie: ${ids}`);
  assert.equal(new Set(ids).size, n, 'no movie twice');
}

async function assertVersionBadge(page) {
  const badge = page.getByTestId('model-version');
  await badge.waitFor();
  const text = (await badge.innerText()).trim();
  assert.match(text, /\bv\S+/, `version badge shows a version: ${JSON.stringify(text)}`);
  assert.doesNotMatch(text, /version unknown|vnull|vundefined/);
}

/** The popular view: its own heading and note, the version, and no warning of any kind. */
async function assertPopular(page, n = DEFAULT_K) {
  const cards = await waitForHeading(page, `${n} popular movies`);
  await assertCards(cards, n);
  await assertVersionBadge(page);
  assert.match(await page.getByTestId('popular-note').innerText(), /not personalised/);
  assert.equal(await page.getByTestId('fallback-notice').count(), 0, 'popular movies are no fallback warning');
  return cards;
}

describe('movie recommendations page', () => {
  before(async () => {
    assert.ok([6, 12, 24].includes(K), `E2E_K must be 6, 12 or 24, got ${K}`);
    if (!baseUrl) {
      const dist = fileURLToPath(new URL('../dist/index.html', import.meta.url));
      assert.ok(existsSync(dist), 'no dist/ to serve: run `npm run build` first, or set BASE_URL');
      const { startStubServer } = await import('./stub-server.mjs');
      stub = await startStubServer();
      baseUrl = stub.url;
    }
    userDataDir = mkdtempSync(join(tmpdir(), 'movie-mlops-e2e-'));
    context = await chromium.launchPersistentContext(userDataDir, {
      executablePath: process.env.CHROMIUM_PATH || '/usr/bin/chromium',
      headless: true,
      args: CHROMIUM_ARGS,
      viewport: { width: 1280, height: 900 },
    });
  });

  after(async () => {
    await context?.close();
    await stub?.close();
    if (userDataDir) rmSync(userDataDir, { recursive: true, force: true });
  });

  it('opens on the popular movies, with the model version that answered', async () => {
    const page = await openPage('/');
    await assertPopular(page);
    assert.equal(await page.getByLabel('User id').inputValue(), '');
    assert.equal(await page.getByTestId('link-problem').count(), 0);
    assert.equal(address(page), '/');
    if (SCREENSHOT) await screenshot(page, withSuffix(SCREENSHOT, '-popular'));
    assertClean();
  });

  it('/?user= opens that user\'s recommendations directly', async () => {
    // the page names the user on predict and reports the cards it showed (to the event sink)
    const seen = { predict: [], feedback: [] };
    const onRequest = (r) => {
      if (r.url().includes(':predict')) seen.predict.push(r.headers()['x-user-id']);
    };
    const onResponse = (r) => {
      if (r.url().endsWith('/events/feedback')) seen.feedback.push({ status: r.status(), body: r.request().postDataJSON() });
    };
    context.on('request', onRequest);
    context.on('response', onResponse);
    const page = await openPage(`/?user=${USER_ID}${K_PARAM}`);
    const cards = await waitForHeading(page, `${K} recommendations for user ${USER_ID}`);
    await assertCards(cards);
    const deadline = Date.now() + TIMEOUT_MS;
    while (seen.feedback.length === 0 && Date.now() < deadline) await new Promise((r) => setTimeout(r, 100));
    context.off('request', onRequest);
    context.off('response', onResponse);
    assert.deepEqual([...new Set(seen.predict)], [USER_ID]);
    assert.equal(seen.feedback.length, 1, 'one batch of impressions for the result set');
    const [{ status, body }] = seen.feedback;
    assert.ok(status >= 200 && status < 300, `the event sink accepted the impressions (HTTP ${status})`);
    assert.equal(body.events.length, K);
    assert.ok(body.events.every((e) => e.type === 'impression' && e.user_id === USER_ID && e.request_id));
    await assertVersionBadge(page);
    assert.ok(await page.getByRole('radio', { name: 'Known user' }).isChecked());
    assert.equal(await page.getByLabel('User id').inputValue(), USER_ID);
    assert.equal(await page.getByTestId('popular-note').count(), 0);
    if (explicitUser) {
      assert.equal(await page.getByTestId('fallback-notice').count(), 0, `user ${USER_ID} should be known to the model`);
    }
    await screenshot(page, SCREENSHOT);
    assertClean();
  });

  it('/?history= opens an anonymous history, leaving its movies out', async () => {
    let history = HISTORY;
    if (history.length === 0) {
      const popular = await openPage('/');
      history = (await contentIds(await assertPopular(popular))).slice(0, 2);
      await popular.close();
    }
    const page = await openPage(`/?history=${history.join(',')}${K_PARAM}`);
    const n = history.length;
    const cards = await waitForHeading(page, `${K} recommendations based on ${n} movie${n === 1 ? '' : 's'} you picked`);
    await assertCards(cards);
    await assertVersionBadge(page);
    assert.ok(await page.getByRole('radio', { name: 'Anonymous' }).isChecked());
    const chips = page.getByRole('list', { name: 'Movies in your history' }).getByRole('listitem');
    assert.equal(await chips.count(), n);
    const shown = await contentIds(cards);
    assert.deepEqual(shown.filter((id) => history.includes(id)), [], 'the history is not recommended back');
    assert.equal(await page.getByTestId('fallback-notice').count(), 0, 'a known history is personalised');
    if (SCREENSHOT) await screenshot(page, withSuffix(SCREENSHOT, '-history'));
    assertClean();
  });

  it('the back and forward buttons restore the earlier views', async () => {
    const page = await openPage('/');
    const popular = await contentIds(await assertPopular(page));
    const popularVersion = await page.getByTestId('model-version').innerText();
    await askForUser(page, USER_ID);
    const forUser = `${K} recommendations for user ${USER_ID}`;
    const userCards = await waitForHeading(page, forUser);
    assert.equal(address(page), `/?user=${USER_ID}${K_PARAM}`);
    const userIds = await contentIds(userCards);
    const userVersion = await page.getByTestId('model-version').innerText();
    const first = userCards.first();
    const picked = Number(await first.getAttribute('data-content-id'));
    await first.getByRole('button', { name: /^More like / }).click();
    await waitForHeading(page, /based on 1 movie you picked/);
    assert.equal(address(page), `/?history=${picked}${K_PARAM}`);

    await page.goBack();
    const restored = await waitForHeading(page, forUser);
    assert.equal(address(page), `/?user=${USER_ID}${K_PARAM}`);
    assert.ok(await page.getByRole('radio', { name: 'Known user' }).isChecked());
    assert.equal(await page.getByLabel('User id').inputValue(), USER_ID);
    assert.equal(await page.getByLabel('How many').inputValue(), String(K));
    // Asked again: the same list, unless a canary split sent the request to another version.
    if ((await page.getByTestId('model-version').innerText()) === userVersion) {
      assert.deepEqual(await contentIds(restored), userIds, 'the same recommendations as before');
    }

    await page.goBack();
    assert.equal(address(page), '/');
    const popularAgain = await contentIds(await assertPopular(page));
    if ((await page.getByTestId('model-version').innerText()) === popularVersion) {
      assert.deepEqual(popularAgain, popular, 'the same popular movies as before');
    }
    assert.equal(await page.getByLabel('User id').inputValue(), '');

    await page.goForward();
    await waitForHeading(page, forUser);
    assert.equal(await page.getByLabel('User id').inputValue(), USER_ID);
    assertClean();
  });

  it('a link it cannot read says so and shows the popular movies', async () => {
    const page = await openPage('/?user=abc');
    const problem = page.getByTestId('link-problem');
    await problem.waitFor();
    assert.match(await problem.innerText(), /user id “abc” is not a whole number/);
    await assertPopular(page);
    if (SCREENSHOT) await screenshot(page, withSuffix(SCREENSHOT, '-bad-link'));
    await page.goto(new URL('/?history=1,x', baseUrl).href);
    await page.getByTestId('link-problem').filter({ hasText: '“1,x”' }).waitFor();
    await assertPopular(page);
    assertClean();
  });

  it('shows the fallback notice for an unknown user', async () => {
    const page = await openPage('/');
    await askForUser(page, UNKNOWN_USER_ID);
    const cards = await waitForHeading(page, `${K} recommendations for user ${UNKNOWN_USER_ID}`);
    const notice = page.getByTestId('fallback-notice');
    await notice.waitFor();
    assert.match(await notice.innerText(), /Unknown user — showing popular movies/);
    await assertCards(cards);
    await assertVersionBadge(page);
    if (SCREENSHOT) await screenshot(page, withSuffix(SCREENSHOT, '-fallback'));
    assertClean();
  });

  it('"More like this" starts an anonymous history and refreshes the grid', async () => {
    const page = await openPage('/');
    const cards = await assertPopular(page);
    const title = (await cards.first().getByRole('heading').innerText()).trim();
    // Keyboard, not mouse: the control must be reachable without a pointer.
    await cards.first().getByRole('button', { name: /^More like / }).press('Enter');
    assert.ok(await page.getByRole('radio', { name: 'Anonymous' }).isChecked());
    const chips = page.getByRole('list', { name: 'Movies in your history' }).getByRole('listitem');
    assert.equal(await chips.count(), 1);
    assert.equal((await chips.first().innerText()).replace('×', '').trim(), title);
    // The results heading names the history only once the history's answer is on screen.
    const refreshed = await waitForHeading(page, /based on 1 movie you picked/);
    await assertCards(refreshed, DEFAULT_K);
    await assertVersionBadge(page);
    // Clearing the history goes back to the popular movies, not to an error.
    await page.getByRole('button', { name: 'Clear history' }).click();
    await assertPopular(page);
    assert.equal(address(page), '/?history=');
    assertClean();
  });
});
