/** First-party anonymous visitor id and session id; callers create them only after consent. */

/** A session ends after 30 minutes without activity. */
export const SESSION_MS = 30 * 60 * 1000;

/** 24 random hex digits from the platform's crypto source. */
export function randomHex() {
  return Array.from(crypto.getRandomValues(new Uint8Array(12)), (b) => b.toString(16).padStart(2, '0')).join('');
}

/** Ids kept in `store`: "anon_<hex>" for the visitor, "sess_<hex>" for a session that each use extends. */
export function createIdentity(store, now, random = randomHex) {
  return {
    anonId() {
      let id = store.get('aid');
      if (!id) store.set('aid', (id = 'anon_' + random()));
      return id;
    },
    sessionId() {
      const t = now();
      let s = store.get('sid');
      if (!s || !(t - s.t < SESSION_MS)) s = { id: 'sess_' + random() };
      s.t = t;
      store.set('sid', s);
      return s.id;
    },
  };
}
