/** Event tracking: page views, impressions, clicks, dwell and scroll, batched to the gateway with retries. */

import { SESSION_MS } from './identity.js';

/** The gateway accepts at most 500 events per POST /v1/events. */
export const MAX_BATCH_EVENTS = 500;
/** Bytes per request, under the gateway's default body limit and the browser's keepalive/beacon quota (64 KiB). */
export const MAX_BODY_BYTES = 60000;
/** Seconds of dwell on a clicked item's page that count as full engagement (reward value 1). */
export const ENGAGED_SECONDS = 30;
/** Events and feedback are not urgent: a send may take this long before it counts as failed and is retried. */
const SEND_TIMEOUT_MS = 10000;
/** A click is attributed to the next page view if it loads within this time. */
const CLICK_ATTRIBUTION_MS = 60000;

const round = (x) => Math.round(x * 100) / 100;
const bytes = (value) => new TextEncoder().encode(JSON.stringify(value)).length;
const retryable = (status) => !status || status >= 500 || status === 408 || status === 429;

/** The origin of a URL (no path, query or fragment), or "" when there is none. */
export function origin(url) {
  try {
    return new URL(url).origin;
  } catch {
    return '';
  }
}

/**
 * Create the tracker. It keeps an outbox of events and feedback (at most `cfg.maxQueueSize`, oldest dropped),
 * flushes it every `cfg.flushInterval` ms or at `cfg.eventBatchSize` events, retries failures with exponential
 * backoff, beacons what is left when the page is hidden and keeps what could not be sent for the next page.
 */
