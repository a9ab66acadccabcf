import { ClientCore, ID_RULE, checkClientOptions, clientSchema, requireSecret, type ClientOptions } from '../client-core.js';
import type { KeySubject } from '../token/entry.js';
import { credentialDigest, validateFetched, type Fetched, type Upstream } from '../token/upstream.js';
import { oneOf, required, secretString, type OptionSchema } from '../validate.js';

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

/** The options OfficialAccount and MiniProgram share: the same credentials, the same token endpoints. */
interface AppOptions extends ClientOptions {
  appId: string;
  secret?: string;
  tokenEndpoint?: 'stable' | 'classic';
}

const APP_OWN_OPTIONS = {
  appId: required(ID_RULE),
  secret: secretString(),
  tokenEndpoint: oneOf(['stable', 'classic']),
} as const satisfies OptionSchema<Exclude<keyof AppOptions, keyof ClientOptions>>;

/**
 * The rules of OfficialAccountOptions and MiniProgramOptions. {@link setUp} takes it typed by the
 * client's options, so an option added to either without a rule here does not compile.
 */
export const APP_SCHEMA = clientSchema<AppOptions>(APP_OWN_OPTIONS);

/**
 * The client core and the access token of an official account or a mini program: the same credentials,
 * token endpoints and keys for both.
 * @internal
 */
export function setUp<T extends AppOptions>(owner: string, kind: 'official_account' | 'mini_program', options: unknown, schema: OptionSchema<keyof T>) {
  const checked = checkClientOptions<T>(owner, schema, options);
  const appId = checked.appId;
  const custom = (options as Record<symbol, unknown>)[kTokenSource] as CustomToken | undefined;
  const secret = custom ? undefined : requireSecret(owner, checked);
  const given = checked.tokenEndpoint;
  const core = new ClientCore(owner, appId, checked);
  return tokenOf(core, () => {
    // A compatibility profile defaults to the endpoint its peer SDK uses (EasyWeChat 4: classic).
    const endpoint: 'stable' | 'classic' = given ?? core.schema.defaultEndpoint ?? 'stable';
    const subject = { kind, appId, endpoint, ...(secret === undefined ? {} : { secret }) } satisfies KeySubject;
    if (custom) {
      const { key, label, upstream } = custom(core);
      return { core, subject, token: core.manager(label, key, { kind, id: appId, field: 'access_token' }, upstream), secret };
    }
    const upstream = new AppTokenUpstream(core, appId, secret, endpoint);
    const token = core.manager('access_token', core.schema.accessTokenKey(subject), { kind, id: appId, field: 'access_token' }, upstream);
    return { core, subject, token, secret };
  });
}

/**
 * What `make` builds on a client core just made, or its error once the core is closed. The core holds a
 * use of the process's shared connection pools from its construction: a client that then fails to be
 * made (a schema whose keys need the secret, given none) would hold that use for the life of the
 * process, and the pools would outlive their last client.
 * @internal
 */
export function tokenOf<T>(core: ClientCore, make: () => T): T {
  try {
    return make();
  } catch (error) {
    // Its close() never fails for want of a store (the cache is the caller's to close); nobody awaits it.
    void core.close().catch(() => undefined);
    throw error;
  }
}

/**
 * An app's access token from WeChat, by its secret. A class, not an object with a closure: a platform's
 * process holds one for each of its 10,000 accounts.
 */
class AppTokenUpstream implements Upstream {
  readonly #core: ClientCore;
  readonly #appId: string;
  readonly #secret: string | undefined;
  readonly #endpoint: 'stable' | 'classic';

  constructor(core: ClientCore, appId: string, secret: string | undefined, endpoint: 'stable' | 'classic') {
    this.#core = core;
    this.#appId = appId;
    this.#secret = secret;
    this.#endpoint = endpoint;
  }

  get budgetMs(): number {
    return this.#core.http.callBudgetMs;
  }

  // Every classic fetch invalidates the previous token; stable_token hands back the current one, and
  // only its force_refresh (20 a day) replaces it.
  get invalidatesPrevious(): boolean {
    return this.#endpoint === 'classic';
  }

  get scarceForce(): boolean {
    return this.#endpoint === 'stable';
  }

  // Made when a failure asks for it: an account whose fetches succeed keeps no copy.
  get credentialDigest(): string | undefined {
    return credentialDigest(this.#appId, this.#secret);
  }

  fetch(force: boolean): Promise<Fetched> {
    const key = this.#core.requireSecret(this.#secret, 'fetching an access token');
    return this.#endpoint === 'stable' ? fetchStable(this.#core, this.#appId, key, force) : fetchClassic(this.#core, this.#appId, key);
  }
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
