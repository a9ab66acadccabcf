// The mock WeChat API server: model.ts (WeChat's state: tokens, grace, quotas, clock), routes.ts (the
// API paths), faults.ts (fault injection), server.ts (HTTP and the control endpoints).
export { startMockWeChat, type MockWeChat, type MockWeChatOptions } from './server.js';
export type { MockApp, MockWorkApp, MockQuotas, MockCounters } from './model.js';
export type { MockFault, MockFaultKind } from './faults.js';
export type { MockComponent, MockAuthorizeOptions, MockAuthorization, MockAuthorizedAccount, MockPushResult } from './open-platform.js';
