// Refresh-token rotation under faults: authorizers refreshed by holder processes that are SIGKILLed at
// random, with now and then an answer WeChat sends that never arrives (WeChat rotated the refresh token;
// the holder never hears the new one). Shared by `pnpm bench -- refresh-kills` and by the fault suite's
// small-scale test, which asserts the same counts.
import { fork } from 'node:child_process';
import { fileURLToPath } from 'node:url';
import { OpenPlatform } from '@wxkit/core';
import { RedisCache } from '@wxkit/redis';

const workerScript = fileURLToPath(new URL('./rotation-worker.mjs', import.meta.url));
const TEMPLATE = { touser: 'oBenchUser', template_id: 'TPL_BENCH', data: { first: { value: 'Paid' } } };
/** A send is tried this many times before its account counts as lost for the run. */
const ATTEMPTS = 5;
/** A failed send is retried after this long: wxkit's fleet backs off 1 s (±20 %) after a failed refresh. */
const RETRY_AFTER_MS = 1500;
/** The verifying send after the rounds is tried this many times while its failures are not WeChat's. */
const VERIFY_ATTEMPTS = 3;

const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));
const between = ([min, max]) => min + Math.random() * (max - min);

function shuffled(values) {
  const out = [...values];
  for (let i = out.length - 1; i > 0; i -= 1) {
    const j = Math.floor(Math.random() * (i + 1));
    [out[i], out[j]] = [out[j], out[i]];
  }
  return out;
}

/**
 * Runs the scenario for one way of refreshing (`wxkit` or `naive`) on a fresh component of `mock`, with
 * the refresh tokens in the Redis at `redisUrl` (a durable store, as docs/open-platform.md asks).
 *
 * Each round, every authorizer's access token is dead, so each send refreshes; `holders` processes of
 * `concurrency` sends each work through the authorizers while the driver SIGKILLs a random holder every
 * `killEveryMs` (`kills` per round); the round's first `lostAnswers` api_authorizer_token calls lose
 * their answers. The accounts of a killed holder go to a new one; a failed send is retried (5 tries). After the rounds, a fresh process refreshes every
 * authorizer once more from what is stored: one that cannot must be authorized again by hand.
 */
export async function rotationUnderKills({
  mock,
  redisUrl,
  mode = 'wxkit',
  authorizers = 1000,
  rounds = 3,
  holders = 4,
  concurrency = 8,
  kills = 10,
  killEveryMs = [100, 300],
  lostAnswers = 5,
  timeoutMs = 1000,
  cacheTimeoutMs = 250,
}) {
  const started = performance.now();
  const component = mock.createComponent();
  const store = new RedisCache(redisUrl);
  const accounts = mock.authorizeMany(component.appId, authorizers);
  const ids = accounts.map((account) => account.authorizerAppId);
  const refreshKey = (id) => `wechat:authorizer_refresh_token:${component.appId}:${id}`;
  const accessKey = (id) => `wechat:authorizer_access_token:${component.appId}:${id}`;
  const now = Math.floor(Date.now() / 1000);
  const ticket = mock.issueVerifyTicket(component.appId);
  await store.set(`wechat:component_verify_ticket:${component.appId}`, JSON.stringify({ component_verify_ticket: ticket, create_time: now, received_at: now }), 86_400);
  for (let i = 0; i < accounts.length; i += 200) {
    await Promise.all(
      accounts
        .slice(i, i + 200)
        .map(({ authorizerAppId, refreshToken }) =>
          store.set(refreshKey(authorizerAppId), JSON.stringify({ authorizer_refresh_token: refreshToken, updated_at: now, updated_by: 'seed' }), 86_400),
        ),
    );
  }
  // The naive holders take one component token from here; wxkit's share theirs through the store.
  const componentToken =
    mode === 'naive'
      ? (
          await (
            await fetch(`${mock.url}/cgi-bin/component/api_component_token`, {
              method: 'POST',
              body: JSON.stringify({ component_appid: component.appId, component_appsecret: component.secret, component_verify_ticket: ticket }),
            })
          ).json()
        ).component_access_token
      : undefined;
  const workerConfig = JSON.stringify({
    mode,
    redisUrl,
    baseUrl: mock.url,
    component: { appId: component.appId, secret: component.secret, token: component.token, encodingAESKey: component.encodingAESKey },
    componentToken,
    concurrency,
    timeoutMs,
    cacheTimeoutMs,
  });

  const totals = { kills: 0, lostAnswers: 0, holdersStarted: 0, givenUp: new Set(), errors: {} };
  for (let round = 0; round < rounds; round += 1) {
    if (round > 0) {
      // Every access token dies (upstream and in the store): each account's next send refreshes.
      for (const id of ids) mock.invalidateTokens(id);
      await Promise.all(ids.map((id) => store.delete(accessKey(id))));
    }
    await runRound({ ids: ids.filter((id) => !totals.givenUp.has(id)), workerConfig, holders, kills, killEveryMs, lostAnswers, mock, totals, mode });
    mock.clearFaults();
  }
  const counters = ids.map((id) => mock.counters(id));
  const refreshes = counters.reduce((sum, c) => sum + c.authorizerTokenRequests, 0);
  const rejected61023 = counters.reduce((sum, c) => sum + (c.errcodes['61023'] ?? 0), 0);
  const current = async (id) => JSON.parse((await store.get(refreshKey(id))) ?? 'null')?.authorizer_refresh_token;
  const staleAfterRun = (await Promise.all(ids.map(async (id) => (await current(id)) !== mock.authorizerRefreshToken(id)))).filter(Boolean).length;

  // A fresh process refreshes every authorizer from what is stored, its own way.
  const reauthorize = new Set();
  const verify = await verifier(mode, { mock, component, store, componentToken, timeoutMs });
  for (let i = 0; i < ids.length; i += 50) {
    await Promise.all(
      ids.slice(i, i + 50).map(async (id) => {
        mock.invalidateTokens(id);
        await store.delete(accessKey(id));
        await verified(verify, id).catch(() => reauthorize.add(id));
      }),
    );
  }
  await verify.close();
  const lostRefreshTokens = (await Promise.all(ids.map(async (id) => (await current(id)) !== mock.authorizerRefreshToken(id)))).filter(Boolean).length;
  await store.close();
  return {
    authorizers,
    rounds,
    kills: totals.kills,
    lostAnswers: totals.lostAnswers,
    holdersStarted: totals.holdersStarted,
    refreshes,
    rejected61023,
    sendsGivenUp: totals.givenUp.size,
    staleAfterRun,
    lostRefreshTokens,
    reauthorizationNeeded: reauthorize.size,
    wallMs: performance.now() - started,
    errors: totals.errors,
  };
}

