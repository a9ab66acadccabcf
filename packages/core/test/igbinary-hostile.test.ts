import { readFileSync } from 'node:fs';
import { describe, expect, it } from 'vitest';
import { IgbinaryFormatError, igbinaryUnserialize } from '../src/igbinary.js';

const fixture = JSON.parse(readFileSync(new URL('./fixtures/igbinary-vectors.json', import.meta.url), 'utf8')) as { vectors: { name: string; hex: string }[] };
let seed = 12345;
const rnd = () => ((seed = (seed * 1103515245 + 12345) & 0x7fffffff) / 0x7fffffff);

// A store may hold anything under a peer's key: whatever the bytes, the decoder answers a value or an
// IgbinaryFormatError (which the entry store turns into a logged miss), never another error.
describe('igbinary decoder on hostile input', () => {
  it('truncations, bit flips, random bodies and huge declared lengths throw IgbinaryFormatError only', () => {
    const seeds = fixture.vectors.map((v) => Buffer.from(v.hex, 'hex'));
    const bad: string[] = [];
    let n = 0;
    const tryOne = (buf: Buffer) => {
      n += 1;
      try {
        igbinaryUnserialize(buf.toString('latin1'));
      } catch (e) {
        if (!(e instanceof IgbinaryFormatError)) bad.push(`${(e as Error).constructor.name}: ${(e as Error).message} on ${buf.toString('hex').slice(0, 80)}`);
      }
    };
    for (const b of seeds) for (let i = 0; i <= b.length; i += 1) tryOne(b.subarray(0, i));
    for (let k = 0; k < 40000; k += 1) {
      const b = Buffer.from(seeds[Math.floor(rnd() * seeds.length)]!);
      const flips = 1 + Math.floor(rnd() * 4);
      for (let f = 0; f < flips; f += 1) b[4 + Math.floor(rnd() * Math.max(1, b.length - 4))] = Math.floor(rnd() * 256);
      tryOne(b);
    }
    for (let k = 0; k < 40000; k += 1) {
      const len = Math.floor(rnd() * 64);
      const b = Buffer.alloc(4 + len);
      b[3] = 2;
      for (let i = 4; i < b.length; i += 1) b[i] = rnd() < 0.5 ? Math.floor(rnd() * 0x23) : Math.floor(rnd() * 256);
      tryOne(b);
    }
    // hostile headers: huge counts/lengths
    for (const hex of ['0000000216ffffffff', '0000000213ffffffff41', '0000000219ffffffff', '00000002' + '14010600'.repeat(40) + '00', '000000021c00000000']) tryOne(Buffer.from(hex, 'hex'));
    expect(n).toBeGreaterThan(80_000);
    expect(bad.slice(0, 20)).toEqual([]);
  });
});
