import { describe, expect, it } from 'vitest';
import { parseFlatXml } from '../src/open-platform/xml.js';

// Review: handleCallback parses the raw, unauthenticated body (parseFlatXml(body).Encrypt) before any
// signature check. The field regex scans lazily to the end of the input from every unclosed tag: O(n²).
describe('review: parseFlatXml on hostile input', () => {
  it('parses a 100 KB body of unclosed tags quickly (FAILS: quadratic)', () => {
    for (const n of [5_000, 10_000, 20_000, 33_000]) {
      const body = `<xml>${'<a>'.repeat(n)}</xml>`;
      const started = performance.now();
      parseFlatXml(body);
      console.log(`${body.length} bytes: ${Math.round(performance.now() - started)} ms`);
    }
    const body = `<xml>${'<a>'.repeat(33_000)}</xml>`;
    const started = performance.now();
    parseFlatXml(body);
    expect(performance.now() - started).toBeLessThan(200);
  }, 120_000);
});
