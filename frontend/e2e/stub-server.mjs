/**
 * A tiny deterministic stand-in for the local ingress, for developing the page and its
 * browser test without the real stack: serves `dist/`, `/config.json`, placeholder posters
 * and `POST /v1/models/<name>:predict` in the exact V1 contract shape.
 *
 * The browser test must not rely on anything here beyond the contract: the real suite runs it
 * against the real ingress and model server.
 *
 *   node e2e/stub-server.mjs            # port 4173 (PORT to change), serves ./dist
 */
import { createServer } from 'node:http';
import { readFile } from 'node:fs/promises';
import { extname, join, normalize, resolve } from 'node:path';
import { randomUUID } from 'node:crypto';
import { fileURLToPath } from 'node:url';

export const STUB_MODEL_NAME = 'movie-recommender';
export const STUB_MODEL_VERSION = '3';
const KNOWN_USERS = { min: 1, max: 100 };
const CATALOG_SIZE = 60;

const TYPES = {
  '.html': 'text/html; charset=utf-8',
  '.js': 'text/javascript; charset=utf-8',
  '.css': 'text/css; charset=utf-8',
  '.json': 'application/json',
  '.svg': 'image/svg+xml',
  '.png': 'image/png',
};

const ADJECTIVES = ['Silent', 'Crimson', 'Last', 'Golden', 'Hidden', 'Electric', 'Distant', 'Broken'];
const NOUNS = ['Harbor', 'Signal', 'Orchard', 'Frontier', 'Mirror', 'Comet', 'Kingdom', 'Tide'];

/** Movie `id` (1..60): every 5th has no poster, every 13th a poster path that 404s. */
function movie(id) {
  let posterPath = `/stub-${id}.svg`;
  if (id % 5 === 0) posterPath = null;
  else if (id % 13 === 0) posterPath = `/missing-${id}.svg`;
  return {
    content_id: id,
    title: `The ${ADJECTIVES[id % ADJECTIVES.length]} ${NOUNS[(id * 3) % NOUNS.length]}`,
    poster_path: posterPath,
    release_date: `${1980 + (id % 45)}-0${1 + (id % 9)}-15`,
    vote_average: Math.round((5 + ((id * 37) % 45) / 10) * 10) / 10,
  };
}

// What the ingress and the cluster's nginx send with every response (localstack/ingress.py
// `security_headers`); the stub serves its posters itself, so images come from 'self' only.
const SECURITY_HEADERS = {
  'Content-Security-Policy': [
    "default-src 'none'",
    "script-src 'self'",
    "style-src 'self'",
    "img-src 'self'",
    "connect-src 'self'",
    "base-uri 'none'",
    "form-action 'self'",
    "frame-ancestors 'none'",
  ].join('; '),
  'X-Content-Type-Options': 'nosniff',
  'X-Frame-Options': 'DENY',
  'Referrer-Policy': 'no-referrer',
};

function sendJson(res, status, body, headers = {}) {
  res.writeHead(status, { 'Content-Type': 'application/json', ...headers });
  res.end(JSON.stringify(body));
}

/**
 * Deterministic ranking: a rotation of the catalog seeded by the user or history. Refuses what
 * the real predictor refuses (model_server/request.py), with its status: no user, no history
 * and no `popular` (400), `popular` with a user or history (400), a history of unknown ids (422).
 */
function recommend(instance, i) {
  const { k } = instance;
  if (!Number.isInteger(k) || k < 1 || k > 100) {
    return { status: 400, error: `instances[${i}].k must be an integer in 1..100` };
  }
  const hasUser = instance.user_id !== undefined && instance.user_id !== null;
  let seed;
  let fallback = false;
  let reason = null;
  let exclude = new Set();
  if (instance.popular === true) {
    if (hasUser || (instance.history !== undefined && instance.history !== null)) {
      return { status: 400, error: `instances[${i}] asks for popular movies: it takes no user_id or history` };
    }
    fallback = true;
    reason = 'no user_id or history given: popularity ranking';
  } else if (hasUser) {
    const u = instance.user_id;
    if (!Number.isInteger(u) || u < 0) {
      return { status: 400, error: `instances[${i}].user_id must be a non-negative integer or null` };
    }
    if (u >= KNOWN_USERS.min && u <= KNOWN_USERS.max) seed = u;
    else {
      fallback = true;
      reason = `unknown user ${u} and no history: popularity ranking`;
    }
  } else {
    const history = instance.history ?? [];
    if (!Array.isArray(history) || !history.every((id) => Number.isInteger(id) && id >= 0)) {
      return { status: 400, error: `instances[${i}].history must be a list of at most 1000 content ids or null` };
    }
    if (history.length === 0) {
      return { status: 400, error: `instances[${i}] needs a user_id, a non-empty history or popular: true` };
    }
    exclude = new Set(history);
    const known = history.filter((id) => id >= 1 && id <= CATALOG_SIZE);
    if (known.length === 0) {
      const unknown = history.join(', ');
      return { status: 422, error: `instances[${i}].history holds no content id the model knows (unknown: [${unknown}])` };
    }
    seed = known.reduce((a, b) => a + b, 0);
  }
  const ids = [];
  for (let j = 0; ids.length < Math.min(k, CATALOG_SIZE - exclude.size) && j < CATALOG_SIZE; j += 1) {
    const id = fallback ? j + 1 : ((seed * 17 + j * 11) % CATALOG_SIZE) + 1;
    if (!exclude.has(id) && !ids.includes(id)) ids.push(id);
  }
  const scores = ids.map((_, j) => (fallback ? 100 - j * 3 : Math.round((0.95 - j * 0.03) * 1000) / 1000));
  return {
    content_ids: ids,
    scores,
    fallback,
    reason,
    items: ids.map((id, j) => ({ ...movie(id), score: scores[j] })),
  };
}