/** One round: every id answered (or given up after ATTEMPTS), holders killed and replaced on the way. */
async function runRound({ ids, workerConfig, holders, kills, killEveryMs, lostAnswers, mock, totals, mode }) {
  const pending = new Set(ids);
  const attempts = new Map();
  let requeued = [];
  const retrying = new Set();
  /** Live holders, each with the ids it was given and has not answered yet. */
  const live = new Map();
  let done;
  const finished = new Promise((resolve) => (done = resolve));
  let firstAnswer;
  const answered = new Promise((resolve) => (firstAnswer = resolve));

  const answer = (assigned, message) => {
    if (!message.id) return;
    assigned.delete(message.id);
    if (message.ok) {
      pending.delete(message.id);
      firstAnswer();
      return;
    }
    totals.errors[message.label] = (totals.errors[message.label] ?? 0) + 1;
    const tries = (attempts.get(message.id) ?? 0) + 1;
    attempts.set(message.id, tries);
    // 61023 is final for a refresher that keeps no way back to the current token; 61003: revoked.
    const final = message.errcode === 61003 || (mode === 'naive' && message.errcode === 61023);
    if (final || tries >= ATTEMPTS) {
      pending.delete(message.id);
      totals.givenUp.add(message.id);
    } else {
      // Retried by the next holder once the fleet's back-off after a failed refresh (1 s) has passed.
      const timer = setTimeout(() => {
        retrying.delete(timer);
        requeued.push(message.id);
        refill();
      }, RETRY_AFTER_MS);
      retrying.add(timer);
    }
  };

  const spawn = (slice) => {
    const assigned = new Set(slice);
    const child = fork(workerScript, [], { env: { ...process.env, WXKIT_ROTATION: workerConfig }, stdio: ['ignore', 'ignore', 'inherit', 'ipc'] });
    totals.holdersStarted += 1;
    const holder = { child, assigned, ready: false };
    live.set(child, holder);
    child.on('message', (message) => {
      if (message.ready) {
        holder.ready = true;
        child.send({ ids: slice });
      } else answer(assigned, message);
    });
    // 'close': its last answers, sent just before it died, are read before its ids go back to the queue.
    child.once('close', () => {
      live.delete(child);
      // What it was given and did not answer goes to the next holder, with what others failed.
      requeued.push(...[...assigned].filter((id) => pending.has(id)));
      refill();
    });
  };

  const refill = () => {
    requeued = requeued.filter((id) => pending.has(id));
    if (requeued.length > 0 && live.size < holders) {
      const slice = shuffled(requeued);
      requeued = [];
      spawn(slice);
    }
    if (pending.size === 0 && live.size === 0 && retrying.size === 0) done();
  };

  // The round's first refreshes lose their answers: WeChat rotates, the holder never hears it. Every
  // account refreshes each round, so each of these is used.
  if (lostAnswers > 0 && ids.length > lostAnswers) {
    mock.injectFault({ kind: 'lost-answer', path: 'cgi-bin/component/api_authorizer_token', times: lostAnswers });
    totals.lostAnswers += lostAnswers;
  }
  const order = shuffled(ids);
  const per = Math.ceil(order.length / holders);
  for (let i = 0; i < holders && i * per < order.length; i += 1) spawn(order.slice(i * per, (i + 1) * per));
  if (order.length === 0) done();

  // The faults: a random ready holder SIGKILLed every killEveryMs while the round runs.
  let killsLeft = kills;
  let roundOver = false;
  void finished.then(() => (roundOver = true));
  // Not before the round's first answer: WeChat acts in order of arrival, so by then it has acted on
  // every lost-answer request (the round's first refreshes), and a kill cannot undo one of them.
  await Promise.race([answered, finished]);
  while (!roundOver && killsLeft > 0) {
    await Promise.race([sleep(between(killEveryMs)), finished]);
    if (roundOver) break;
    const ready = [...live.values()].filter((holder) => holder.ready && holder.child.exitCode === null);
    if (killsLeft > 0 && ready.length > 0) {
      ready[Math.floor(Math.random() * ready.length)].child.kill('SIGKILL');
      killsLeft -= 1;
      totals.kills += 1;
    }
  }
  await finished;
}

