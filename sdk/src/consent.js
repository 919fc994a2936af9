/** Consent state: nothing is tracked, stored or sent before the visitor grants a scope. */

/** The scopes the SDK understands: events need "analytics", ranking and feedback need "personalization". */
export const SCOPES = ['analytics', 'personalization'];

/**
 * Create the consent state, restored from the scopes stored at the last grant.
 * Granting stores the scopes; any revoke wipes every AURA key (ids, queued events) and then stores what is left.
 * Listeners get (scopes, revoked).
 */
export function createConsent(store) {
  let scopes = store.get('consent') || [];
  const listeners = new Set();
  const set = (next, revoked) => {
    next = SCOPES.filter((s) => next.includes(s));
    if (!revoked && next.join() === scopes.join()) return;
    scopes = next;
    if (revoked) store.clear();
    if (scopes.length) store.set('consent', scopes);
    listeners.forEach((fn) => fn(scopes.slice(), revoked));
  };
  return {
    current: () => scopes.slice(),
    has: (scope) => scopes.includes(scope),
    grant: (list = SCOPES) => set(scopes.concat(list), false),
    revoke: (list = SCOPES) => set(scopes.filter((s) => !list.includes(s)), true),
    onChange(fn) {
      listeners.add(fn);
      return () => listeners.delete(fn);
    },
    /** Follow a consent platform: its answer replaces the SDK's scopes now and on every change. */
    connect(adapter) {
      const apply = (list) => list && set(list, scopes.some((s) => !list.includes(s)));
      apply(adapter.read());
      return adapter.subscribe ? adapter.subscribe(apply) : () => {};
    },
  };
}

/**
 * Adapter for OneTrust: maps its active category ids to AURA scopes.
 * Reads `window.OnetrustActiveGroups` (",C0001,C0002,") and follows the `OneTrustGroupsUpdated` event.
 */
export function oneTrust(groups = { C0002: 'analytics', C0004: 'personalization' }, win = globalThis) {
  const scopes = (active) => Object.keys(groups).filter((g) => active.includes(g)).map((g) => groups[g]);
  return {
    read: () => (win.OnetrustActiveGroups == null ? null : scopes(win.OnetrustActiveGroups.split(','))),
    subscribe(fn) {
      const handler = (ev) => fn(scopes(ev.detail || []));
      win.addEventListener('OneTrustGroupsUpdated', handler);
      return () => win.removeEventListener('OneTrustGroupsUpdated', handler);
    },
  };
}
