// A holder process for the refresh-token rotation benchmark: sends one template message for each
// authorizer it is given, each send refreshing the authorizer's access token with its refresh token,
// and reports every outcome to the parent, which SIGKILLs holders at random. Two ways to refresh:
//
//   wxkit: OpenPlatform (write-ahead under the refresh lock, recovery from api_get_authorizer_info);
//   naive: read the refresh token, call api_authorizer_token, write what WeChat handed back (the
//          read-call-write a platform writes by hand around an SDK that takes the refresh token as input).
//
//   parent → { ids: [authorizerAppId…] }       ← { id, ok: true } | { id, ok: false, label, errcode }
//   (the process exits by itself once every id is answered)
import { request } from 'undici';
import { OpenPlatform } from '@wxkit/core';
import { RedisCache } from '@wxkit/redis';

const config = JSON.parse(process.env.WXKIT_ROTATION);
const TEMPLATE = { touser: 'oBenchUser', template_id: 'TPL_BENCH', data: { first: { value: 'Paid' } } };
const store = new RedisCache(config.redisUrl);
const refreshKey = (id) => `wechat:authorizer_refresh_token:${config.component.appId}:${id}`;

async function post(path, query, json) {
  const res = await request(`${config.baseUrl}/${path}?${new URLSearchParams(query)}`, {
    method: 'POST',
    body: JSON.stringify(json),
    headersTimeout: config.timeoutMs,
    bodyTimeout: config.timeoutMs,
  });
  const body = await res.body.json();
  if (body.errcode) throw Object.assign(new Error(`errcode ${body.errcode}`), { errcode: body.errcode, code: 'WECHAT' });
  return body;
}

function naive() {
  const component = config.component;
  return async (id) => {
    const stored = JSON.parse((await store.get(refreshKey(id))) ?? 'null');
    if (!stored?.authorizer_refresh_token) throw Object.assign(new Error('no refresh token stored'), { code: 'NO_REFRESH_TOKEN' });
    const answer = await post(
      'cgi-bin/component/api_authorizer_token',
      { component_access_token: config.componentToken },
      { component_appid: component.appId, authorizer_appid: id, authorizer_refresh_token: stored.authorizer_refresh_token },
    );
    const now = Math.floor(Date.now() / 1000);
    await store.set(refreshKey(id), JSON.stringify({ authorizer_refresh_token: answer.authorizer_refresh_token, updated_at: now, updated_by: 'naive' }), 86_400);
    await post('cgi-bin/message/template/send', { access_token: answer.authorizer_access_token }, TEMPLATE);
  };
}

function wxkit() {
  const open = new OpenPlatform({
    ...config.component,
    baseUrl: config.baseUrl,
    cache: store,
    durableStore: store,
    timeoutMs: config.timeoutMs,
    cacheTimeoutMs: config.cacheTimeoutMs,
    fallbackDir: false,
    logger: false,
  });
  return (id) => open.officialAccount(id).templateMessage.send(TEMPLATE);
}

const send = config.mode === 'naive' ? naive() : wxkit();

process.once('message', async ({ ids }) => {
  let next = 0;
  const lane = async () => {
    while (next < ids.length) {
      const id = ids[next++];
      try {
        await send(id);
        process.send({ id, ok: true });
      } catch (error) {
        process.send({ id, ok: false, label: `${error?.code ?? error?.name}${error?.errcode ? ` ${error.errcode}` : ''}`, errcode: error?.errcode });
      }
    }
  };
  await Promise.all(Array.from({ length: config.concurrency }, lane));
  // Exit without closing, once the answers are out: a holder may be killed at any moment anyway.
  process.send({ end: true }, () => process.exit(0));
});
// Connected before it says it is ready: a holder's first store call would otherwise carry the connection's
// set-up within cacheTimeoutMs, which a loaded machine can exceed (the sends would fail on a slow start,
// not on a fault of the scenario). A read that fails is tried again, up to five times, each within the
// adapter's own connect timeout.
for (let attempt = 1; attempt <= 5; attempt += 1) {
  if (await store.get(refreshKey('connect')).then(() => true, () => false)) break;
}
process.send({ ready: true });