function posterSvg(name) {
  const hue = [...name].reduce((a, c) => a + c.charCodeAt(0), 0) % 360;
  return `<svg xmlns="http://www.w3.org/2000/svg" width="342" height="513" viewBox="0 0 342 513">
<rect width="342" height="513" fill="hsl(${hue} 45% 35%)"/>
<circle cx="171" cy="200" r="90" fill="hsl(${(hue + 40) % 360} 60% 60%)"/>
<text x="171" y="420" font-family="sans-serif" font-size="30" fill="#fff" text-anchor="middle">${name}</text>
</svg>`;
}

async function readBody(req) {
  const chunks = [];
  for await (const chunk of req) chunks.push(chunk);
  return Buffer.concat(chunks).toString('utf8');
}

/**
 * Start the stub. Resolves with `{ url, close }`.
 *
 * @param {{port?: number, host?: string, distDir?: string, predictDelayMs?: number}} [options]
 */
export async function startStubServer({
  port = 0,
  host = '127.0.0.1',
  distDir = fileURLToPath(new URL('../dist', import.meta.url)),
  predictDelayMs = 150,
} = {}) {
  const root = resolve(distDir);
  const server = createServer(async (req, res) => {
    const url = new URL(req.url, 'http://stub');
    for (const [name, value] of Object.entries(SECURITY_HEADERS)) res.setHeader(name, value);
    try {
      if (url.pathname === '/config.json') {
        return sendJson(res, 200, { posterBaseUrl: '/posters', modelName: STUB_MODEL_NAME });
      }
      const poster = /^\/posters\/w342\/(stub-\d+)\.svg$/.exec(url.pathname);
      if (poster) {
        res.writeHead(200, { 'Content-Type': TYPES['.svg'] });
        return res.end(posterSvg(poster[1]));
      }
      if (url.pathname.startsWith('/posters/')) {
        res.writeHead(404);
        return res.end();
      }
      if (url.pathname === '/events/feedback' && req.method === 'POST') {
        await readBody(req); // the event sink's route: accepted, not kept
        return sendJson(res, 202, { accepted: true });
      }
      const predictMatch = /^\/v1\/models\/([^/]+):predict$/.exec(url.pathname);
      if (predictMatch) {
        if (req.method !== 'POST') return sendJson(res, 405, { error: 'use POST' });
        if (decodeURIComponent(predictMatch[1]) !== STUB_MODEL_NAME) {
          return sendJson(res, 404, { error: `Model with name ${predictMatch[1]} does not exist.` });
        }
        let body;
        try {
          body = JSON.parse(await readBody(req));
        } catch {
          return sendJson(res, 400, { error: 'request body is not valid JSON' });
        }
        if (!Array.isArray(body?.instances) || body.instances.length === 0) {
          return sendJson(res, 400, { error: 'instances must be a non-empty list' });
        }
        const predictions = [];
        for (const [i, instance] of body.instances.entries()) {
          const p = recommend({ k: 10, ...instance }, i);
          if (p.error) return sendJson(res, p.status, { error: p.error });
          predictions.push(p);
        }
        await new Promise((r) => setTimeout(r, predictDelayMs)); // let the loading state show
        return sendJson(
          res,
          200,
          { model_name: STUB_MODEL_NAME, model_version: STUB_MODEL_VERSION, predictions },
          { 'X-Model-Version': STUB_MODEL_VERSION, 'X-Request-Id': randomUUID().replaceAll('-', '') },
        );
      }
      // Static files from dist/, with index.html for anything else (SPA fallback).
      const rel = normalize(decodeURIComponent(url.pathname)).replace(/^(\.\.[/\\])+/, '');
      let file = join(root, rel);
      if (!file.startsWith(root) || rel === '/' || !extname(file)) file = join(root, 'index.html');
      const data = await readFile(file).catch(() => null);
      if (!data) {
        res.writeHead(404);
        return res.end();
      }
      res.writeHead(200, { 'Content-Type': TYPES[extname(file)] ?? 'application/octet-stream' });
      return res.end(data);
    } catch (err) {
      return sendJson(res, 500, { error: String(err) });
    }
  });
  await new Promise((ok) => server.listen(port, host, ok));
  const { port: bound } = server.address();
  return {
    url: `http://${host}:${bound}`,
    close: () => new Promise((ok) => server.close(ok)),
  };
}

if (process.argv[1] && resolve(process.argv[1]) === fileURLToPath(import.meta.url)) {
  const { url } = await startStubServer({ port: Number(process.env.PORT ?? 4173) });
  console.log(`stub ingress serving dist/ at ${url}`);
}
