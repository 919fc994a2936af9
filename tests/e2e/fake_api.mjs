// A tiny stand-in for the AURA gateway (development aid for browser.mjs --fake-api; the real run uses the gateway).
// It follows the public HTTP API: /v1/rank (403 without personalization consent), /v1/feedback, /v1/events, CORS.
import { createServer } from 'node:http';

const TOPICS = ['hiking', 'camping', 'running', 'climbing'];

function catalog(surface) {
  return Array.from({ length: 8 }, (_, i) => ({
    content_id: `${surface.split(/[._]/)[0]}-${i}`,
    title: `${surface} item ${i}`,
    url: `/content/${surface}/${i}`,
    topics: [TOPICS[i % TOPICS.length]],
  }));
}

const error = (res, status, code, message) => send(res, status, { error: { code, message, status } });

function send(res, status, body) {
  res.writeHead(status, { 'content-type': 'application/json' });
  res.end(JSON.stringify(body));
}

/** Start the fake API on a free loopback port; `log` holds the decisions, feedback and events it accepted. */
export async function startFakeApi() {
  const log = { decisions: [], feedback: [], events: [] };
  const clicks = new Map();
  const handlers = {
    '/v1/rank'(body, res) {
      const consent = body.user_ctx && body.user_ctx.consent;
      if (!Array.isArray(consent) || !consent.includes('personalization')) {
        return error(res, 403, 'consent_required', 'Ranking needs the "personalization" consent scope.');
      }
      const liked = clicks.get(body.user_ctx.anon_id) || new Set();
      const items = catalog(body.surface_id)
        .map((c, i) => ({ c, score: 0.5 - i * 0.03 + (liked.has(c.topics[0]) ? 0.4 : 0) }))
        .sort((a, b) => b.score - a.score)
        .slice(0, body.limit || 5)
        .map(({ c, score }, i) => ({
          content_id: c.content_id,
          score,
          reason: liked.has(c.topics[0]) ? `topic:${c.topics[0]}+clicked` : `popular+${body.user_ctx.device}`,
          metadata: { title: c.title, url: c.url, topics: c.topics },
          position: i + 1,
          propensity: 1,
          explored: false,
        }));
      const decision = {
        request_id: `req_${log.decisions.length + 1}`,
        surface: body.surface_id,
        items,
        segment: { id: liked.size ? 'seg_engaged' : 'seg_global', confidence: 0.8, intent: liked.size ? 'browse' : '' },
        experiment: { variant: 'treatment', holdout: false },
        policy_version: '2025-10-01',
        cache_ttl: 300,
        bundle_version: 'fake',
        seed: '1',
      };
      log.decisions.push({ ...decision, anon_id: body.user_ctx.anon_id });
      send(res, 200, decision);
    },
    '/v1/feedback'(body, res) {
      const decision = log.decisions.find((d) => d.request_id === body.request_id);
      if (!decision) return error(res, 404, 'not_found', `No decision ${body.request_id}.`);
      const item = decision.items.find((i) => i.content_id === body.item_id);
      if (!item) return error(res, 400, 'invalid_request', `item_id ${body.item_id} is not in the decision.`);
      const feedback_id = `fb_${log.feedback.length + 1}`;
      log.feedback.push({ ...body, feedback_id });
      if (body.reward.type === 'click') {
        if (!clicks.has(decision.anon_id)) clicks.set(decision.anon_id, new Set());
        clicks.get(decision.anon_id).add(item.metadata.topics[0]);
      }
      send(res, 200, { status: 'accepted', feedback_id });
    },
    '/v1/events'(body, res) {
      if (!Array.isArray(body.events) || !body.events.length || body.events.length > 500) {
        return error(res, 400, 'invalid_request', 'events must hold 1 to 500 events.');
      }
      log.events.push(...body.events);
      send(res, 202, { accepted: body.events.length });
    },
  };

  const server = createServer((req, res) => {
    if (req.headers.origin) {
      res.setHeader('access-control-allow-origin', req.headers.origin);
      res.setHeader('vary', 'Origin');
    }
    if (req.method === 'OPTIONS') {
      res.writeHead(204, { 'access-control-allow-methods': 'POST', 'access-control-allow-headers': 'Content-Type' });
      return res.end();
    }
    const handler = handlers[req.url];
    if (!handler || req.method !== 'POST') return error(res, 404, 'not_found', `No route matches ${req.method} ${req.url}.`);
    let raw = '';
    req.on('data', (chunk) => (raw += chunk));
    req.on('end', () => {
      let body;
      try {
        body = JSON.parse(raw);
      } catch {
        return error(res, 400, 'invalid_request', 'The request body is not valid JSON.');
      }
      handler(body, res);
    });
  });
  await new Promise((resolve) => server.listen(0, '127.0.0.1', resolve));
  return { url: `http://127.0.0.1:${server.address().port}`, log, close: () => server.close() };
}
