#!/usr/bin/env node
// Runs the mock WeChat API server; see `wxkit-mock-wechat --help`.
import { main } from '../dist/cli.js';

process.exitCode = await main(process.argv.slice(2));