/** How a fresh process refreshes an authorizer from the store: wxkit's OpenPlatform, or the naive read-call-write. */
/**
 * The verifying send for `id`: an account needs its admin only when WeChat refuses what is stored. A
 * failure WeChat did not answer (a timeout, a store call cut short on a busy machine) says nothing of
 * that, and the send is tried again, up to VERIFY_ATTEMPTS times.
 */
async function verified(verify, id) {
  for (let attempt = 1; ; attempt += 1) {
    try {
      return await verify.send(id);
    } catch (error) {
      if (attempt >= VERIFY_ATTEMPTS || typeof error?.errcode === 'number') throw error;
      await sleep(RETRY_AFTER_MS);
    }
  }
}

async function verifier(mode, { mock, component, store, componentToken, timeoutMs }) {
  if (mode === 'wxkit') {
    const open = new OpenPlatform({
      ...{ appId: component.appId, secret: component.secret, token: component.token, encodingAESKey: component.encodingAESKey },
      baseUrl: mock.url,
      cache: store,
      durableStore: store,
      // Not under faults: the fresh process has the usual deadlines, which a busy machine does not cut short.
      timeoutMs: Math.max(timeoutMs, 5_000),
      fallbackDir: false,
      logger: false,
      maxClients: 100,
    });
    return { send: (id) => open.officialAccount(id).templateMessage.send(TEMPLATE), close: () => open.close() };
  }
  const post = async (path, query, json) => {
    const body = await (await fetch(`${mock.url}/${path}?${new URLSearchParams(query)}`, { method: 'POST', body: JSON.stringify(json) })).json();
    if (body.errcode) throw Object.assign(new Error(`errcode ${body.errcode}`), { errcode: body.errcode });
    return body;
  };
  return {
    async send(id) {
      const key = `wechat:authorizer_refresh_token:${component.appId}:${id}`;
      const stored = JSON.parse((await store.get(key)) ?? 'null');
      const answer = await post(
        'cgi-bin/component/api_authorizer_token',
        { component_access_token: componentToken },
        { component_appid: component.appId, authorizer_appid: id, authorizer_refresh_token: stored?.authorizer_refresh_token },
      );
      await store.set(key, JSON.stringify({ authorizer_refresh_token: answer.authorizer_refresh_token, updated_at: Math.floor(Date.now() / 1000), updated_by: 'naive' }), 86_400);
      await post('cgi-bin/message/template/send', { access_token: answer.authorizer_access_token }, TEMPLATE);
    },
    close: async () => undefined,
  };
}
