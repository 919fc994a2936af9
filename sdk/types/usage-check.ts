// Compiled by `npm run typecheck` (tsc --noEmit --strict): the public types accept typical use and reject misuse.
import { init, oneTrust, SCOPES, type RankResult, type Scope } from './aura';

const aura = init({ apiUrl: 'https://api.example', cmp: oneTrust(), geo: { country: 'US' }, flushInterval: 2000 });
const scopes: Scope[] = SCOPES;
aura.consent.grant(scopes);
aura.consent.revoke(['personalization']);
const off: () => void = aura.consent.onChange((current, revoked) => console.log(current.join(), revoked));
off();

async function hero(): Promise<string | null> {
  const result: RankResult = await aura.rank('homepage.hero', {
    limit: 3,
    container: '#hero',
    render: (item, index, res) => `<a href="${item.metadata?.url ?? '#'}">${index}: ${res.surface}</a>`,
    fallback: [{ content_id: 'default' }],
    context: { campaign: 'summer_sale', week: 41 },
  });
  if (!result.fallback && result.request_id) {
    aura.feedback(result.request_id, result.items[0].content_id, { type: 'conversion', value: 1 }, { position: 1 });
  }
  aura.track('conversion', { content_id: 'p1', props: { value: 20 } });
  await aura.flush();
  return aura.ids()?.anonId ?? null;
}
hero();

// @ts-expect-error: unknown event types are rejected.
aura.track('purchase');
// @ts-expect-error: reward types are a closed set.
aura.feedback('req_1', 'c1', { type: 'like' });
// @ts-expect-error: scopes are a closed set.
aura.consent.grant(['marketing']);
