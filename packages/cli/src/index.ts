export { main, mask } from './main.js';
export { EXIT } from './errors.js';
export { openStore, describeStore } from './stores.js';
export { parseApp, type AppRef } from './apps.js';
export { startTokenService, type TokenServiceOptions, type TokenService, type ServiceApp } from './serve.js';
export { loadServeConfig } from './serve-command.js';
export { runDemo } from './demo.js';
