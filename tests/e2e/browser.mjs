#!/usr/bin/env node
// Browser end-to-end scenarios for the AURA SDK and demo site, in headless Debian Chromium via playwright-core.
//
//   node tests/e2e/browser.mjs --api http://127.0.0.1:8000 [--site http://host/examples/index.html] [--report out.json]
//   node tests/e2e/browser.mjs --fake-api            (development aid: a tiny fake gateway instead of the real one)
//
// Without --site the SDK directory is served on a free loopback port (build it first: npm --prefix sdk run build).
// The API must allow the site's origin (CORS). Exits 0 when every scenario passes, 1 otherwise. --report writes
// {scenarios, anon_id, decisions, clicked: {request_id, item_id, position}} so the caller can check the server's logs:
// click and engagement feedback for `clicked`, and page_view, impression, click, dwell and scroll events of `anon_id`.
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { createServer } from 'node:net';
import { createRequire } from 'node:module';
import { tmpdir } from 'node:os';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { parseArgs } from 'node:util';
import { startFakeApi } from './fake_api.mjs';
import { startStaticServer } from './static_server.mjs';

const SDK_DIR = resolve(dirname(fileURLToPath(import.meta.url)), '../../sdk');
const { chromium } = createRequire(join(SDK_DIR, 'package.json'))('playwright-core');

const CHROMIUM_ARGS = [
  '--headless',
  '--no-sandbox',
  '--disable-gpu',
  '--disable-quic',
  '--no-first-run',
  '--disable-background-networking',
  '--disable-component-update',
  '--disable-sync',
];
const WAIT_MS = 15000;
const ANON_ID = /^anon_[0-9a-f]{24}$/;
const SESSION_ID = /^sess_[0-9a-f]{24}$/;
const SLOTS = ['#promo', '#hero', '#blog', '#products'];

class Failure extends Error {}

function check(condition, message) {
  if (!condition) throw new Failure(message);
}

function equal(actual, expected, what) {
  const [a, e] = [JSON.stringify(actual), JSON.stringify(expected)];
  check(a === e, `${what}: expected ${e}, got ${a}`);
}

/** A loopback port with nothing listening on it. */
async function deadPort() {
  const server = createServer();
  await new Promise((done) => server.listen(0, '127.0.0.1', done));
  const { port } = server.address();
  await new Promise((done) => server.close(done));
  return port;
}

/** Records every request a browser context makes, with its JSON body and (when readable) its response. */
class Traffic {
  constructor(context) {
    this.entries = [];
    context.on('request', (request) => {
      let body = null;
      try {
        body = request.postData() ? JSON.parse(request.postData()) : null;
      } catch {}
      const entry = { url: request.url(), method: request.method(), type: request.resourceType(), body, status: 0, response: null };
      this.entries.push(entry);
      request
        .response()
        .then(async (response) => {
          if (!response) return;
          entry.status = response.status();
          try {
            entry.response = await response.json();
          } catch {}
        })
        .catch(() => {});
    });
  }

  /** POSTs to the API path, e.g. "/v1/rank". */
  api(apiUrl, path) {
    return this.entries.filter((e) => e.method === 'POST' && e.url === apiUrl + path);
  }

  /** Poll until `predicate(entries)` returns a truthy value, which is returned. */
  async until(predicate, what, timeout = WAIT_MS) {
    const deadline = Date.now() + timeout;
    for (;;) {
      const found = predicate(this.entries);
      if (found) return found;
      if (Date.now() > deadline) throw new Failure(`timed out waiting for ${what}`);
      await new Promise((done) => setTimeout(done, 100));
    }
  }
}

/** Open the demo page in a fresh context; fails the scenario on any uncaught page error. */
async function openDemo(browser, siteUrl, apiUrl, setup) {
  const context = await browser.newContext();
  if (setup) await setup(context);
  const traffic = new Traffic(context);
  const errors = [];
  context.on('page', (page) => page.on('pageerror', (err) => errors.push(err.message)));
  const page = await context.newPage();
  const url = new URL(siteUrl);
  url.searchParams.set('api', apiUrl);
  await page.goto(url.href);
  await page.waitForSelector('body[data-aura-ready="true"]', { timeout: WAIT_MS });
  return { context, page, traffic, errors, url: url.href };
}

