import assert from 'node:assert/strict';
import { test } from 'node:test';
import { init } from '../src/index.js';
import { MAX_BATCH_EVENTS, MAX_BODY_BYTES } from '../src/tracker.js';
import { FakeClock, fakeEnv, fakeFetch, fakeItem, fakePage, MemoryStorage } from './fakes.js';

const accepted = (path) => (path === '/v1/feedback' ? { status: 200, body: { status: 'accepted', feedback_id: 'fb_1' } } : { status: 202, body: { accepted: 1 } });

function start({ responder = accepted, options = {}, storage, page, clock } = {}) {
  const { fetch, calls } = fakeFetch(responder);
  const setup = fakeEnv({ fetch, storage, page, clock });
  const aura = init({ apiUrl: 'https://api.example', pageView: false, ...options, env: setup.env });
  const times = [];
  const sent = (path) => calls.filter((c) => c.path === path).map((c) => c.body);
  return { aura, calls, sent, times, ...setup };
}

const types = (events) => events.map((e) => e.type);

test('nothing is tracked, stored or sent before consent', async () => {
  const { aura, calls, storage, clock, page } = start({ options: { pageView: true } });
  assert.equal(aura.track('click', { content_id: 'c1' }), false);
  assert.equal(aura.feedback('req_1', 'c1', { type: 'click' }), false);
  page.click(fakeItem({ auraItem: 'c1', auraPosition: '1', auraRequest: 'req_1', auraSurface: 'blog.index' }));
  page.scrollTo(800);
  page.hide();
  await clock.advance(60000);
  assert.equal(calls.length, 0);
  assert.equal(page.beacons.length, 0);
  assert.equal(storage.writes, 0);
});

test('the page view waits for consent and then goes out with the next flush', async () => {
  const { aura, sent, clock } = start({ options: { pageView: true } });
  aura.consent.grant(['analytics']);
  await clock.advance(4999);
  assert.deepEqual(sent('/v1/events'), []);
  await clock.advance(1);
  assert.deepEqual(sent('/v1/events'), [
    {
      events: [
        {
          event_id: 'id001',
          type: 'page_view',
          ts: '2025-10-09T14:30:00.000Z',
          anon_id: 'anon_id002',
          session_id: 'sess_id003',
          url: 'https://shop.example/blog/',
          referrer: 'https://www.google.com',
          props: { title: 'Blog' },
        },
      ],
    },
  ]);
});

test('a full batch flushes at once', async () => {
  const { aura, sent } = start({ options: { eventBatchSize: 3 } });
  aura.consent.grant(['analytics']);
  aura.track('scroll');
  aura.track('dwell');
  assert.equal(sent('/v1/events').length, 0);
  aura.track('conversion', { content_id: 'p1', props: { value: 20 } });
  await Promise.resolve();
  assert.deepEqual(types(sent('/v1/events')[0].events), ['scroll', 'dwell', 'conversion']);
});

test('a full queue goes out in order, in requests within the gateway limits', async () => {
  const { aura, calls, clock } = start({ options: { eventBatchSize: 1200, maxQueueSize: 2000 } });
  aura.consent.grant(['analytics']);
  for (let i = 0; i < 1200; i++) aura.track('impression', { content_id: `c${i}`, url: '', referrer: '' });
  await clock.advance(0);
  const batches = calls.map((c) => c.body.events);
  assert.deepEqual(batches.flat().map((e) => e.content_id), Array.from({ length: 1200 }, (_, i) => `c${i}`));
  assert.deepEqual(batches.map((b) => b.length), [341, 340, 340, 179]);
  for (const c of calls) {
    assert.ok(c.body.events.length <= MAX_BATCH_EVENTS);
    assert.ok(Buffer.byteLength(c.init.body) <= MAX_BODY_BYTES);
  }
});

