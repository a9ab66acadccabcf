/**
 * The order of a token service's answers. The service answers with the token it holds when it answers,
 * and a request it held (one the held value stood in for, answered up to the source's timeoutMs late)
 * may be answered after a forced refresh or a report made after it: its answer is older then, or the very
 * token a later report said WeChat rejected. Requests are numbered as they start; an answer is outdated
 * when the memo took the answer of a later request, or when it is a value a later report said was rejected.
 */
export class AnswerOrder {
  #asks = 0;
  /** The number of the last request whose answer the memo took. */
  #newestKept = 0;
  /** The number of the last report of a rejected value. */
  #lastReport = 0;

  /** The number the next request gets. */
  get next(): number {
    return this.#asks + 1;
  }

  /** A refresh starts: its number. */
  asked(): number {
    return ++this.#asks;
  }

  /** A report of a rejected value starts: its number. */
  reported(): number {
    return (this.#lastReport = ++this.#asks);
  }

  /** The memo took the answer of request `ask`. */
  kept(ask: number): void {
    this.#newestKept = Math.max(this.#newestKept, ask);
  }

  /** Whether the memo took the answer of a request made after `ask`. */
  overtaken(ask: number): boolean {
    return this.#newestKept > ask;
  }

  /** Whether the answer to request `ask` comes from before what was learnt since (`rejected`: its value was reported rejected). */
  outdated(ask: number, rejected: boolean): boolean {
    return ask < this.#newestKept || (ask < this.#lastReport && rejected);
  }
}
