import { spawnSync } from 'node:child_process';
import { readFileSync } from 'node:fs';
import { describe, expect, it } from 'vitest';
import { IgbinaryFormatError, igbinarySerialize, igbinaryUnserialize, type IgbinaryValue } from '../src/igbinary.js';

// Vectors written by PHP's own igbinary_serialize() (fixtures/igbinary-vectors.php, PHP 8.2 with
// igbinary 3.2.13 as Debian ships them); the file names the versions.
const fixture = JSON.parse(readFileSync(new URL('./fixtures/igbinary-vectors.json', import.meta.url), 'utf8')) as {
  vectors: { name: string; hex: string }[];
};
const vector = (name: string) => {
  const found = fixture.vectors.find((v) => v.name === name);
  if (!found) throw new Error(`no vector ${name}`);
  return Buffer.from(found.hex, 'hex').toString('latin1');
};
const arr = (record: Record<string, IgbinaryValue>): IgbinaryValue => ({ __php: 'array', entries: Object.entries(record) });
const TOKEN136 = '86_AbCdEfGhIjKlMnOpQrStUvWxYz0123456789-_'.repeat(4).slice(0, 123) + 'ABCDEFGHIJKLM';

describe('igbinary', () => {
  it('decodes every vector PHP wrote, and writes the arrays and scalars back byte for byte', () => {
    expect(fixture.vectors.length).toBeGreaterThan(25);
    let written = 0;
    for (const { name, hex } of fixture.vectors) {
      const raw = Buffer.from(hex, 'hex').toString('latin1');
      const value = igbinaryUnserialize(raw);
      if (typeof value === 'object' && value?.__php === 'object') continue;
      expect(Buffer.from(igbinarySerialize(value), 'latin1').toString('hex'), name).toBe(hex);
      written += 1;
    }
    expect(written).toBe(fixture.vectors.length - 2);
  });

  it('reads the values peers store: a 136-character token (length byte 0x88), EasyWeChat 4 arrays, integers of every width', () => {
    expect(TOKEN136).toHaveLength(136);
    expect(vector('string of 136 characters (a WeChat token)').charCodeAt(5)).toBe(0x88);
    expect(igbinaryUnserialize(vector('string of 136 characters (a WeChat token)'))).toBe(TOKEN136);
    expect(igbinaryUnserialize(vector('EasyWeChat 4 token array'))).toEqual(arr({ access_token: TOKEN136, expires_in: 7200 }));
    expect(igbinaryUnserialize(vector('EasyWeChat 4 ticket answer'))).toEqual(arr({ errcode: 0, errmsg: 'ok', ticket: TOKEN136, expires_in: 7200 }));
    expect(igbinaryUnserialize(vector('string of 300 characters (string16)'))).toBe('x'.repeat(300));
    const ints: [string, number][] = [['int 7200', 7200], ['int -1', -1], ['int -65535', -65535], ['int 4294967296', 4294967296], ['int -4294967296', -4294967296], ['int 9007199254740991', 9007199254740991]];
    for (const [name, n] of ints) expect(igbinaryUnserialize(vector(name)), name).toBe(n);
    expect(igbinaryUnserialize(vector('double 0.5'))).toBe(0.5);
    expect(igbinaryUnserialize(vector('null'))).toBeNull();
    expect(igbinaryUnserialize(vector('UTF-8 string'))).toBe(Buffer.from('令牌🚀', 'utf8').toString('latin1'));
  });

  it('follows string back-references, for keys and values alike', () => {
    expect(igbinaryUnserialize(vector('repeated string values (string id back-references)'))).toEqual(arr({ a: 'same', b: 'same', c: 'a' }));
    expect(igbinaryUnserialize(vector('repeated keys in nested arrays'))).toEqual({
      __php: 'array',
      entries: [
        [0, arr({ k: 1 })],
        [1, arr({ k: 2 })],
      ],
    });
  });

  it('reads objects: Symfony 6.4 value wrapper and stdClass, with their class names', () => {
    const wrapper = igbinaryUnserialize(vector('Symfony Cache 6.4 value wrapper'));
    expect(wrapper).toMatchObject({ __php: 'object', className: '\u00a9' });
    expect((wrapper as { entries: [string, unknown][] }).entries[0]![1]).toBe(TOKEN136);
    expect(igbinaryUnserialize(vector('stdClass'))).toEqual({ __php: 'object', className: 'stdClass', entries: [['access_token', 'TOKEN123'], ['expires_in', 7200]] });
  });

  it('refuses what it does not read, with IgbinaryFormatError: truncation, trailing bytes, references, bad back-references, other versions', () => {
    const token = vector('EasyWeChat 4 token array');
    const bad = [
      token.slice(0, -1),
      `${token}\u0000`,
      '\u0000\u0000\u0000\u0001\u0000',
      's:8:"TOKEN123";',
      '\u0000\u0000\u0000\u0002\u0014\u0001\u0006\u0000\u0025\u0000',
      '\u0000\u0000\u0000\u0002\u0014\u0001\u0006\u0000\u0001\u0000',
      '\u0000\u0000\u0000\u0002\u000e\u0005',
      '\u0000\u0000\u0000\u0002\u001d\u0001',
      '\u0000\u0000\u0000\u0002',
      `\u0000\u0000\u0000\u0002${'\u0014\u0001\u0006\u0000'.repeat(40)}\u0000`,
    ];
    for (const raw of bad) expect(() => igbinaryUnserialize(raw), JSON.stringify(raw)).toThrow(IgbinaryFormatError);
  });

  it('PHP itself reads what wxkit writes (live, through php -r with the igbinary extension)', () => {
    const values: IgbinaryValue[] = [
      TOKEN136,
      'x'.repeat(70_000),
      arr({ access_token: TOKEN136, expires_in: 7200 }),
      arr({ errcode: 0, errmsg: 'ok', ticket: TOKEN136, expires_in: 7200 }),
      arr({ a: 'same', b: 'same', c: 'a', n: -4294967296 }),
      { __php: 'array', entries: Array.from({ length: 300 }, (_, i) => [i, 'v'] as [number, string]) },
    ];
    const input = values.map((v) => Buffer.from(igbinarySerialize(v), 'latin1').toString('hex')).join('\n');
    // PHP decodes each line and writes it again: the same bytes back means PHP read the same value.
    const php = spawnSync('php', ['-r', 'while (($l = fgets(STDIN)) !== false) { $v = igbinary_unserialize(hex2bin(trim($l))); echo bin2hex(igbinary_serialize($v)), ":", json_encode(is_array($v) ? count($v) : strlen($v)), "\\n"; }'], {
      input,
      encoding: 'utf8',
    });
    expect(php.stderr).toBe('');
    const lines = php.stdout.trim().split('\n');
    expect(lines.map((line) => line.split(':')[0])).toEqual(input.split('\n'));
    expect(lines.map((line) => Number(line.split(':')[1]))).toEqual([136, 70_000, 2, 4, 4, 300]);
  });
});
