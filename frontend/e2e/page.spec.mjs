/**
 * Browser test of the built page in headless Debian Chromium (playwright-core, no bundled
 * browser download).
 *
 *   BASE_URL=http://127.0.0.1:8080 SCREENSHOT=/tmp/page.png npm run test:e2e
 *
 * BASE_URL is where the page and `/v1/models/...:predict` are served on one origin (the local
 * ingress). Without it the test starts e2e/stub-server.mjs over ./dist (run `npm run build`
 * first). Assertions are structural — n cards == k, a non-empty version badge, the fallback
 * notice for an unknown user — so they hold for the real model server's data too.
 *
 * Environment:
 *   BASE_URL             page origin (default: start the stub)
 *   SCREENSHOT           where to save a full-page PNG of the known-user results (optional);
 *                        the unknown-user page goes next to it with a `-fallback` suffix
 *   E2E_USER_ID          user id to ask for (default 1); when set, the test also asserts
 *                        that this user gets personalised results (no fallback notice)
 *   E2E_UNKNOWN_USER_ID  a user id the model has never seen (default 999999999)
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
const SCREENSHOT = process.env.SCREENSHOT || '';

let baseUrl = process.env.BASE_URL || '';
let stub = null;
let context = null;
let userDataDir = null;
const pageErrors = [];

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

async function openPage() {
  const page = await context.newPage();
  page.setDefaultTimeout(TIMEOUT_MS);
  page.on('pageerror', (err) => pageErrors.push(err));
  await page.goto(baseUrl, { waitUntil: 'domcontentloaded' });
  await page.getByRole('heading', { name: 'Movie recommendations' }).waitFor();
  return page;
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

async function assertCards(cards) {
  assert.equal(await cards.count(), K, `expected ${K} recommendation cards`);
  for (let i = 0; i < K; i += 1) {
    const card = cards.nth(i);
    // A poster with alt text, or the titled placeholder: never a bare box.
    const picture = card.getByRole('img');
    assert.equal(await picture.count(), 1, `card ${i} has one poster or placeholder`);
    const name = (await picture.getAttribute('alt')) ?? (await picture.getAttribute('aria-label'));
    assert.ok(name && name.trim().length > 0, `card ${i} poster has a text alternative`);
    assert.ok((await card.getByRole('heading').innerText()).trim().length > 0, `card ${i} has a title`);
  }
}

async function assertVersionBadge(page) {
  const badge = page.getByTestId('model-version');
  await badge.waitFor();
  const text = (await badge.innerText()).trim();
  assert.match(text, /\bv\S+/, `version badge shows a version: ${JSON.stringify(text)}`);
  assert.doesNotMatch(text, /version unknown|vnull|vundefined/);
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

  it('shows k poster cards and the serving model version for a user', async () => {
    const page = await openPage();
    const cards = await askForUser(page, USER_ID);
    await assertCards(cards);
    await assertVersionBadge(page);
    if (explicitUser) {
      assert.equal(await page.getByTestId('fallback-notice').count(), 0, `user ${USER_ID} should be known to the model`);
    }
    await screenshot(page, SCREENSHOT);
    assert.deepEqual(pageErrors, []);
  });

  it('shows the fallback notice for an unknown user', async () => {
    const page = await openPage();
    const cards = await askForUser(page, UNKNOWN_USER_ID);
    const notice = page.getByTestId('fallback-notice');
    await notice.waitFor();
    assert.match(await notice.innerText(), /Unknown user — showing popular movies/);
    await assertCards(cards);
    await assertVersionBadge(page);
    if (SCREENSHOT) await screenshot(page, withSuffix(SCREENSHOT, '-fallback'));
    assert.deepEqual(pageErrors, []);
  });

  it('"More like this" starts an anonymous history and refreshes the grid', async () => {
    const page = await openPage();
    const cards = await askForUser(page, UNKNOWN_USER_ID);
    await cards.first().waitFor();
    const title = (await cards.first().getByRole('heading').innerText()).trim();
    // Keyboard, not mouse: the control must be reachable without a pointer.
    await cards.first().getByRole('button', { name: /^More like / }).press('Enter');
    assert.ok(await page.getByRole('radio', { name: 'Anonymous' }).isChecked());
    const chips = page.getByRole('list', { name: 'Movies in your history' }).getByRole('listitem');
    assert.equal(await chips.count(), 1);
    assert.equal((await chips.first().innerText()).replace('×', '').trim(), title);
    // The results heading names the history only once the history's answer is on screen.
    await page.getByRole('heading', { name: /based on 1 movie you picked/ }).waitFor();
    const refreshed = await waitForResults(page);
    await assertCards(refreshed);
    await assertVersionBadge(page);
    assert.deepEqual(pageErrors, []);
  });
});
