/**
 * The one place that turns a thrown value into words (`messageOf` in errors.ts makes it one line).
 *
 * @module
 */

/**
 * An `Error`'s message, or `String(value)` for anything else thrown.
 *
 * @example
 * ```ts
 * import { errorText } from "./error_text.ts";
 * errorText(new Error("boom")); // "boom"
 * errorText("plain"); // "plain"
 * ```
 */
export function errorText(err: unknown): string {
  return err instanceof Error ? err.message : String(err);
}
