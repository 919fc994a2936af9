import assert from 'node:assert/strict';
import { test } from 'node:test';
import { createConsent, oneTrust } from '../src/consent.js';
import { createStore } from '../src/store.js';
import { MemoryStorage } from './fakes.js';

function setup() {
  const storage = new MemoryStorage();
  return { storage, consent: createConsent(createStore(storage)) };
}

test('starts with no scopes and writes nothing', () => {
  const { storage, consent } = setup();
  assert.deepEqual(consent.current(), []);
  assert.equal(consent.has('analytics'), false);
  assert.equal(storage.writes, 0);
});

test('grant stores known scopes in canonical order and ignores unknown ones', () => {
  const { storage, consent } = setup();
  consent.grant(['personalization', 'marketing', 'analytics']);
  assert.deepEqual(consent.current(), ['analytics', 'personalization']);
  assert.equal(storage.getItem('aura.consent'), '["analytics","personalization"]');
});

test('grant without arguments grants every scope', () => {
  const { consent } = setup();
  consent.grant();
  assert.deepEqual(consent.current(), ['analytics', 'personalization']);
});

test('a stored grant is restored by the next page', () => {
  const { storage, consent } = setup();
  consent.grant(['analytics']);
  assert.deepEqual(createConsent(createStore(storage)).current(), ['analytics']);
});

test('revoke wipes every AURA key and keeps only the remaining scopes', () => {
  const { storage, consent } = setup();
  consent.grant();
  for (const key of ['aid', 'sid', 'queue', 'click']) storage.setItem(`aura.${key}`, '1');
  storage.setItem('other.key', 'kept');
  consent.revoke(['personalization']);
  assert.deepEqual([...storage.data.keys()].sort(), ['aura.consent', 'other.key']);
  assert.equal(storage.getItem('aura.consent'), '["analytics"]');
  consent.revoke();
  assert.deepEqual([...storage.data.keys()], ['other.key']);
  assert.deepEqual(consent.current(), []);
});

test('listeners hear grants and revokes until they unsubscribe', () => {
  const { consent } = setup();
  const heard = [];
  const off = consent.onChange((scopes, revoked) => heard.push([scopes, revoked]));
  consent.grant(['analytics']);
  consent.grant(['analytics']);
  consent.revoke();
  off();
  consent.grant();
  assert.deepEqual(heard, [
    [['analytics'], false],
    [[], true],
  ]);
});

test('a connected platform replaces the scopes and a lost scope counts as a revoke', () => {
  const { storage, consent } = setup();
  let push;
  const adapter = { read: () => ['analytics', 'personalization'], subscribe: (fn) => ((push = fn), () => {}) };
  consent.connect(adapter);
  assert.deepEqual(consent.current(), ['analytics', 'personalization']);
  storage.setItem('aura.aid', '"anon_1"');
  push(['analytics']);
  assert.deepEqual(consent.current(), ['analytics']);
  assert.equal(storage.getItem('aura.aid'), null);
});

test('a platform without an answer yet changes nothing', () => {
  const { storage, consent } = setup();
  consent.connect({ read: () => null });
  assert.deepEqual(consent.current(), []);
  assert.equal(storage.writes, 0);
});

test('oneTrust maps active groups and follows OneTrustGroupsUpdated', () => {
  const win = new EventTarget();
  const adapter = oneTrust(undefined, win);
  assert.equal(adapter.read(), null);
  win.OnetrustActiveGroups = ',C0001,C0002,';
  assert.deepEqual(adapter.read(), ['analytics']);
  const heard = [];
  const off = adapter.subscribe((scopes) => heard.push(scopes));
  win.dispatchEvent(Object.assign(new Event('OneTrustGroupsUpdated'), { detail: ['C0001', 'C0002', 'C0004'] }));
  off();
  win.dispatchEvent(Object.assign(new Event('OneTrustGroupsUpdated'), { detail: [] }));
  assert.deepEqual(heard, [['analytics', 'personalization']]);
});
