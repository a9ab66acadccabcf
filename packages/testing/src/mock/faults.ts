import { randomBytes } from 'node:crypto';
import type { ServerResponse } from 'node:http';
import { FIRST_MSGID, errorBody, tokenValue, type AppState, type WeChatModel } from './model.js';


/** Ways to answer badly, for fault tests. */
export type MockFaultKind =
  /** That status with a short HTML body, as a gateway in front of WeChat answers. */
  | 'http-500'
  | 'http-502'
  /** 200 with an HTML page (a captive portal, a proxy's login page). */
  | 'html'
  /** 200, correctly framed (Content-Length matches), but the JSON is cut in half. */
  | 'truncated-json'
  /** 200, valid JSON of the wrong types: `{"access_token":123,"expires_in":"7200"}`. */
  | 'wrong-types'
  /** 200, `{"access_token":"","expires_in":7200}` (a ticket endpoint gets an empty ticket). */
  | 'empty-token'
  /** 200, `sizeBytes` of JSON-looking data that never closes. */
  | 'huge'
  /** No answer at all: headers are never sent. `close()` cuts it. */
  | 'hang'
  /** Headers, then one byte every `intervalMs`, forever. `close()` cuts it. */
  | 'slow-body'
  /** Headers and part of the body, then the connection is destroyed. */
  | 'reset'
  /** A WeChat error: `{"errcode": errcode, "errmsg": "… rid: …"}`, HTTP 200. */
  | 'errcode'
  /**
   * WeChat handles the request (a token is issued, a refresh token rotated), but the answer never
   * arrives: the connection hangs as with `hang`. What a client sees when the network fails after
   * WeChat acted. `close()` cuts it.
   */
  | 'lost-answer'
  /**
   * WeChat handles the request, and its JSON answer arrives with one field replaced by `value` (a
   * refresh token of the wrong type, or a garbled or huge one). An answer WeChat refuses with an
   * errcode arrives as it is.
   */
  | 'field'
  /** A seeded random mix of all of the above and of malformed answers, now and then a valid one. */
  | 'fuzz';

/** A fault queued with `injectFault()`: it answers the next `times` requests whose path matches, before normal handling. */
export interface MockFault {
  kind: MockFaultKind;
  /** e.g. `cgi-bin/token` (leading slash optional). Default: any path. */
  path?: string;
  /** How many matching requests it answers; `Infinity` until `clearFaults()`. @default 1 */
  times?: number;
  /** For `errcode`. @default -1 (system error) */
  errcode?: number;
  /** For `huge`, in bytes. @default 5 MiB */
  sizeBytes?: number;
  /** For `slow-body`: ms between bytes. @default 200 */
  intervalMs?: number;
  /** For `fuzz`: seed of the answers' random sequence, so a failing run can be replayed. @default 1 */
  seed?: number;
  /** For `field`: the field replaced, dot-separated inside objects (`authorization_info.authorizer_refresh_token`). */
  field?: string;
  /** For `field`: what the field holds instead, any JSON value. */
  value?: unknown;
  /** For `field`: another field of the answer (dot-separated) whose value it holds instead of `value`: the answer's access token, say. */
  from?: string;
}


const FAULT_KINDS = new Set<MockFaultKind>([
  'http-500',
  'http-502',
  'html',
  'truncated-json',
  'wrong-types',
  'empty-token',
  'huge',
  'hang',
  'slow-body',
  'reset',
  'errcode',
  'fuzz',
  'lost-answer',
  'field',
]);
/** Paths whose answers are token-shaped: a fault there imitates a token answer. */
const TOKEN_PATHS = new Set(['cgi-bin/token', 'cgi-bin/stable_token', 'cgi-bin/gettoken']);

/**
 * mulberry32: a small seeded PRNG, numbers in [0, 1), so that fuzz faults (and a test's own chaos)
 * replay exactly from their seed.
 */
