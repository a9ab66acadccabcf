import { createCipheriv } from 'node:crypto';
import { describe, expect, it } from 'vitest';
import { ConfigError, MessageCrypto, MessageCryptoError } from '../src/index.js';
import { parseFlatXml } from '../src/open-platform/xml.js';

// WeChat's official vectors. Python: Tencent's WXBizMsgCrypt sample (Sample.py, "测试解密接口"),
// also carried by e.g. wechatpy tests/test_utils.py test_msg_signature_relative. Java: Tencent's
// sample test WXBizMsgCryptTest.java (randomStr "aaaabbbbccccdddd", appId "wxb11529c136998cb6").
const KEY = 'abcdefghijklmnopqrstuvwxyz0123456789ABCDEFG';
const PY = {
  token: 'spamtest',
  appId: 'wx2c2769f8efd9abc2',
  timestamp: '1409735669',
  nonce: '1320562132',
  msgSignature: '5d197aaffba7e9b25a30732f161a50dee96bd5fa',
  encrypt:
    'hyzAe4OzmOMbd6TvGdIOO6uBmdJoD0Fk53REIHvxYtJlE2B655HuD0m8KUePWB3+LrPXo87wzQ1QLvbeUgmBM4x6F8PGHQHFVAFmOD2LdJF9FrXpbUAh0B5GIItb52sn896wVsMSHGuPE328HnRGBcrS7C41IzDWyWNlZkyyXwon8T332jisa+h6tEDYsVticbSnyU8dKOIbgU6ux5VTjg3yt+WGzjlpKn6NPhRjpA912xMezR4kw6KWwMrCVKSVCZciVGCgavjIQ6X8tCOp3yZbGpy0VxpAe+77TszTfRd5RJSVO/HTnifJpXgCSUdUue1v6h0EIBYYI1BD1DlD+C0CR8e6OewpusjZ4uBl9FyJvnhvQl+q5rv1ixrcpCumEPo5MJSgM9ehVsNPfUM669WuMyVWQLCzpu9GhglF2PE=',
};
const JAVA = {
  token: 'pamtest',
  appId: 'wxb11529c136998cb6',
  random: 'aaaabbbbccccdddd',
  reply: '我是中文abcd123',
  encrypted: 'jn1L23DB+6ELqJ+6bruv21Y6MD7KeIfP82D6gU39rmkgczbWwt5+3bnyg5K55bgVtVzd832WzZGMhkP72vVOfg==',
};

const py = new MessageCrypto({ token: PY.token, encodingAESKey: KEY, appId: PY.appId });
const java = new MessageCrypto({ token: JAVA.token, encodingAESKey: KEY, appId: JAVA.appId });

function reasonOf(run: () => unknown): string | undefined {
  try {
    run();
  } catch (error) {
    expect(error).toBeInstanceOf(MessageCryptoError);
    expect((error as MessageCryptoError).code).toBe('ERR_WXKIT_MESSAGE_CRYPTO');
    return (error as MessageCryptoError).reason;
  }
  return undefined;
}

describe('MessageCrypto against WeChat official vectors', () => {
  it('computes msg_signature of the Python sample', () => {
    expect(py.signature(PY.timestamp, PY.nonce, PY.encrypt)).toBe(PY.msgSignature);
  });

  it('decrypts the Python sample to its XML message', () => {
    const xml = py.decrypt(PY);
    const fields = parseFlatXml(xml);
    expect(fields.ToUserName).toBe('gh_10f6c3c3ac5a');
    expect(fields.MsgType).toBe('text');
    expect(fields.Content).toBe('abcdteT');
  });

  it('encrypts the Java sample byte for byte with its fixed random string, and decrypts it back', () => {
    expect(java.encrypt(JAVA.reply, Buffer.from(JAVA.random))).toBe(JAVA.encrypted);
    expect(java.decryptText(JAVA.encrypted)).toBe(JAVA.reply);
  });

  it('round-trips any message, and pads to 32-byte blocks', () => {
    for (const length of [0, 1, 11, 12, 13, 43, 44, 45, 1000]) {
      const message = 'x'.repeat(length);
      const encrypted = py.encrypt(message);
      // 16 random + 4 length + message + 18-byte app id, padded to a multiple of 32 (a full block when already aligned).
      const plain = 16 + 4 + length + PY.appId.length;
      expect(Buffer.from(encrypted, 'base64').length).toBe(plain + (32 - (plain % 32)));
      expect(py.decryptText(encrypted)).toBe(message);
    }
  });
});

