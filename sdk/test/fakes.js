// Fakes for the SDK's platform: clock and timers, fetch, localStorage, window/document/navigator.

/** A manual clock: timers fire only from `advance(ms)`, in due order. */
export class FakeClock {
  constructor(start = Date.UTC(2025, 9, 9, 14, 30)) {
    this.t = start;
    this.timers = new Map();
    this.nextId = 1;
  }

  now = () => this.t;

  setTimeout = (fn, ms = 0) => {
    const id = this.nextId++;
    this.timers.set(id, { at: this.t + ms, fn });
    return id;
  };

  clearTimeout = (id) => {
    this.timers.delete(id);
  };

  /** Move time forward, running every timer that falls due (including ones they schedule). */
  async advance(ms) {
    const end = this.t + ms;
    for (;;) {
      const due = [...this.timers].filter(([, t]) => t.at <= end).sort((a, b) => a[1].at - b[1].at)[0];
      if (!due) break;
      this.timers.delete(due[0]);
      this.t = due[1].at;
      due[1].fn();
      await settle();
    }
    this.t = end;
    await settle();
  }
}

/** Let pending promise callbacks run. */
export async function settle() {
  for (let i = 0; i < 20; i++) await new Promise((resolve) => setImmediate(resolve));
}

/** A fetch that records requests and answers from `responder(path, body)` -> {status, body} | Error. */
export function fakeFetch(responder = () => ({ status: 200, body: {} })) {
  const calls = [];
  const fetch = async (url, init) => {
    const path = new URL(url).pathname;
    const body = JSON.parse(init.body);
    calls.push({ url, path, body, init });
    if (init.signal && init.signal.aborted) throw Object.assign(new Error('aborted'), { name: 'AbortError' });
    const answer = await responder(path, body, init);
    if (answer instanceof Error) throw answer;
    return {
      status: answer.status,
      json: async () => (answer.body === undefined ? Promise.reject(new SyntaxError('no body')) : answer.body),
    };
  };
  return { fetch, calls };
}

/** A fetch that never answers until its signal aborts. */
export function hangingFetch() {
  const calls = [];
  const fetch = (url, init) =>
    new Promise((_, reject) => {
      calls.push({ url, body: JSON.parse(init.body) });
      init.signal.addEventListener('abort', () => reject(Object.assign(new Error('aborted'), { name: 'AbortError' })));
    });
  return { fetch, calls };
}

/** An in-memory localStorage that counts writes. */
export class MemoryStorage {
  data = new Map();
  writes = 0;
  getItem(k) {
    return this.data.has(k) ? this.data.get(k) : null;
  }
  setItem(k, v) {
    this.writes++;
    this.data.set(k, String(v));
  }
  removeItem(k) {
    this.data.delete(k);
  }
}

/** A storage that refuses everything, like a blocked localStorage. */
export const blockedStorage = {
  getItem() {
    throw new Error('SecurityError');
  },
  setItem() {
    throw new Error('SecurityError');
  },
  removeItem() {
    throw new Error('SecurityError');
  },
};

/** An element stand-in for click delegation: `closest` walks to the nearest element with the attribute. */
export function fakeItem(data) {
  const el = { dataset: { ...data }, closest: (sel) => (sel === '[data-aura-item]' ? el : null) };
  return el;
}

/** Window, document and navigator stand-ins that dispatch events. */
export function fakePage({ scrollHeight = 2000, innerHeight = 500, referrer = 'https://www.google.com/search?q=x' } = {}) {
  const window = new EventTarget();
  Object.assign(window, {
    location: { origin: 'https://shop.example', pathname: '/blog/', search: '?email=a@b.c' },
    scrollY: 0,
    innerHeight,
    screen: { width: 1920, height: 1080 },
    matchMedia: () => ({ matches: false }),
  });
  const document = new EventTarget();
  Object.assign(document, {
    referrer,
    title: 'Blog',
    visibilityState: 'visible',
    documentElement: { scrollHeight },
  });
  const beacons = [];
  const navigator = {
    onLine: true,
    sendBeacon: (url, body) => {
      beacons.push({ path: new URL(url).pathname, body: JSON.parse(body) });
      return true;
    },
  };
  const scrollTo = (y) => {
    window.scrollY = y;
    window.dispatchEvent(new Event('scroll'));
  };
  const hide = () => {
    document.visibilityState = 'hidden';
    document.dispatchEvent(new Event('visibilitychange'));
  };
  const show = () => {
    document.visibilityState = 'visible';
    document.dispatchEvent(new Event('visibilitychange'));
  };
  const click = (target) => {
    const ev = new Event('click');
    Object.defineProperty(ev, 'target', { value: target });
    document.dispatchEvent(ev);
  };
  return { window, document, navigator, beacons, scrollTo, hide, show, click };
}

/** Environment for `init({ env })` with deterministic ids. */
export function fakeEnv({ clock = new FakeClock(), fetch, storage = new MemoryStorage(), page = fakePage() } = {}) {
  let n = 0;
  return {
    clock,
    storage,
    page,
    env: {
      fetch,
      setTimeout: clock.setTimeout,
      clearTimeout: clock.clearTimeout,
      now: clock.now,
      randomId: () => `id${String(++n).padStart(3, '0')}`,
      window: page.window,
      document: page.document,
      navigator: page.navigator,
      localStorage: storage,
    },
  };
}
