// The demo site's glue: one AURA instance per page, a consent banner, four ranked surfaces and their reasons.
'use strict';

(() => {
  const params = new URLSearchParams(location.search);
  const meta = document.querySelector('meta[name="aura-api"]');
  const apiOverride = params.get('api');
  const apiUrl = apiOverride || (meta && meta.content) || location.origin;
  const isItemPage = !!document.getElementById('item-title');
  const geoMeta = document.querySelector('meta[name="aura-geo"]');
  const [country, region] = (params.get('geo') || (geoMeta && geoMeta.content) || '').split('-');

  const aura = Aura.init({
    apiUrl,
    pageType: isItemPage ? 'article' : 'index',
    geo: country ? (region ? { country, region } : { country }) : undefined,
  });
  window.auraDemo = aura;

  const escape = (s) =>
    String(s ?? '').replace(/[&<>"']/g, (c) => ({ '&': '&amp;', '<': '&lt;', '>': '&gt;', '"': '&quot;', "'": '&#39;' })[c]);

  /** A same-site link that keeps the ?api= override. */
  function withApi(href, extra = {}) {
    const url = new URL(href, location.href);
    Object.entries(extra).forEach(([k, v]) => url.searchParams.set(k, v));
    if (apiOverride) url.searchParams.set('api', apiOverride);
    return url.pathname.split('/').pop() + url.search;
  }
  document.querySelectorAll('a[data-keep-api]').forEach((a) => (a.href = withApi(a.getAttribute('href'))));

  const itemLink = (item, result) =>
    withApi('item.html', {
      id: item.content_id,
      t: (item.metadata && item.metadata.title) || item.content_id,
      r: item.reason || '',
      s: result.surface,
      q: result.request_id,
      p: item.position,
    });

  const why = (item) =>
    `<span class="why">Why: ${escape(item.reason || 'ranked for you')}</span>` +
    (item.explored ? ' <span class="badge">exploring</span>' : '');
  const title = (item) => escape((item.metadata && item.metadata.title) || item.content_id);

  const renderers = {
    hero: (item, i, result) =>
      `<article class="card hero-item"><h3><a href="${escape(itemLink(item, result))}">${title(item)}</a></h3>` +
      `<p>${why(item)}</p><p class="meta">${escape(((item.metadata && item.metadata.topics) || []).join(', '))}</p></article>`,
    post: (item, i, result) =>
      `<li class="post"><a href="${escape(itemLink(item, result))}">${title(item)}</a> ${why(item)}</li>`,
    product: (item, i, result) =>
      `<article class="card product"><h3><a href="${escape(itemLink(item, result))}">${title(item)}</a></h3><p>${why(item)}</p></article>`,
    promo: (item, i, result) =>
      `<div class="promo-item"><a href="${escape(itemLink(item, result))}">${title(item)}</a> ${why(item)}</div>`,
  };

  const FALLBACK_REASONS = {
    consent: 'default content: no personalization consent',
    timeout: 'default content: the API did not answer in time',
    network: 'default content: the API is unreachable',
    empty: 'default content: nothing eligible to rank',
  };

  const panel = document.getElementById('aura-panel');
  function showPanel(result) {
    if (!panel) return;
    const ids = aura.ids();
    const rows = [
      ['Consent', aura.consent.current().join(', ') || 'none'],
      ['Visitor', ids ? ids.anonId : '(no id before consent)'],
      ['Segment', result && result.segment ? `${result.segment.id} (intent ${result.segment.intent || 'none'}, ` +
        `${Math.round(result.segment.confidence * 100)}% confident)` : 'none'],
      ['Experiment', result && result.experiment ? result.experiment.variant + (result.experiment.holdout ? ' (holdout)' : '') : 'none'],
      ['Bundle', (result && result.bundle_version) || 'none'],
      ['API', apiUrl],
    ];
    panel.innerHTML = rows.map(([k, v]) => `<dt>${escape(k)}</dt><dd>${escape(v)}</dd>`).join('');
  }

  const slots = [...document.querySelectorAll('[data-surface]')].map((el) => ({ el, html: el.innerHTML }));

  async function rankAll(restoreDefaults) {
    const results = await Promise.all(
      slots.map(async ({ el, html }) => {
        if (restoreDefaults) el.innerHTML = html;
        const result = await aura.rank(el.dataset.surface, {
          limit: Number(el.dataset.limit),
          container: el,
          render: renderers[el.dataset.render],
        });
        const status = document.querySelector(`[data-status-for="${el.id}"]`);
        if (status) {
          status.textContent = result.fallback
            ? `(${FALLBACK_REASONS[result.error] || 'default content: ' + result.error})`
            : `(personalized for ${result.segment ? result.segment.id : 'you'})`;
        }
        return result;
      }),
    );
    showPanel(results.find((r) => !r.fallback));
    document.body.dataset.auraReady = 'true';
  }

  // Consent banner: shown until the visitor chooses; nothing is stored for "Decline".
  const banner = document.getElementById('consent-banner');
  const revokeButton = banner.querySelector('[data-consent="revoke"]');
  const showBanner = (open) => {
    banner.hidden = !open;
    revokeButton.hidden = !aura.consent.current().length;
  };
  banner.addEventListener('click', (ev) => {
    const choice = ev.target.dataset && ev.target.dataset.consent;
    if (!choice) return;
    if (choice === 'all') aura.consent.grant(['analytics', 'personalization']);
    if (choice === 'analytics') aura.consent.grant(['analytics']);
    if (choice === 'revoke') aura.consent.revoke();
    showBanner(false);
  });
  document.getElementById('privacy-settings').addEventListener('click', () => showBanner(true));
  aura.consent.onChange((scopes, revoked) => (isItemPage ? showPanel() : rankAll(revoked)));
  showBanner(!aura.consent.current().length);

  if (isItemPage) {
    document.getElementById('item-title').textContent = params.get('t') || params.get('id') || 'Item';
    document.getElementById('item-surface').textContent = params.get('s') ? `Ranked on ${params.get('s')}` : '';
    document.getElementById('item-why').textContent = params.get('r') ? `Why you saw it: ${params.get('r')}` : '';
    document.getElementById('convert').addEventListener('click', () => {
      const [request, item, position] = [params.get('q'), params.get('id'), Number(params.get('p')) || undefined];
      aura.feedback(request, item, { type: 'conversion' }, { position });
      aura.track('conversion', { request_id: request, content_id: item, surface_id: params.get('s') || undefined });
      document.getElementById('converted').hidden = false;
    });
    document.body.dataset.auraReady = 'true';
  } else {
    rankAll(false);
  }
})();