describe('MessageCrypto refuses what is not a valid message for this app', () => {
  it('a wrong or missing signature', () => {
    expect(reasonOf(() => py.decrypt({ ...PY, msgSignature: PY.msgSignature.replace(/^5/, '6') }))).toBe('signature');
    expect(reasonOf(() => py.decrypt({ ...PY, nonce: '1320562133' }))).toBe('signature');
    expect(reasonOf(() => py.decrypt({ ...PY, msgSignature: '' }))).toBe('signature');
    expect(reasonOf(() => py.decrypt({ ...PY, encrypt: '' }))).toBe('format');
  });

  it("a msg_signature, timestamp or nonce that is no string (a parsed query's object or array) is a format error, not a TypeError", () => {
    // Express 4 parses ?msg_signature[toString]=x into { toString: 'x' }, which String() cannot convert.
    for (const odd of [{ toString: 'x' }, Object.create(null), ['1409735669', '1'], 1.5, -1, undefined]) {
      for (const field of ['msgSignature', 'timestamp', 'nonce'] as const) {
        const message = { ...PY, [field]: odd } as never;
        expect(reasonOf(() => py.decrypt(message)), `${field}: ${typeof odd}`).toBe('format');
        expect(py.verify(message)).toBe(false);
      }
    }
    expect(reasonOf(() => py.decrypt({ ...PY, msgSignature: 1409735669 } as never))).toBe('format');
  });

  it('a timestamp and nonce a query parser turned into numbers are read as their digits', () => {
    const numeric = { ...PY, timestamp: Number(PY.timestamp), nonce: Number(PY.nonce) } as never;
    expect(py.verify(numeric)).toBe(true);
    expect(py.decrypt(numeric)).toBe(py.decrypt(PY));
  });

  it('another app id at the end of the plaintext', () => {
    const other = new MessageCrypto({ token: PY.token, encodingAESKey: KEY, appId: 'wx0000000000000000' });
    expect(reasonOf(() => other.decrypt(PY))).toBe('appid');
  });

  it('another EncodingAESKey (the pad comes out wrong)', () => {
    const other = new MessageCrypto({ token: PY.token, encodingAESKey: 'A'.repeat(43), appId: PY.appId });
    expect(reasonOf(() => other.decrypt(PY))).toBe('padding');
  });

  it('not base64, not whole blocks, a pad byte over 32, a length field past the end', () => {
    expect(reasonOf(() => py.decryptText('not base64 at all!'))).toBe('format');
    expect(reasonOf(() => py.decryptText(Buffer.alloc(20).toString('base64')))).toBe('format');
    // Build plaintexts by hand and encrypt them with the same key, to reach the checks past the pad.
    const key = Buffer.from(`${KEY}=`, 'base64');
    const seal = (plain: Buffer) => {
      const cipher = createCipheriv('aes-256-cbc', key, key.subarray(0, 16)).setAutoPadding(false);
      return Buffer.concat([cipher.update(plain), cipher.final()]).toString('base64');
    };
    expect(reasonOf(() => py.decryptText(seal(Buffer.alloc(64, 33))))).toBe('padding');
    expect(reasonOf(() => py.decryptText(seal(Buffer.concat([Buffer.alloc(63, 1), Buffer.from([0])]))))).toBe('padding');
    const header = Buffer.alloc(20);
    header.writeUInt32BE(1000, 16);
    expect(reasonOf(() => py.decryptText(seal(Buffer.concat([header, Buffer.alloc(12, 12)]))))).toBe('length');
  });

  it('an EncodingAESKey that is not 43 letters and digits is a ConfigError naming the option', () => {
    for (const encodingAESKey of ['', KEY.slice(1), `${KEY}=`, `${KEY.slice(1)}+`]) {
      expect(() => new MessageCrypto({ token: 't', encodingAESKey, appId: 'wx1' })).toThrow(ConfigError);
    }
    expect(() => new MessageCrypto({ token: 't', encodingAESKey: 'x', appId: 'wx1' })).toThrow(/options\.encodingAESKey/);
  });

  it('never puts the token or key in an error message', () => {
    const errors: Error[] = [];
    for (const run of [() => py.decrypt({ ...PY, msgSignature: 'x' }), () => java.decrypt({ ...PY, msgSignature: java.signature(PY.timestamp, PY.nonce, PY.encrypt) })]) {
      try {
        run();
      } catch (error) {
        errors.push(error as Error);
      }
    }
    expect(errors.map((error) => (error as MessageCryptoError).reason)).toEqual(['signature', 'appid']);
    for (const error of errors) {
      for (const secret of [PY.token, JAVA.token, KEY]) expect(error.message).not.toContain(secret);
    }
  });
});
