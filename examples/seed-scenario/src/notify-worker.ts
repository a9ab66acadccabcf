// Program 2: the notification worker, a separate deployment. It tells buyers their parcel shipped.
import { fingerprint, report, sendAll } from './report.js';
import { wechatFromEnv } from './wechat.js';

const { app, cache } = wechatFromEnv();
const { sent, errors } = await sendAll(Number(process.argv[2] ?? 5), (i) =>
  app.templateMessage.send({
    touser: process.env.WECHAT_OPENID ?? 'oBuyer',
    template_id: process.env.WECHAT_TEMPLATE_ID ?? 'TPL_SHIPPED',
    data: { first: { value: 'Your parcel is on its way' }, keyword1: { value: `SF${700000 + i}` } },
  }),
);
report({ program: 'notify-worker', sent, errors, token: fingerprint(await app.accessToken.getToken()) });
await app.close();
await cache.close();