test('a batch stays under the body size limit', async () => {
  const { aura, calls, clock } = start();
  aura.consent.grant(['analytics']);
  for (let i = 0; i < 40; i++) aura.track('page_view', { props: { blob: 'x'.repeat(4000) } });
  await clock.advance(5000);
  const sizes = calls.map((c) => Buffer.byteLength(c.init.body));
  assert.deepEqual(calls.map((c) => c.body.events.length), [14, 14, 12]);
  assert.ok(sizes.every((s) => s <= MAX_BODY_BYTES), String(sizes));
});

test('failures are retried with exponential backoff and then delivered once', async () => {
  const answers = [{ status: 503 }, new TypeError('Failed to fetch'), { status: 429 }, { status: 202, body: { accepted: 1 } }];
  const clock = new FakeClock();
  const at = [];
  const { aura, sent } = start({ clock, responder: () => (at.push(clock.now() - start0), answers.shift()), options: { retryBase: 1000 } });
  const start0 = clock.now();
  aura.consent.grant(['analytics']);
  aura.track('page_view');
  await clock.advance(60000);
  assert.deepEqual(at, [5000, 6000, 8000, 12000]);
  assert.equal(sent('/v1/events').length, 4);
  assert.deepEqual(new Set(sent('/v1/events').map((b) => b.events[0].event_id)).size, 1);
});

test('the backoff is capped at retryMax', async () => {
  const clock = new FakeClock();
  const at = [];
  const start0 = clock.now();
  const { aura } = start({ clock, responder: () => (at.push(clock.now() - start0), { status: 500 }), options: { retryMax: 3000 } });
  aura.consent.grant(['analytics']);
  aura.track('page_view');
  await clock.advance(15000);
  assert.deepEqual(at, [5000, 6000, 8000, 11000, 14000]);
});

test('a rejected batch is dropped, not retried', async () => {
  const { aura, calls, clock } = start({ responder: () => ({ status: 400, body: { error: { code: 'invalid_request' } } }) });
  aura.consent.grant(['analytics']);
  aura.track('page_view');
  await clock.advance(60000);
  assert.equal(calls.length, 1);
});

test('offline, the queue is bounded and sent when the browser is back online', async () => {
  const page = fakePage();
  page.navigator.onLine = false;
  const { aura, sent, clock } = start({ page, options: { maxQueueSize: 5 } });
  aura.consent.grant(['analytics']);
  for (let i = 0; i < 8; i++) aura.track('impression', { content_id: `c${i}` });
  await clock.advance(30000);
  assert.deepEqual(sent('/v1/events'), []);
  page.navigator.onLine = true;
  page.window.dispatchEvent(new Event('online'));
  await clock.advance(0);
  assert.deepEqual(sent('/v1/events')[0].events.map((e) => e.content_id), ['c3', 'c4', 'c5', 'c6', 'c7']);
});

test('when the page is hidden, dwell and scroll are reported and the queue goes by beacon', async () => {
  const { aura, calls, page, clock } = start();
  aura.consent.grant(['analytics']);
  aura.track('page_view');
  page.scrollTo(1000);
  await clock.advance(2500);
  page.hide();
  page.hide();
  assert.equal(calls.length, 0);
  assert.equal(page.beacons.length, 1);
  const { path, body } = page.beacons[0];
  assert.equal(path, '/v1/events');
  assert.deepEqual(body.events.map((e) => [e.type, e.props]), [
    ['page_view', {}],
    ['dwell', { seconds: 2.5 }],
    ['scroll', { depth: 0.75 }],
  ]);
  page.show();
  await clock.advance(1000);
  page.hide();
  assert.deepEqual(page.beacons[1].body.events.map((e) => [e.type, e.props]), [
    ['dwell', { seconds: 1 }],
    ['scroll', { depth: 0.75 }],
  ]);
});

