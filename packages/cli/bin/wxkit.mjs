#!/usr/bin/env node
// The wxkit command; see `wxkit --help`.
import { main } from '../dist/main.js';

// A reader that went away (`wxkit token inspect | head -1`) is no failure of the command's: what could
// not be printed is dropped, and the exit code stays the command's (a token fetched is stored all the same).
for (const stream of [process.stdout, process.stderr]) {
  stream.on('error', (error) => {
    if (error.code !== 'EPIPE' && error.code !== 'ERR_STREAM_DESTROYED') throw error;
  });
}

process.exitCode = await main(process.argv.slice(2));
