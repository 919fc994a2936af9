/** Ranking: POST /v1/rank with a timeout, falling back to the page's own content so a page never goes blank. */

import { origin } from './tracker.js';

/** Same buckets as the server's `aura.context.time_of_day`. */
export function timeOfDay(hour) {
  if (hour >= 5 && hour < 12) return 'morning';
  if (hour >= 12 && hour < 17) return 'afternoon';
  if (hour >= 17 && hour < 22) return 'evening';
  return 'night';
}

/** Device class from the pointer and the screen: mobile, tablet or desktop. */
export function deviceClass(win) {
  if (!win || !win.matchMedia || !win.matchMedia('(pointer: coarse)').matches) return 'desktop';
  return Math.min(win.screen.width, win.screen.height) >= 600 ? 'tablet' : 'mobile';
}

/** Only http(s) and relative URLs are rendered as links. */
const safeUrl = (url) => (url && /^(https?:|\/|\.|[^:]*$)/i.test(url) ? url : '#');

/** The default item renderer: a link with the item's title, its reason as the tooltip. */
export function renderLink(item, doc) {
  const a = doc.createElement('a');
  a.href = safeUrl(item.metadata && item.metadata.url);
  a.textContent = (item.metadata && item.metadata.title) || item.content_id;
  a.title = item.reason || '';
  return a;
}

/** Create `rank` and `render`; ranking needs the "personalization" scope and records impressions through `tracker`. */
export function createClient(cfg, env, consent, identity, transport, tracker) {
  const doc = env.document;

  /**
   * Replace the children of `container` (element or selector) with the ranked items, each marked with
   * data-aura-* attributes that click tracking reads. A fallback result leaves the page's content untouched.
   */
  function render(container, result, renderItem = (item) => renderLink(item, doc)) {
    const el = typeof container === 'string' ? doc.querySelector(container) : container;
    if (!el) return;
    if (result.fallback) {
      el.setAttribute('data-aura-fallback', result.error);
      return;
    }
    const tpl = doc.createElement('template');
    const nodes = result.items.map((item, i) => {
      let node = renderItem(item, i, result);
      if (typeof node === 'string') {
        tpl.innerHTML = node.trim();
        node = tpl.content.firstElementChild;
      }
      Object.assign(node.dataset, {
        auraItem: item.content_id,
        auraPosition: item.position || i + 1,
        auraRequest: result.request_id,
        auraSurface: result.surface,
      });
      return node;
    });
    el.replaceChildren(...nodes);
    el.removeAttribute('data-aura-fallback');
  }

  function userCtx(options) {
    const win = env.window;
    return {
      anon_id: identity.anonId(),
      session_id: identity.sessionId(),
      device: cfg.device || deviceClass(win),
      referrer: doc ? origin(doc.referrer) : '',
      page_type: options.pageType || cfg.pageType || '',
      consent: consent.current(),
      geo: cfg.geo,
    };
  }

  /**
   * Rank `surface`; never rejects. On success the result is the API's response plus `fallback: false`;
   * on no consent, timeout, network or API error, or an empty ranking it is
   * {surface, items: options.fallback || [], request_id: null, fallback: true, error}.
   */
  async function rank(surface, options = {}) {
    const fallback = (error) => {
      const result = { surface, items: options.fallback || [], request_id: null, fallback: true, error };
      if (options.container) render(options.container, result);
      return result;
    };
    if (!consent.has('personalization')) return fallback('consent');
    const context = { time_of_day: timeOfDay(new Date(env.now()).getHours()) };
    Object.entries(options.context || {}).forEach(([k, v]) => (context[k] = String(v)));
    const body = {
      surface_id: surface,
      user_ctx: userCtx(options),
      candidates: options.candidates,
      limit: options.limit,
      context,
    };
    let res;
    try {
      res = await transport.post('/v1/rank', body, options.timeout ?? cfg.timeout);
    } catch (err) {
      return fallback(err && err.name === 'AbortError' ? 'timeout' : 'network');
    }
    const data = res.data;
    if (res.status !== 200 || !data || !Array.isArray(data.items)) {
      return fallback((data && data.error && data.error.code) || 'http_' + res.status);
    }
    if (!data.items.length) return fallback('empty');
    const result = { ...data, surface, fallback: false };
    if (options.container) render(options.container, result, options.render);
    tracker.impressions(result);
    return result;
  }

  return { rank, render };
}
