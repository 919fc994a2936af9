/** AURA browser SDK: `init(options)` wires consent, ids, ranking and tracking for one page. */

import { createClient } from './client.js';
import { createConsent, oneTrust, SCOPES } from './consent.js';
import { createIdentity, randomHex } from './identity.js';
import { createStore } from './store.js';
import { createTracker } from './tracker.js';
import { createTransport } from './transport.js';

export { oneTrust, SCOPES };
export const version = '0.1.0';

/** Defaults; eventBatchSize and flushInterval mirror the server's EVENT_BATCH_SIZE and EVENT_FLUSH_INTERVAL (5 s). */
export const defaults = {
  apiUrl: 'http://127.0.0.1:8000',
  timeout: 1000,
  eventBatchSize: 1000,
  flushInterval: 5000,
  maxQueueSize: 1000,
  retryBase: 1000,
  retryMax: 60000,
  pageView: true,
};

/**
 * Start AURA on this page. Nothing is stored or sent until `consent.grant()` (or the `cmp` adapter) grants a scope.
 * Example: `const aura = init({ apiUrl: 'https://api.example.com' }); aura.consent.grant(['analytics']);`
 */
export function init(options = {}) {
  const g = globalThis;
  const env = {
    fetch: g.fetch && g.fetch.bind(g),
    setTimeout: g.setTimeout.bind(g),
    clearTimeout: g.clearTimeout.bind(g),
    now: Date.now,
    randomId: randomHex,
    window: g.window,
    document: g.document,
    navigator: g.navigator,
    ...options.env,
  };
  if (!('localStorage' in env)) {
    try {
      env.localStorage = g.localStorage;
    } catch {}
  }
  const cfg = { ...defaults, ...options };
  const store = createStore(env.localStorage);
  const consent = createConsent(store);
  const identity = createIdentity(store, env.now, env.randomId);
  const transport = createTransport(cfg.apiUrl, env);
  const tracker = createTracker(cfg, env, consent, identity, transport, store);
  const client = createClient(cfg, env, consent, identity, transport, tracker);
  const disconnect = cfg.cmp ? consent.connect(cfg.cmp) : () => {};
  return {
    consent,
    rank: client.rank,
    render: client.render,
    track: tracker.track,
    feedback: tracker.feedback,
    flush: tracker.flush,
    page: tracker.page,
    /** The visitor's ids, or null before consent (asking never creates them without consent). */
    ids: () => (consent.current().length ? { anonId: identity.anonId(), sessionId: identity.sessionId() } : null),
    destroy() {
      disconnect();
      tracker.destroy();
    },
  };
}
