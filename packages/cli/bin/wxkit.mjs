#!/usr/bin/env node
// The wxkit command; see `wxkit --help`.
import { main } from '../dist/index.js';

process.exitCode = await main(process.argv.slice(2));
