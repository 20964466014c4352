/**
 * Who is asking, and what they did with the answer: the assignment key and the page's feedback.
 *
 * Every predict carries `X-User-Id` — the known user id from `?user=`, else an anonymous
 * `anon-<uuid>` kept in localStorage — so that during a canary the ingress keeps this visitor
 * on one arm. The cards shown (impressions, once per result set) and the cards clicked (the
 * poster, "More like this") go to `POST /events/feedback` with the prediction's request id,
 * content id, position, model version and the same user key. Feedback is best effort: a
 * failure is swallowed and never reaches the page.
 */

export const FEEDBACK_URL = '/events/feedback';
export const ANON_KEY_STORAGE = 'movie-mlops.anonymous-id';
/** The sink takes 1..100 events per request. */
export const MAX_EVENTS_PER_POST = 100;

let memoryAnonId = null; // when localStorage is unavailable (privacy mode): this page view only

function newUuid(randomUUID) {
  if (randomUUID) return randomUUID();
  if (globalThis.crypto?.randomUUID) return globalThis.crypto.randomUUID();
  // very old browsers: 122 random bits from getRandomValues in the uuid4 layout
  const b = globalThis.crypto.getRandomValues(new Uint8Array(16));
  b[6] = (b[6] & 0x0f) | 0x40;
  b[8] = (b[8] & 0x3f) | 0x80;
  const h = [...b].map((x) => x.toString(16).padStart(2, '0')).join('');
  return `${h.slice(0, 8)}-${h.slice(8, 12)}-${h.slice(12, 16)}-${h.slice(16, 20)}-${h.slice(20)}`;
}

/**
 * This browser's anonymous id, `anon-<uuid>`: created once, then read back from localStorage.
 *
 * @param {{storage?: Storage | null, randomUUID?: () => string}} [options]
 */
export function anonymousId({ storage, randomUUID } = {}) {
  let store = storage;
  if (store === undefined) {
    try {
      store = globalThis.localStorage ?? null;
    } catch {
      store = null; // access itself can throw (blocked storage)
    }
  }
  try {
    const saved = store?.getItem(ANON_KEY_STORAGE);
    if (typeof saved === 'string' && /^anon-[0-9a-f-]{36}$/.test(saved)) return saved;
  } catch {
    // unreadable storage: fall through to a fresh id
  }
  const id = memoryAnonId ?? `anon-${newUuid(randomUUID)}`;
  memoryAnonId = id;
  try {
    store?.setItem(ANON_KEY_STORAGE, id);
  } catch {
    // full or blocked storage: the id lives for this page view
  }
  return id;
}

/** The assignment key of a query: the known user's id, else this browser's anonymous id. */
export function userKey(userId, anonId) {
  return userId === undefined || userId === null ? anonId : String(userId);
}

/**
 * Feedback events for cards of one prediction.
 *
 * @param {'impression' | 'click'} type
 * @param {{requestId: string | null, modelVersion: string | null}} prediction
 * @param {string} user the assignment key the prediction was asked with
 * @param {{contentId: number, position: number}[]} cards
 */
export function feedbackEvents(type, prediction, user, cards) {
  if (!prediction?.requestId) return []; // nothing to join the feedback to
  return cards.map(({ contentId, position }) => ({
    type,
    request_id: prediction.requestId,
    item_id: contentId,
    position,
    model_version: prediction.modelVersion ?? 'unknown',
    user_id: user,
  }));
}

/**
 * Post events in batches of at most 100. Resolves true when every batch was accepted; never
 * rejects (feedback must not break the page).
 *
 * @param {object[]} events
 * @param {{fetch?: typeof fetch}} [options]
 */
export async function sendFeedback(events, { fetch: fetchImpl = globalThis.fetch } = {}) {
  let ok = true;
  for (let i = 0; i < events.length; i += MAX_EVENTS_PER_POST) {
    try {
      const res = await fetchImpl(FEEDBACK_URL, {
        method: 'POST',
        headers: { 'Content-Type': 'application/json' },
        body: JSON.stringify({ events: events.slice(i, i + MAX_EVENTS_PER_POST) }),
        keepalive: true, // a click that navigates away is still delivered
      });
      ok = ok && Boolean(res?.ok);
    } catch {
      ok = false;
    }
  }
  return ok;
}