export function seededRandom(seed: number): () => number {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

/** What a fuzz answer does: a JSON or text body with a status, or one of the transport faults. */
type FuzzAnswer = { status: number; body: string; type?: string } | { fault: 'hang' | 'slow-body' | 'reset' | 'huge' };

/**
 * Random answers in the shapes that break clients: valid JSON with wrong types or missing fields,
 * empty and odd tokens, non-object JSON, errcodes of every kind, HTML, truncation, odd statuses,
 * huge bodies, a trickle, a reset, no answer at all; and now and then a valid one.
 */
function fuzzAnswer(random: () => number, tokenPath: boolean): FuzzAnswer {
  const pick = <T>(items: T[]): T => items[Math.floor(random() * items.length)]!;
  const token = () => `${Math.floor(random() * 90 + 10)}_${randomBytes(40).toString('base64url')}`;
  const oddValues = [null, true, 0, -1, 1.5, 1e21, '', ' ', '7200', [], {}, ['x'], { access_token: 'x' }, 'a b', 'a\u0000b', '令牌', 'x'.repeat(5000)];
  const kind = Math.floor(random() * 14);
  switch (kind) {
    case 0:
      return tokenPath
        ? { status: 200, body: JSON.stringify({ access_token: token(), expires_in: 7200 }) }
        : { status: 200, body: `{"errcode":0,"errmsg":"ok","msgid":${Math.floor(random() * 1e9)}}` };
    case 1:
      return { status: 200, body: JSON.stringify({ access_token: pick(oddValues), expires_in: 7200 }) };
    case 2:
      return { status: 200, body: JSON.stringify({ access_token: token(), expires_in: pick(oddValues) }) };
    case 3:
      return { status: 200, body: JSON.stringify(pick([{}, { expires_in: 7200 }, { access_token: token() }, { errmsg: 'ok' }, { errcode: 0 }])) };
    case 4:
      return { status: 200, body: JSON.stringify(pick([[], 'access_token', 123, null, true, [{ access_token: token(), expires_in: 7200 }]])) };
    case 5:
      return { status: 200, body: JSON.stringify({ errcode: pick([-1, 40001, 40013, 40125, 45009, 99999, 1.5, '40001', null]), errmsg: pick(['err rid: 1-2-3', '', 7]) }) };
    case 6:
      return { status: 200, body: '<html><head><title>502</title></head><body>gateway</body></html>', type: 'text/html' };
    case 7: {
      const full = JSON.stringify({ access_token: token(), expires_in: 7200 });
      return { status: 200, body: full.slice(0, Math.floor(random() * (full.length - 1))) };
    }
    case 8:
      return { status: pick([301, 302, 400, 403, 404, 429, 500, 502, 503, 504]), body: pick(['', 'error', '{"errcode":-1,"errmsg":"busy"}', '<h1>error</h1>']) };
    case 9:
      return { status: 200, body: pick(['', ' ', '\u0000\u0001', '{"access_token":"x",,}', 'null', '{"a":' + '['.repeat(2000)]) };
    case 10:
      return { fault: 'huge' };
    case 11:
      return { fault: 'slow-body' };
    case 12:
      return { fault: 'reset' };
    default:
      return { fault: 'hang' };
  }
}

/** `json` (an answer of WeChat's) with the fault's field replaced by its value; an answer without the field's object is left as it is. */
export function withField(json: string, fault: MockFault): string {
  const answer = JSON.parse(json) as Record<string, unknown>;
  const at = (path: string) => {
    const names = path.split('.');
    let holder: Record<string, unknown> | undefined = answer;
    for (const name of names.slice(0, -1)) {
      const next: unknown = holder?.[name];
      holder = next && typeof next === 'object' && !Array.isArray(next) ? (next as Record<string, unknown>) : undefined;
    }
    return { holder, name: names[names.length - 1]! };
  };
  const { holder, name } = at(fault.field ?? '');
  if (!holder) return json;
  const source = fault.from === undefined ? undefined : at(fault.from);
  holder[name] = source ? source.holder?.[source.name] : fault.value;
  return JSON.stringify(answer);
}

/** The Content-Type of WeChat's JSON answers, errors included: `encoding=`, not `charset=`. */
export const WECHAT_JSON = 'application/json; encoding=utf-8';

export function send(res: ServerResponse, status: number, body: string | Buffer, type = 'application/json; charset=utf-8'): void {
  res.writeHead(status, { 'content-type': type, 'content-length': Buffer.byteLength(body) });
  res.end(body);
}

type QueuedFault = MockFault & { path: string | undefined; left: number; random?: () => number };

const FAULT_FIELDS = ['kind', 'path', 'times', 'errcode', 'sizeBytes', 'intervalMs', 'seed', 'field', 'value', 'from'];

/** `times` over HTTP: JSON has no Infinity, so null, "Infinity" and -1 mean "until cleared". */
export function faultFromJson(input: Record<string, unknown>): MockFault {
  // A misspelt field (`paht`, `time`) would queue a fault on every path, once.
  const unknown = Object.keys(input).filter((name) => !FAULT_FIELDS.includes(name));
  if (unknown.length > 0) throw new TypeError(`injectFault: ${unknown.join(', ')} is not a field of a fault (${FAULT_FIELDS.join(', ')})`);
  const times = input.times;
  const unlimited = times === null || times === 'Infinity' || times === -1;
  return { ...(input as unknown as MockFault), ...(unlimited ? { times: Infinity } : {}) };
}

/**
 * The queued faults and how they answer. A fault answers before normal handling, for the next
 * `times` requests whose path matches; `later` schedules on the server's timers, so `close()` cuts
 * trickling answers.
 */
export class FaultQueue {
  private faults: QueuedFault[] = [];

  constructor(
    private readonly model: WeChatModel,
    private readonly later: (ms: number, fn: () => void) => void,
  ) {}

  inject(fault: MockFault): void {
    if (!fault || !FAULT_KINDS.has(fault.kind)) throw new TypeError(`injectFault: unknown fault kind ${JSON.stringify(fault?.kind)}`);
    const times = fault.times ?? 1;
    if (typeof times !== 'number' || Number.isNaN(times) || times < 1) throw new TypeError('injectFault: times must be a number >= 1 or Infinity');
    if (fault.path !== undefined && typeof fault.path !== 'string') throw new TypeError('injectFault: path must be a string');
    if (fault.kind === 'field' && (typeof fault.field !== 'string' || fault.field === '')) throw new TypeError('injectFault: a field fault must name its field');
    if (fault.from !== undefined && (typeof fault.from !== 'string' || fault.from === '')) throw new TypeError('injectFault: from must name a field');
    const path = fault.path?.replace(/^\/+/, '');
    this.faults.push({ ...fault, path, left: times, random: fault.kind === 'fuzz' ? seededRandom(fault.seed ?? 1) : undefined });
  }

  clear(): void {
    this.faults = [];
  }

  take(path: string): QueuedFault | undefined {
    const index = this.faults.findIndex((fault) => fault.path === undefined || fault.path === path);
    if (index < 0) return undefined;
    const fault = this.faults[index]!;
    fault.left -= 1;
    if (fault.left <= 0) this.faults.splice(index, 1);
    return fault;
  }

  answer(fault: MockFault & { random?: () => number }, path: string, owner: AppState | undefined, res: ServerResponse): void {
    const isToken = TOKEN_PATHS.has(path);
    switch (fault.kind) {
      case 'http-500':
        send(res, 500, '<html><body><h1>500 Internal Server Error</h1></body></html>', 'text/html');
        return;
      case 'http-502':
        send(res, 502, '<html><body><h1>502 Bad Gateway</h1></body></html>', 'text/html');
        return;
      case 'html':
        send(res, 200, '<!DOCTYPE html><html><head><title>Portal</title></head><body>Please log in</body></html>', 'text/html');
        return;
      case 'truncated-json': {
        const full = isToken
          ? JSON.stringify({ access_token: tokenValue(this.model.tokenSeq), expires_in: this.model.config.tokenTtlMs / 1000 })
          : `{"errcode":0,"errmsg":"ok","msgid":${FIRST_MSGID}}`;
        send(res, 200, full.slice(0, Math.floor(full.length / 2)));
        return;
      }
      case 'wrong-types':
        send(res, 200, isToken ? '{"access_token":123,"expires_in":"7200"}' : '{"errcode":"0","errmsg":0,"msgid":[],"ticket":123,"expires_in":"7200"}');
        return;
      case 'empty-token':
        send(res, 200, isToken ? '{"access_token":"","expires_in":7200}' : '{"errcode":0,"errmsg":"ok","ticket":"","expires_in":7200}');
        return;
      case 'huge': {
        const size = fault.sizeBytes ?? 5 * 1024 * 1024;
        const head = Buffer.from('{"access_token":"').subarray(0, size);
        res.writeHead(200, { 'content-type': 'application/json', 'content-length': size });
        res.write(head);
        const chunk = Buffer.alloc(64 * 1024, 'a');
        let written = head.length;
        const pump = () => {
          while (written < size) {
            const piece = chunk.subarray(0, Math.min(chunk.length, size - written));
            written += piece.length;
            if (!res.write(piece)) return void res.once('drain', pump);
          }
          res.end();
        };
        pump();
        return;
      }
      case 'hang':
      case 'lost-answer': // handled by the server before the answer is dropped
        return; // never answered; close() cuts the socket
      case 'field': // handled by the server, which alters the answer with withField()
        return;
      case 'slow-body': {
        res.writeHead(200, { 'content-type': 'application/json' });
        const interval = fault.intervalMs ?? 200;
        const drip = () => {
          if (res.destroyed) return;
          res.write(' ');
          this.later(interval, drip);
        };
        res.write('{');
        this.later(interval, drip);
        return;
      }
      case 'reset':
        // Content-Length promises more than is sent, so the client sees a body cut short, not an end.
        res.writeHead(200, { 'content-type': 'application/json', 'content-length': 200 });
        res.write('{"access_token":"86_', () => this.later(5, () => res.socket?.destroy()));
        return;
      case 'errcode': {
        const errcode = fault.errcode ?? -1;
        this.model.countErrcode(owner, errcode);
        send(res, 200, errorBody(errcode), WECHAT_JSON);
        return;
      }
      case 'fuzz': {
        const answer = fuzzAnswer(fault.random ?? seededRandom(fault.seed ?? 1), isToken);
        if ('fault' in answer) return this.answer({ kind: answer.fault, sizeBytes: 2 * 1024 * 1024, intervalMs: 50 }, path, owner, res);
        send(res, answer.status, answer.body, answer.type);
        return;
      }
    }
  }
}
