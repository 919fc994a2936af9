import assert from 'node:assert/strict';
import { test } from 'node:test';
import { deviceClass, renderLink, timeOfDay } from '../src/client.js';
import { init } from '../src/index.js';
import { fakeEnv, fakeFetch, hangingFetch } from './fakes.js';

const RANKED = {
  request_id: 'req_1',
  surface: 'homepage.hero',
  items: [
    { content_id: 'c1', score: 0.8, reason: 'intent:learn', metadata: { title: 'One', url: '/one' }, position: 1 },
    { content_id: 'c2', score: 0.7, reason: 'popular', metadata: { title: 'Two', url: '/two' }, position: 2 },
  ],
  segment: { id: 'seg_learn_mobile_new', confidence: 0.85, intent: 'learn' },
  experiment: { variant: 'treatment', holdout: false },
  policy_version: '2025-10-01',
  cache_ttl: 300,
  bundle_version: 'v001',
  seed: '7',
};
const FALLBACK = [{ content_id: 'default-hero', metadata: { title: 'Welcome' } }];

function start(responder, options = {}) {
  const { fetch, calls } = typeof responder === 'function' ? fakeFetch(responder) : responder;
  const setup = fakeEnv({ fetch });
  const aura = init({ apiUrl: 'https://api.example/', pageView: false, ...options, env: setup.env });
  return { aura, calls, ...setup };
}

test('before consent rank falls back without any request or storage write', async () => {
  const { aura, calls, storage } = start(() => ({ status: 200, body: RANKED }));
  const result = await aura.rank('homepage.hero', { fallback: FALLBACK });
  assert.deepEqual(result, {
    surface: 'homepage.hero',
    items: FALLBACK,
    request_id: null,
    fallback: true,
    error: 'consent',
  });
  assert.equal(calls.length, 0);
  assert.equal(storage.writes, 0);
  assert.equal(aura.ids(), null);
});

test('analytics consent alone does not rank', async () => {
  const { aura, calls } = start(() => ({ status: 200, body: RANKED }));
  aura.consent.grant(['analytics']);
  assert.equal((await aura.rank('homepage.hero')).error, 'consent');
  assert.equal(calls.length, 0);
});

test('rank posts the surface, the visitor context and the consent list', async () => {
  const { aura, calls } = start(() => ({ status: 200, body: RANKED }), { geo: { country: 'US', region: 'CA' } });
  aura.consent.grant(['personalization']);
  const result = await aura.rank('homepage.hero', {
    limit: 2,
    candidates: ['c1', 'c2', 'c3'],
    pageType: 'index',
    context: { campaign: 'summer_sale', week: 41 },
  });
  assert.equal(calls.length, 1);
  assert.equal(calls[0].url, 'https://api.example/v1/rank');
  assert.equal(calls[0].init.headers['content-type'], 'application/json');
  assert.equal(calls[0].init.credentials, 'omit');
  assert.deepEqual(calls[0].body, {
    surface_id: 'homepage.hero',
    user_ctx: {
      anon_id: 'anon_id001',
      session_id: 'sess_id002',
      device: 'desktop',
      referrer: 'https://www.google.com',
      page_type: 'index',
      consent: ['personalization'],
      geo: { country: 'US', region: 'CA' },
    },
    candidates: ['c1', 'c2', 'c3'],
    limit: 2,
    context: { time_of_day: timeOfDay(new Date(Date.UTC(2025, 9, 9, 14, 30)).getHours()), campaign: 'summer_sale', week: '41' },
  });
  assert.deepEqual(result, { ...RANKED, fallback: false });
  assert.deepEqual(aura.ids(), { anonId: 'anon_id001', sessionId: 'sess_id002' });
});

test('rank falls back when the API does not answer in time', async () => {
  const { aura, clock, calls } = start(hangingFetch(), { timeout: 300 });
  aura.consent.grant();
  const pending = aura.rank('promo.banner', { fallback: FALLBACK });
  await clock.advance(299);
  assert.equal(calls.length, 1);
  await clock.advance(1);
  const result = await pending;
  assert.deepEqual([result.fallback, result.error, result.items], [true, 'timeout', FALLBACK]);
});

for (const [name, answer, error] of [
  ['a network error', new TypeError('Failed to fetch'), 'network'],
  ['a JSON API error', { status: 403, body: { error: { code: 'consent_required', message: 'm', status: 403 } } }, 'consent_required'],
  ['a non-JSON error', { status: 502 }, 'http_502'],
  ['a malformed body', { status: 200, body: { items: 'c1' } }, 'http_200'],
  ['an empty ranking', { status: 200, body: { ...RANKED, items: [] } }, 'empty'],
]) {
  test(`rank falls back on ${name}`, async () => {
    const { aura } = start(() => answer);
    aura.consent.grant();
    const result = await aura.rank('blog.index', { fallback: FALLBACK });
    assert.deepEqual([result.fallback, result.error, result.items], [true, error, FALLBACK]);
  });
}

test('a ranking records one impression per item with analytics consent', async () => {
  const { aura, clock, calls } = start((path) => (path === '/v1/rank' ? { status: 200, body: RANKED } : { status: 202, body: { accepted: 2 } }));
  aura.consent.grant();
  await aura.rank('homepage.hero');
  await clock.advance(5000);
  const events = calls.find((c) => c.path === '/v1/events').body.events;
  assert.deepEqual(
    events.map((e) => [e.type, e.surface_id, e.content_id, e.request_id, e.props.position]),
    [
      ['impression', 'homepage.hero', 'c1', 'req_1', 1],
      ['impression', 'homepage.hero', 'c2', 'req_1', 2],
    ],
  );
});

test('device class comes from the pointer and the screen size', () => {
  const win = (coarse, width, height) => ({ matchMedia: () => ({ matches: coarse }), screen: { width, height } });
  assert.equal(deviceClass(undefined), 'desktop');
  assert.equal(deviceClass(win(false, 390, 844)), 'desktop');
  assert.equal(deviceClass(win(true, 390, 844)), 'mobile');
  assert.equal(deviceClass(win(true, 1024, 768)), 'tablet');
});

test('time of day uses the server buckets', () => {
  assert.deepEqual(
    [0, 4, 5, 11, 12, 16, 17, 21, 22, 23].map(timeOfDay),
    ['night', 'night', 'morning', 'morning', 'afternoon', 'afternoon', 'evening', 'evening', 'night', 'night'],
  );
});

test('the default renderer links only to http(s) and relative URLs', () => {
  const doc = { createElement: () => ({}) };
  const link = (url) => renderLink({ content_id: 'c1', reason: 'r', metadata: { title: 'T', url } }, doc).href;
  assert.deepEqual(
    ['/a', 'b/c', 'https://x.example/p', 'javascript:alert(1)', ' data:text/html,x', undefined].map(link),
    ['/a', 'b/c', 'https://x.example/p', '#', '#', '#'],
  );
  assert.deepEqual(renderLink({ content_id: 'c9' }, doc), { href: '#', textContent: 'c9', title: '' });
});
