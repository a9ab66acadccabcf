// One demo worker: its own OfficialAccount and its own client of the shared store, like a separate
// program on the same host. It sends when the demo tells it to and reports what happened.
import { OfficialAccount } from '@wxkit/core';
import { openStore } from './stores.js';

interface DemoConfig {
  appId: string;
  secret: string;
  baseUrl?: string;
  endpoint: 'stable' | 'classic';
  store: string;
  template: { openid?: string; templateId?: string };
  /** The demo's other system refreshes the token behind the workers' backs (mock only). */
  otherSystem: boolean;
}

const config = JSON.parse(process.env.WXKIT_DEMO ?? 'null') as DemoConfig | null;
if (!config || !process.send) throw new Error('the demo starts its workers itself');
// The store's adapter is loaded as the worker starts (openStore), so the worker is an async function.
async function main(config: DemoConfig): Promise<void> {
  const cache = await openStore(config.store);

  // Count what this process did from wxkit's own log events: tokens fetched, tokens WeChat rejected.
  const counts = { fetches: 0, rejected: 0 };
  const app = new OfficialAccount({
    appId: config.appId,
    secret: config.secret,
    ...(config.baseUrl ? { baseUrl: config.baseUrl } : {}),
    tokenEndpoint: config.endpoint,
    cache,
    logger: {
      warn: (fields, message) => {
        // Step 2's other system fetched the token without writing to the store: the warning a fleet
        // should alert on is the one the demo sets out to show.
        const expected = config.otherSystem && fields.event === 'access_token.invalidated_externally';
        process.stderr.write(`  [worker ${process.pid}] ${expected ? "expected here, step 2's other system refreshed the token: " : ''}${message}\n`);
      },
    },
  });
  app.on('access_token.fetched', () => (counts.fetches += 1));
  app.on('access_token.invalidated', () => (counts.rejected += 1));

  let serial = 0;
  async function sendOne(): Promise<void> {
    if (!config.template.openid || !config.template.templateId) {
      await app.client.get('cgi-bin/get_api_domain_ip');
      return;
    }
    await app.templateMessage.send({
      touser: config.template.openid,
      template_id: config.template.templateId,
      data: { first: { value: `order ${process.pid}-${serial++} paid` } },
    });
  }

  process.on('message', async (message: { type: 'send'; count: number } | { type: 'exit' }) => {
    if (message.type === 'exit') {
      await app.close();
      await cache.close?.();
      process.exit(0);
    }
    const before = { ...counts };
    const results = await Promise.allSettled(Array.from({ length: message.count }, sendOne));
    const failures = results.filter((result): result is PromiseRejectedResult => result.status === 'rejected');
    process.send!({
      sent: results.length - failures.length,
      fetches: counts.fetches - before.fetches,
      rejected: counts.rejected - before.rejected,
      errors: failures.map(({ reason }) => {
        const error = reason as { code?: string; errcode?: number; message?: string };
        return `${error.code ?? 'ERROR'}${error.errcode ? ` ${error.errcode}` : ''}: ${error.message}`;
      }),
    });
  });
  process.send!({ ready: true });
}

main(config).catch((error: unknown) => {
  // As an uncaught exception would end it: the demo reports the worker's exit.
  process.stderr.write(`${(error as Error).stack ?? String(error)}\n`);
  process.exit(1);
});