export function createTracker(cfg, env, consent, identity, transport, store) {
  const { window: win, document: doc, navigator: nav } = env;
  const started = env.now();
  let outbox = [];
  let inflight = new Set();
  let timer = 0;
  let attempt = 0;
  let busy = false;
  let hidden = false;
  let depth = 0;
  let visibleSince = started;
  let viewed = false;
  let engaged = null;

  const online = () => !nav || nav.onLine !== false;
  const events = () => outbox.filter((m) => m.e).length;
  const schedule = (ms) => {
    if (!timer) timer = env.setTimeout(() => ((timer = 0), flush()), ms);
  };
  const stop = () => {
    env.clearTimeout(timer);
    timer = 0;
  };
  const push = (msg) => {
    outbox.push(msg);
    if (outbox.length > cfg.maxQueueSize) outbox.splice(0, outbox.length - cfg.maxQueueSize);
  };
  const remove = (msgs) => {
    outbox = outbox.filter((m) => !msgs.includes(m));
  };

  /** The next request from `msgs`: one feedback, or a batch of events within the gateway's limits. */
  function next(msgs) {
    const fb = msgs.find((m) => m.f);
    if (fb) return ['/v1/feedback', fb.f, [fb]];
    const batch = [];
    let size = 12;
    for (const m of msgs) {
      size += bytes(m.e) + 1;
      if (batch.length && (batch.length === MAX_BATCH_EVENTS || size > MAX_BODY_BYTES)) break;
      batch.push(m);
    }
    return ['/v1/events', { events: batch.map((m) => m.e) }, batch];
  }

  /** Send the outbox now, one request at a time; a retryable failure backs off and keeps the messages. */
  async function flush() {
    if (busy) return;
    busy = true;
    stop();
    try {
      let pending;
      while (online() && (pending = outbox.filter((m) => !inflight.has(m))).length) {
        const [path, body, msgs] = next(pending);
        const sending = inflight;
        msgs.forEach((m) => sending.add(m));
        let status = 0;
        try {
          status = (await transport.post(path, body, SEND_TIMEOUT_MS, true)).status;
        } catch {}
        msgs.forEach((m) => sending.delete(m));
        if (retryable(status)) {
          attempt++;
          schedule(Math.min(cfg.retryBase * 2 ** (attempt - 1), cfg.retryMax));
          return;
        }
        attempt = 0;
        remove(msgs);
      }
    } finally {
      busy = false;
    }
  }

  function track(type, fields = {}) {
    if (!consent.has('analytics')) return false;
    push({
      e: {
        event_id: env.randomId(),
        type,
        ts: new Date(env.now()).toISOString(),
        anon_id: identity.anonId(),
        session_id: identity.sessionId(),
        url: win ? win.location.origin + win.location.pathname : '',
        referrer: doc ? origin(doc.referrer) : '',
        ...fields,
        props: fields.props || {},
      },
    });
    if (events() >= cfg.eventBatchSize && !attempt && !hidden) flush();
    else schedule(cfg.flushInterval);
    return true;
  }

  function feedback(requestId, itemId, reward, context = {}) {
    if (!consent.has('personalization') || !requestId) return false;
    const value = reward.value ?? (reward.type === 'dismiss' ? 0 : 1);
    const timestamp = new Date(env.now()).toISOString();
    push({ f: { request_id: requestId, item_id: itemId, reward: { type: reward.type, value, timestamp }, context } });
    if (!attempt && !hidden) flush();
    return true;
  }

  const dwell = () => round((env.now() - started) / 1000);

  function measureScroll() {
    const el = doc.documentElement;
    depth = Math.max(depth, Math.min(1, (win.scrollY + win.innerHeight) / Math.max(el.scrollHeight, 1)));
  }

  function onClick(ev) {
    const el = ev.target && ev.target.closest && ev.target.closest('[data-aura-item]');
    if (!el) return;
    const { auraItem: item, auraRequest: request, auraSurface: surface } = el.dataset;
    const position = +el.dataset.auraPosition;
    feedback(request, item, { type: 'click' }, { position, dwell_time: dwell(), scroll_depth: round(depth) });
    track('click', { surface_id: surface, content_id: item, request_id: request, props: { position } });
    if (consent.has('personalization')) store.set('click', { request, item, position, t: env.now() });
  }

  /** Page hidden or unloading: report dwell and scroll, then beacon the outbox and keep what failed. */
  function onHidden() {
    if (hidden) return;
    hidden = true;
    const seconds = round((env.now() - visibleSince) / 1000);
    track('dwell', { props: { seconds } });
    track('scroll', { props: { depth: round(depth) } });
    if (engaged) {
      const d = dwell();
      feedback(
        engaged.request,
        engaged.item,
        { type: 'engagement', value: round(Math.min(1, d / ENGAGED_SECONDS)) },
        { position: engaged.position, dwell_time: d, scroll_depth: round(depth) },
      );
      engaged = null;
    }
    stop();
    const kept = [];
    let pending;
    while ((pending = outbox.filter((m) => !inflight.has(m))).length) {
      const [path, body, msgs] = next(pending);
      remove(msgs);
      if (!online() || !transport.beacon(path, body)) kept.push(...msgs);
    }
    if (kept.length) store.set('queue', kept.slice(-cfg.maxQueueSize));
  }

  function onVisibility() {
    if (doc.visibilityState === 'hidden') return onHidden();
    hidden = false;
    visibleSince = env.now();
    restore();
  }

  function page() {
    viewed = track('page_view', { props: { title: doc ? doc.title : '' } });
    return viewed;
  }

  /** Take back what an earlier hidden page could not send. */
  function restore() {
    const saved = store.get('queue');
    if (saved && consent.current().length) {
      store.del('queue');
      saved.forEach(push);
      schedule(0);
    }
  }

  const offConsent = consent.onChange((scopes, revoked) => {
    if (revoked) {
      stop();
      outbox = [];
      inflight = new Set();
      attempt = 0;
      engaged = null;
    }
    if (!viewed && cfg.pageView) page();
  });

  const listeners = [];
  const on = (target, type, fn, opts) => {
    if (!target) return;
    target.addEventListener(type, fn, opts);
    listeners.push(() => target.removeEventListener(type, fn, opts));
  };
  on(doc, 'click', onClick, true);
  on(doc, 'visibilitychange', onVisibility);
  on(win, 'pagehide', onHidden);
  on(win, 'scroll', measureScroll, { passive: true });
  on(win, 'online', flush);
  if (doc && win) measureScroll();
  const click = store.get('click');
  if (click && consent.has('personalization')) {
    store.del('click');
    if (env.now() - click.t < CLICK_ATTRIBUTION_MS) engaged = click;
  }
  restore();
  if (cfg.pageView) page();

  return {
    track,
    feedback,
    flush,
    page,
    /** Record one impression event per ranked item of a rank result. */
    impressions(result) {
      result.items.forEach((item, i) =>
        track('impression', {
          surface_id: result.surface,
          content_id: item.content_id,
          request_id: result.request_id,
          props: { position: item.position || i + 1 },
        }),
      );
    },
    destroy() {
      stop();
      offConsent();
      listeners.forEach((off) => off());
    },
  };
}