const storage = (page) => page.evaluate(() => ({ local: { ...localStorage }, session: { ...sessionStorage }, cookie: document.cookie }));

/** For each slot: whether it shows ranked items, its fallback reason and its visible text. */
const slots = (page) =>
  page.evaluate((selectors) =>
    selectors.map((sel) => {
      const el = document.querySelector(sel);
      return {
        slot: sel,
        ranked: el.querySelectorAll('[data-aura-item]').length,
        fallback: el.getAttribute('data-aura-fallback'),
        text: el.innerText.trim(),
      };
    }),
  SLOTS);

async function grantAll(page) {
  await page.click('#consent-banner [data-consent="all"]');
}

const scenarios = {
  /** Before consent: default content, no request to the API, nothing in cookies or storage. */
  async noTrackingBeforeConsent({ browser, siteUrl, apiUrl }) {
    const { context, page, traffic, errors } = await openDemo(browser, siteUrl, apiUrl);
    try {
      check(await page.isVisible('#consent-banner'), 'the consent banner is not shown');
      for (const s of await slots(page)) {
        equal(s.fallback, 'consent', `${s.slot} fallback reason`);
        check(s.text.length > 0, `${s.slot} is blank`);
      }
      await page.mouse.wheel(0, 2000);
      await page.click('#hero .hero-item');
      await page.click('#consent-banner [data-consent="none"]');
      await page.goto(page.url().replace('index.html', 'item.html'));
      await page.waitForSelector('body[data-aura-ready="true"]');
      await page.waitForTimeout(500);
      const site = new URL(siteUrl).origin;
      const foreign = traffic.entries.filter((e) => !e.url.startsWith(site));
      equal(foreign.map((e) => `${e.method} ${e.url}`), [], 'requests outside the site before consent');
      const carrying = traffic.entries.filter((e) => e.method !== 'GET' || /anon_|sess_/.test(e.url));
      equal(carrying.map((e) => `${e.method} ${e.url}`), [], 'requests carrying data before consent');
      equal(await storage(page), { local: {}, session: {}, cookie: '' }, 'storage before consent');
      equal(errors, [], 'page errors');
    } finally {
      await context.close();
    }
  },

  /** After consent: every surface ranks or falls back, ranked items show their reasons, the click is feedback. */
  async rankClickAndFeedback({ browser, siteUrl, apiUrl, report }) {
    const { context, page, traffic, errors } = await openDemo(browser, siteUrl, apiUrl);
    try {
      equal(traffic.api(apiUrl, '/v1/rank').length, 0, 'rank requests before consent');
      await grantAll(page);
      const ranks = await traffic.until(
        () => {
          const r = traffic.api(apiUrl, '/v1/rank');
          return r.length === SLOTS.length && r.every((e) => e.status) && r;
        },
        'four answered /v1/rank requests',
      );
      await page.waitForSelector('#hero [data-aura-item]', { timeout: WAIT_MS });
      const { local } = await storage(page);
      const anonId = JSON.parse(local['aura.aid']);
      check(ANON_ID.test(anonId), `anonymous id ${anonId} is not anon_<24 hex>`);
      report.anon_id = anonId;
      for (const r of ranks) {
        const ctx = r.body.user_ctx;
        equal(ctx.consent, ['analytics', 'personalization'], 'user_ctx.consent');
        equal(ctx.anon_id, anonId, 'user_ctx.anon_id');
        check(SESSION_ID.test(ctx.session_id), `session id ${ctx.session_id} is not sess_<24 hex>`);
        equal(ctx.device, 'desktop', 'user_ctx.device');
        equal(ctx.page_type, 'index', 'user_ctx.page_type');
        equal(ctx.geo, { country: 'US' }, 'user_ctx.geo (from the demo\'s aura-geo meta tag)');
      }
      const hero = ranks.find((r) => r.body.surface_id === 'homepage.hero');
      equal(hero.status, 200, 'homepage.hero rank status');
      report.decisions = ranks.filter((r) => r.status === 200).map((r) => r.response.request_id);
      const shown = await page.$$eval('#hero [data-aura-item]', (els) =>
        els.map((el) => ({ id: el.dataset.auraItem, request: el.dataset.auraRequest, why: el.querySelector('.why').textContent })),
      );
      equal(
        shown,
        hero.response.items.map((i) => ({ id: i.content_id, request: hero.response.request_id, why: `Why: ${i.reason || 'ranked for you'}` })),
        'hero items and their reasons',
      );
      for (const s of await slots(page)) {
        check(s.ranked > 0 || s.fallback, `${s.slot} neither ranked nor marked as fallback`);
        check(s.text.length > 0, `${s.slot} is blank`);
      }
      check(await page.isHidden('#consent-banner'), 'the consent banner is still shown');

      const first = hero.response.items[0];
      await Promise.all([page.waitForURL(/item\.html/), page.click(`#hero [data-aura-item="${first.content_id}"] a`)]);
      // The page navigates away while the keepalive request is in flight, so its answer may not be observable here;
      // the caller checks the server's feedback log for the reported request_id and item_id instead.
      const click = await traffic.until(
        () => traffic.api(apiUrl, '/v1/feedback').find((e) => e.body.reward.type === 'click'),
        'the click feedback',
      );
      equal(
        [click.body.request_id, click.body.item_id, click.body.reward.value, click.body.context.position],
        [hero.response.request_id, first.content_id, 1, first.position],
        'click feedback (request_id, item_id, value, position)',
      );
      check([0, 200].includes(click.status), `click feedback answered ${click.status}`);
      report.clicked = { request_id: click.body.request_id, item_id: click.body.item_id, position: first.position };

      // Events and the engagement feedback leave by keepalive fetch or sendBeacon while pages unload, which the
      // browser does not reliably report here; the caller finds them in the server's logs by `report.anon_id`.
      await page.waitForTimeout(1200);
      await Promise.all([page.waitForURL(/index\.html/), page.click('a.brand')]);
      await page.waitForSelector('body[data-aura-ready="true"]');
      check(await page.isHidden('#consent-banner'), 'consent was not remembered across pages');
      await traffic.until(() => traffic.api(apiUrl, '/v1/rank').length >= 2 * SLOTS.length, 'the home page ranking again');
      equal(errors, [], 'page errors');
    } finally {
      await context.close();
    }
  },

  /** Revoking wipes the ids and stops all traffic. */
  async revokeStopsTracking({ browser, siteUrl, apiUrl }) {
    const { context, page, traffic, errors } = await openDemo(browser, siteUrl, apiUrl);
    try {
      await grantAll(page);
      await page.waitForSelector('#hero [data-aura-item]', { timeout: WAIT_MS });
      await page.click('#privacy-settings');
      await page.click('#consent-banner [data-consent="revoke"]');
      await page.waitForSelector('#hero[data-aura-fallback="consent"]');
      equal(await storage(page), { local: {}, session: {}, cookie: '' }, 'storage after revoke');
      const before = traffic.entries.filter((e) => e.method === 'POST').length;
      await page.mouse.wheel(0, 1000);
      await page.click('#hero .hero-item');
      await page.reload();
      await page.waitForSelector('body[data-aura-ready="true"]');
      await page.waitForTimeout(500);
      equal(traffic.entries.filter((e) => e.method === 'POST').length, before, 'POST requests after revoke');
      equal(await storage(page), { local: {}, session: {}, cookie: '' }, 'storage after revoke and reload');
      equal(errors, [], 'page errors');
    } finally {
      await context.close();
    }
  },

  /** API unreachable or too slow: every surface keeps the page's own content. */
  async fallbackWhenApiDown({ browser, siteUrl, apiUrl }) {
    const down = `http://127.0.0.1:${await deadPort()}`;
    const unreachable = await openDemo(browser, siteUrl, down);
    try {
      await grantAll(unreachable.page);
      await unreachable.page.waitForFunction(
        (sel) => sel.every((s) => document.querySelector(s).getAttribute('data-aura-fallback') === 'network'),
        SLOTS,
        { timeout: WAIT_MS },
      );
      for (const s of await slots(unreachable.page)) {
        equal(s.ranked, 0, `${s.slot} ranked items`);
        check(s.text.length > 0, `${s.slot} is blank`);
      }
      check((await unreachable.page.textContent('#hero')).includes('Welcome to Northwind'), 'the hero lost its default');
      equal(unreachable.errors, [], 'page errors');
    } finally {
      await unreachable.context.close();
    }
    const slow = await openDemo(browser, siteUrl, apiUrl, (context) => context.route('**/v1/rank', () => {}));
    try {
      const started = Date.now();
      await grantAll(slow.page);
      await slow.page.waitForFunction(
        (sel) => sel.every((s) => document.querySelector(s).getAttribute('data-aura-fallback') === 'timeout'),
        SLOTS,
        { timeout: WAIT_MS },
      );
      check(Date.now() - started < 5000, `the timeout fallback took ${Date.now() - started} ms`);
      check((await slow.page.textContent('#hero')).includes('Welcome to Northwind'), 'the hero lost its default');
      equal(slow.errors, [], 'page errors');
    } finally {
      await slow.context.close();
    }
  },
};

