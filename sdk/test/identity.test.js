import assert from 'node:assert/strict';
import { test } from 'node:test';
import { createIdentity, randomHex, SESSION_MS } from '../src/identity.js';
import { createStore } from '../src/store.js';
import { blockedStorage, FakeClock, MemoryStorage } from './fakes.js';

function setup(storage = new MemoryStorage()) {
  const clock = new FakeClock();
  let n = 0;
  const identity = createIdentity(createStore(storage), clock.now, () => String(++n));
  return { clock, identity, storage };
}

test('randomHex gives 24 hex digits', () => {
  assert.match(randomHex(), /^[0-9a-f]{24}$/);
  assert.notEqual(randomHex(), randomHex());
});

test('the anonymous id is created once and kept', () => {
  const { identity, storage } = setup();
  assert.equal(identity.anonId(), 'anon_1');
  assert.equal(identity.anonId(), 'anon_1');
  assert.equal(storage.getItem('aura.aid'), '"anon_1"');
});

test('a session lasts while active and expires after 30 idle minutes', async () => {
  const { clock, identity } = setup();
  assert.equal(identity.sessionId(), 'sess_1');
  await clock.advance(SESSION_MS - 1);
  assert.equal(identity.sessionId(), 'sess_1');
  await clock.advance(SESSION_MS - 1);
  assert.equal(identity.sessionId(), 'sess_1');
  await clock.advance(SESSION_MS);
  assert.equal(identity.sessionId(), 'sess_2');
});

test('ids stay stable in memory when storage is blocked', () => {
  const { identity } = setup(blockedStorage);
  assert.equal(identity.anonId(), 'anon_1');
  assert.equal(identity.anonId(), 'anon_1');
  assert.equal(identity.sessionId(), 'sess_2');
  assert.equal(identity.sessionId(), 'sess_2');
});

test('a corrupt stored value is replaced', () => {
  const storage = new MemoryStorage();
  storage.setItem('aura.sid', '{not json');
  const { identity } = setup(storage);
  assert.equal(identity.sessionId(), 'sess_1');
});
