import * as core from '@wxkit/core';
import {
  ConfigError,
  MiniProgram,
  OfficialAccount,
  Work,
  nativeSchema,
  type ClientOptions,
  type KeySchema,
  type KeySubject,
  type TokenCache,
  type WeChatClient,
} from '@wxkit/core';
import { ID_RULE } from '@wxkit/core/internal';

/** The key schemas the command line knows by name: wxkit's own and the compatibility profiles. */
export const PROFILES = ['native', 'easyWeChat4', 'easyWeChat6', 'nodeEasyWeChat', 'wechatpy', 'silenceper', 'wxJava'] as const;

/** `--profile NAME [--profile-options JSON]`, or the native schema with `--prefix`. */
export function resolveSchema(options: { profile?: string; profileOptions?: string; prefix?: string }): KeySchema {
  const name = options.profile ?? 'native';
  if (!(PROFILES as readonly string[]).includes(name)) {
    throw new ConfigError(`--profile must be one of ${PROFILES.join(', ')} (got ${JSON.stringify(name)})`, 'profile');
  }
  let parsed: Record<string, unknown> = {};
  if (options.profileOptions !== undefined) {
    let value: unknown;
    try {
      value = JSON.parse(options.profileOptions);
    } catch {
      value = undefined;
    }
    // A number, null or a list spread into the options would be no options at all, dropped without a word.
    if (typeof value !== 'object' || value === null || Array.isArray(value)) {
      throw new ConfigError(`--profile-options must be a JSON object, e.g. '{"prefix":"think:"}'`, 'profile-options');
    }
    parsed = value as Record<string, unknown>;
  }
  if (name === 'native') return nativeSchema({ ...(options.prefix === undefined ? {} : { prefix: options.prefix }), ...parsed });
  // Dropped without a word, it would point the command at keys the peer never uses.
  if (options.prefix !== undefined) {
    throw new ConfigError(`--prefix is the native schema's; give ${name}'s in --profile-options, e.g. '{"prefix":"think:"}' (the option names are the profile's)`, 'prefix');
  }
  return (core as unknown as Record<string, (options: object) => KeySchema>)[name]!(parsed);
}

/** An app named on the command line or in a service config. */
export type AppRef =
  | { kind: 'official_account' | 'mini_program'; appId: string }
  | { kind: 'work'; corpId: string; agentId: string };

const KINDS: Record<string, 'official_account' | 'mini_program' | 'work'> = {
  official_account: 'official_account',
  oa: 'official_account',
  mini_program: 'mini_program',
  mp: 'mini_program',
  work: 'work',
};

/** `official_account:wx…`, `mini_program:wx…` (or `oa:`/`mp:`), `work:ww…:1000002`. */
export function parseApp(spec: string): AppRef {
  // Every segment counts: `work:ww1:1000002:x` or `oa:wx1:x` is a typo, not the app before the extra one
  // (`token clear` would clear another app's token, a config file or serve's URL serve another app).
  const [kind = '', id = '', agent, ...extra] = spec.split(':');
  // Own names only: `constructor` or `__proto__` is no kind.
  const resolved = Object.hasOwn(KINDS, kind) ? KINDS[kind] : undefined;
  // The clients' own rule for ids: `inspect` and `clear` build no client, and would otherwise look up a
  // key no client ever writes (`oa:wx…` pasted from the docs reads as "no token stored", exit 5).
  if (resolved && id && !ID_RULE.accepts(id)) {
    throw new ConfigError(
      `--app ${resolved === 'work' ? 'corpid' : 'appid'} must be letters, digits, \`_\`, \`.\` or \`-\`, at most 64 (got ${JSON.stringify(id)}; WeChat ids look like wx1234abcd5678ef90)`,
      'app',
    );
  }
  if (resolved === 'work' && id && agent && /^\d+$/.test(agent) && extra.length === 0) return { kind: 'work', corpId: id, agentId: agent };
  if (resolved && resolved !== 'work' && id && agent === undefined) return { kind: resolved, appId: id };
  throw new ConfigError(
    `--app must be official_account:<appid> (or oa:<appid>), mini_program:<appid> (or mp:<appid>) or work:<corpid>:<agentid> (got ${JSON.stringify(spec)})`,
    'app',
  );
}

/** The id used in service URLs and events: the AppID, or `corpid:agentid`. */
export function appId(app: AppRef): string {
  return app.kind === 'work' ? `${app.corpId}:${app.agentId}` : app.appId;
}

/** The store key of an app's access token, as the client computes it. */
export function accessTokenKey(app: AppRef, endpoint: 'stable' | 'classic', schema: KeySchema, secret?: string): string {
  const withSecret = secret === undefined ? {} : { secret };
  const subject: KeySubject =
    app.kind === 'work' ? { kind: 'work', corpId: app.corpId, agentId: app.agentId, ...withSecret } : { kind: app.kind, appId: app.appId, endpoint, ...withSecret };
  return schema.accessTokenKey(subject);
}

/** Builds the client of an app. `secret` may be undefined for commands that never fetch. */
export function buildClient(
  app: AppRef,
  options: { secret?: string; cache: TokenCache; endpoint?: 'stable' | 'classic'; prefix?: string } & ClientOptions,
): WeChatClient {
  const { secret, endpoint, prefix, ...rest } = options;
  const common: ClientOptions = { ...rest, ...(prefix === undefined || rest.schema ? {} : { schema: nativeSchema({ prefix }) }) };
  // Without a secret the client may only read: follower mode, which never fetches.
  const credentials = secret === undefined ? { refresh: 'never' as const } : { secret };
  if (app.kind === 'work') return new Work({ corpId: app.corpId, agentId: app.agentId, ...credentials, ...common });
  const Client = app.kind === 'mini_program' ? MiniProgram : OfficialAccount;
  return new Client({ appId: app.appId, ...(endpoint ? { tokenEndpoint: endpoint } : {}), ...credentials, ...common });
}