/** What the real run's caller checks in the server's logs, checked against the fake API's log. */
async function checkFakeLog(log, report) {
  const expected = { feedback: ['click', 'engagement'], events: ['page_view', 'impression', 'click', 'dwell', 'scroll'] };
  const deadline = Date.now() + WAIT_MS;
  let found;
  do {
    const clicked = report.clicked || {};
    found = {
      feedback: log.feedback.filter((f) => f.request_id === clicked.request_id && f.item_id === clicked.item_id).map((f) => f.reward.type),
      events: [...new Set(log.events.filter((e) => e.anon_id === report.anon_id).map((e) => e.type))],
    };
    const ok = Object.entries(expected).every(([k, types]) => types.every((t) => found[k].includes(t)));
    if (ok) {
      console.log('PASS logged (click and engagement feedback, page_view/impression/click/dwell/scroll events)');
      return { name: 'logged', ok };
    }
    await new Promise((done) => setTimeout(done, 100));
  } while (Date.now() < deadline);
  const error = `expected ${JSON.stringify(expected)} in the fake log, found ${JSON.stringify(found)}`;
  console.log(`FAIL logged: ${error}`);
  return { name: 'logged', ok: false, error };
}

async function main() {
  const { values } = parseArgs({
    options: {
      api: { type: 'string' },
      site: { type: 'string' },
      report: { type: 'string' },
      'fake-api': { type: 'boolean', default: false },
      only: { type: 'string' },
    },
  });
  if (!values.api === !values['fake-api']) {
    console.error('usage: browser.mjs (--api URL | --fake-api) [--site URL] [--report FILE] [--only SCENARIO]');
    return 2;
  }
  const cleanup = [];
  const report = { scenarios: [], anon_id: null, decisions: [], clicked: null };
  try {
    let apiUrl = values.api && values.api.replace(/\/+$/, '');
    let fake = null;
    if (values['fake-api']) {
      fake = await startFakeApi();
      cleanup.push(fake.close);
      apiUrl = fake.url;
    }
    let siteUrl = values.site;
    if (!siteUrl) {
      const site = await startStaticServer(SDK_DIR);
      cleanup.push(site.close);
      siteUrl = `${site.url}/examples/index.html`;
    }
    const profile = mkdtempSync(join(tmpdir(), 'aura-e2e-'));
    cleanup.push(() => rmSync(profile, { recursive: true, force: true }));
    const browser = await chromium.launch({ executablePath: '/usr/bin/chromium', args: CHROMIUM_ARGS, env: { ...process.env, HOME: profile } });
    cleanup.push(() => browser.close());
    console.log(`site ${siteUrl}, api ${apiUrl}`);
    for (const [name, run] of Object.entries(scenarios)) {
      if (values.only && values.only !== name) continue;
      const started = Date.now();
      try {
        await run({ browser, siteUrl, apiUrl, report });
        report.scenarios.push({ name, ok: true });
        console.log(`PASS ${name} (${Date.now() - started} ms)`);
      } catch (err) {
        report.scenarios.push({ name, ok: false, error: err.message });
        console.log(`FAIL ${name}: ${err instanceof Failure ? err.message : err.stack}`);
      }
    }
    if (fake) report.scenarios.push(await checkFakeLog(fake.log, report));
  } finally {
    for (const close of cleanup.reverse()) await close();
  }
  if (values.report) writeFileSync(values.report, JSON.stringify(report, null, 2));
  return report.scenarios.length && report.scenarios.every((s) => s.ok) ? 0 : 1;
}

process.exitCode = await main();
