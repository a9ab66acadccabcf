import { ClientCore, assertOptionsObject, requireId, requireSecret } from '../client-core.js';
import type { KeySubject } from '../token/entry.js';
import { validateFetched, type Fetched, type Upstream } from '../token/upstream.js';
import { optionalChoice } from '../validate.js';

// The access token of official accounts and mini programs: the same credentials, the same two token
// endpoints, the same keys.

/**
 * Where an access token comes from when it is not the app's own (an open-platform authorizer's token):
 * its key and how it is fetched. Passed under this symbol in the options, so it is no user option.
 * @internal
 */
export const kTokenSource = Symbol.for('wxkit.internal.tokenSource');
/** @internal */
export type CustomToken = (core: ClientCore) => { key: string; label: string; upstream: Upstream };

/**
 * The client core and the access token of an official account or a mini program: the same credentials,
 * token endpoints and keys for both.
 * @internal
 */
export function setUp(owner: string, kind: 'official_account' | 'mini_program', options: unknown, own: readonly string[]) {
  assertOptionsObject(owner, options);
  const appId = requireId(owner, options, 'appId');
  const custom = (options as Record<symbol, unknown>)[kTokenSource] as CustomToken | undefined;
  const secret = custom ? undefined : requireSecret(owner, options, 'secret');
  const given = optionalChoice(owner, options, 'tokenEndpoint', ['stable', 'classic'], undefined);
  const core = new ClientCore(owner, appId, options, own);
  // A compatibility profile defaults to the endpoint its peer SDK uses (EasyWeChat 4: classic).
  const endpoint: 'stable' | 'classic' = given ?? core.schema.defaultEndpoint ?? 'stable';
  const subject = { kind, appId, endpoint, ...(secret === undefined ? {} : { secret }) } satisfies KeySubject;
  if (custom) {
    const { key, label, upstream } = custom(core);
    return { core, subject, token: core.manager(label, key, { kind, id: appId, field: 'access_token' }, upstream), secret };
  }
  const token = core.manager('access_token', core.schema.accessTokenKey(subject), { kind, id: appId, field: 'access_token' }, {
    budgetMs: core.http.callBudgetMs,
    // Every classic fetch invalidates the previous token; stable_token hands back the current one, and
    // only its force_refresh (20 a day) replaces it.
    invalidatesPrevious: endpoint === 'classic',
    scarceForce: endpoint === 'stable',
    fetch(force) {
      const key = core.requireSecret(secret, 'fetching an access token');
      return endpoint === 'stable' ? fetchStable(core, appId, key, force) : fetchClassic(core, appId, key);
    },
  });
  return { core, subject, token, secret };
}

/**
 * `POST cgi-bin/stable_token`. In normal mode WeChat hands back the token it already issued while that
 * one is valid, so fetching never knocks another program offline. `force_refresh` is sent only when
 * asked for: it invalidates everyone's token and is limited to 20 calls a day.
 */
async function fetchStable(core: ClientCore, appId: string, secret: string, force: boolean): Promise<Fetched> {
  const path = 'cgi-bin/stable_token';
  const json: Record<string, unknown> = { grant_type: 'client_credential', appid: appId, secret };
  if (force) json.force_refresh = true;
  return validateFetched(await core.http.json({ method: 'POST', path, json, tokenFetch: true }), 'access_token', path);
}

/**
 * `GET cgi-bin/token`. Every call issues a new token and starts the old one's grace window (about
 * 5 minutes), which is why only one process may call it at a time.
 */
async function fetchClassic(core: ClientCore, appId: string, secret: string): Promise<Fetched> {
  const path = 'cgi-bin/token';
  const query = { grant_type: 'client_credential', appid: appId, secret };
  return validateFetched(await core.http.json({ method: 'GET', path, query, tokenFetch: true }), 'access_token', path);
}
