/**
 * A time limit on a promise: the one timer that connections (NBD, HTTP) put on a stalled peer.
 *
 * @module
 */

/**
 * Races `p` against a timer of `ms` milliseconds (none when `ms` is not positive). On timeout it
 * runs `onTimeout`, which should close the connection so that `p` settles too, and rejects with
 * `error()`.
 *
 * @example
 * ```ts
 * import { deadline } from "./deadline.ts";
 * const slow = new Promise<void>(() => {});
 * await deadline(slow, 10, () => {}, () => new Error("stalled")).catch((e) => e.message);
 * // "stalled"
 * ```
 */
export function deadline<T>(
  p: Promise<T>,
  ms: number,
  onTimeout: () => void,
  error: () => Error,
): Promise<T> {
  if (!(ms > 0)) return p;
  let timer: ReturnType<typeof setTimeout> | undefined;
  const timeout = new Promise<never>((_, reject) => {
    timer = setTimeout(() => {
      onTimeout();
      reject(error());
    }, ms);
  });
  return Promise.race([p, timeout]).finally(() => clearTimeout(timer));
}