test('what a beacon cannot send is kept for the next page, which sends it', async () => {
  const storage = new MemoryStorage();
  const page = fakePage();
  page.navigator.sendBeacon = () => false;
  const first = start({ storage, page });
  first.aura.consent.grant(['analytics']);
  first.aura.track('conversion', { content_id: 'p1' });
  page.hide();
  const kept = JSON.parse(storage.getItem('aura.queue'));
  assert.deepEqual(kept.map((m) => m.e.type), ['conversion', 'dwell', 'scroll']);
  first.aura.destroy();

  const second = start({ storage });
  await second.clock.advance(0);
  assert.deepEqual(types(second.sent('/v1/events')[0].events), ['conversion', 'dwell', 'scroll']);
  assert.equal(storage.getItem('aura.queue'), null);
});

test('a click on a ranked item sends click feedback at once and a click event with the batch', async () => {
  const { aura, sent, page, clock, storage } = start();
  aura.consent.grant();
  page.scrollTo(500);
  await clock.advance(12000);
  page.click(fakeItem({ auraItem: 'c2', auraPosition: '2', auraRequest: 'req_9', auraSurface: 'blog.index' }));
  page.click({ closest: () => null });
  await clock.advance(0);
  assert.deepEqual(sent('/v1/feedback'), [
    {
      request_id: 'req_9',
      item_id: 'c2',
      reward: { type: 'click', value: 1, timestamp: '2025-10-09T14:30:12.000Z' },
      context: { position: 2, dwell_time: 12, scroll_depth: 0.5 },
    },
  ]);
  await clock.advance(5000);
  const [click] = sent('/v1/events')[0].events;
  assert.deepEqual([click.type, click.surface_id, click.content_id, click.request_id, click.props], ['click', 'blog.index', 'c2', 'req_9', { position: 2 }]);
  assert.deepEqual(JSON.parse(storage.getItem('aura.click')), { request: 'req_9', item: 'c2', position: 2, t: clock.now() - 5000 });
});

test('dwell on the clicked item page is sent as engagement feedback', async () => {
  const storage = new MemoryStorage();
  const clock = new FakeClock();
  const first = start({ storage, clock });
  first.aura.consent.grant();
  first.page.click(fakeItem({ auraItem: 'c2', auraPosition: '2', auraRequest: 'req_9', auraSurface: 'blog.index' }));
  first.aura.destroy();
  await clock.advance(2000);

  const second = start({ storage, clock });
  assert.equal(storage.getItem('aura.click'), null);
  second.page.scrollTo(1500);
  await clock.advance(15000);
  second.page.hide();
  const feedback = second.page.beacons.find((b) => b.path === '/v1/feedback').body;
  assert.deepEqual(feedback, {
    request_id: 'req_9',
    item_id: 'c2',
    reward: { type: 'engagement', value: 0.5, timestamp: new Date(clock.now()).toISOString() },
    context: { position: 2, dwell_time: 15, scroll_depth: 1 },
  });
});

test('a stale click is not attributed to a later page', async () => {
  const storage = new MemoryStorage();
  const clock = new FakeClock();
  const first = start({ storage, clock });
  first.aura.consent.grant();
  first.page.click(fakeItem({ auraItem: 'c2', auraPosition: '2', auraRequest: 'req_9', auraSurface: 'blog.index' }));
  first.aura.destroy();
  await clock.advance(61000);
  const second = start({ storage, clock });
  second.page.hide();
  assert.equal(second.page.beacons.filter((b) => b.path === '/v1/feedback').length, 0);
});

test('feedback needs personalization consent and a request id', () => {
  const { aura } = start();
  aura.consent.grant(['analytics']);
  assert.equal(aura.feedback('req_1', 'c1', { type: 'click' }), false);
  aura.consent.grant(['personalization']);
  assert.equal(aura.feedback(null, 'c1', { type: 'click' }), false);
  assert.equal(aura.feedback('req_1', 'c1', { type: 'dismiss' }), true);
});

test('revoking drops the queue, wipes storage and stops all traffic', async () => {
  const { aura, calls, storage, page, clock } = start({ options: { pageView: true } });
  aura.consent.grant();
  aura.track('conversion');
  aura.consent.revoke();
  page.hide();
  await clock.advance(60000);
  assert.equal(calls.length, 0);
  assert.equal(page.beacons.length, 0);
  assert.equal(storage.data.size, 0);
});
