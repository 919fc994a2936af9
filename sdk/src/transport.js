/** HTTP to the gateway: JSON POST with a timeout, and sendBeacon for pages that are going away. */

/**
 * Create the transport for `apiUrl` (e.g. "https://api.example.com").
 * `post` resolves {status, data} (data is the parsed JSON body or null) and rejects on network error or timeout.
 * `beacon` queues a text/plain body (no CORS preflight) and returns whether the browser accepted it.
 */
export function createTransport(apiUrl, env) {
  const base = apiUrl.replace(/\/+$/, '');
  return {
    async post(path, body, timeout, keepalive = false) {
      const ctl = new AbortController();
      const timer = env.setTimeout(() => ctl.abort(), timeout);
      try {
        const res = await env.fetch(base + path, {
          method: 'POST',
          headers: { 'content-type': 'application/json' },
          body: JSON.stringify(body),
          credentials: 'omit',
          keepalive,
          signal: ctl.signal,
        });
        let data = null;
        try {
          data = await res.json();
        } catch {}
        return { status: res.status, data };
      } finally {
        env.clearTimeout(timer);
      }
    },
    beacon(path, body) {
      const nav = env.navigator;
      try {
        return !!(nav && nav.sendBeacon && nav.sendBeacon(base + path, JSON.stringify(body)));
      } catch {
        return false;
      }
    },
  };
}
