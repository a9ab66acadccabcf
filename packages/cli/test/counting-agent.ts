import { Agent, type Dispatcher } from 'undici';

/** An undici Agent that records each request it sends, as `GET v1/token/…` or `POST …/invalidate`. */
export class CountingAgent extends Agent {
  readonly sent: string[] = [];
  override dispatch(options: Dispatcher.DispatchOptions, handler: Dispatcher.DispatchHandler): boolean {
    this.sent.push(`${options.method} ${String(options.path).replace(/^\//, '')}`);
    return super.dispatch(options, handler);
  }
}
