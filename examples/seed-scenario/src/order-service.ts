// Program 1: the order service. When an order is paid, it tells the buyer.
import { fingerprint, report, sendAll } from './report.js';
import { wechatFromEnv } from './wechat.js';

const { app, cache } = wechatFromEnv();
const { sent, errors } = await sendAll(Number(process.argv[2] ?? 5), (i) =>
  app.templateMessage.send({
    touser: process.env.WECHAT_OPENID ?? 'oBuyer',
    template_id: process.env.WECHAT_TEMPLATE_ID ?? 'TPL_ORDER_PAID',
    url: `https://shop.example/orders/${1000 + i}`,
    data: { first: { value: 'Payment received' }, keyword1: { value: `#${1000 + i}` } },
  }),
);
report({ program: 'order-service', sent, errors, token: fingerprint(await app.accessToken.getToken()) });
await app.close();
await cache.close();
