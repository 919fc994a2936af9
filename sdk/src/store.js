/** First-party storage: JSON values in localStorage under "aura." keys, in memory when storage is blocked. */

const PREFIX = 'aura.';

/** Every key the SDK writes; `clear()` removes exactly these. */
export const KEYS = ['aid', 'sid', 'consent', 'queue', 'click'];

/**
 * Wrap a localStorage-like object (getItem/setItem/removeItem).
 * Reads never throw; a write that the browser refuses (private mode, quota) is kept in memory instead.
 */
export function createStore(ls) {
  const mem = {};
  const store = {
    get(key) {
      let raw;
      try {
        raw = ls.getItem(PREFIX + key);
      } catch {}
      try {
        return JSON.parse(raw ?? mem[key] ?? 'null');
      } catch {
        return null;
      }
    },
    set(key, value) {
      const raw = JSON.stringify(value);
      try {
        ls.setItem(PREFIX + key, raw);
        delete mem[key];
      } catch {
        mem[key] = raw;
      }
    },
    del(key) {
      delete mem[key];
      try {
        ls.removeItem(PREFIX + key);
      } catch {}
    },
    clear() {
      KEYS.forEach(store.del);
    },
  };
  return store;
}
