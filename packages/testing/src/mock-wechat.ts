// Kept so imports of './mock-wechat.js' keep working; the mock lives in ./mock/.
export * from './mock/index.js';
