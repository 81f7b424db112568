/**
 * The one place that turns a thrown value into words (`messageOf` in errors.ts makes it one line).
 *
 * @module
 */

/**
 * An `Error`'s message, or `String(value)` for anything else thrown; without the
 * ` (os error N)` Deno adds to system errors (the words already say it).
 *
 * @example
 * ```ts
 * import { errorText } from "./error_text.ts";
 * errorText(new Error("boom")); // "boom"
 * errorText("plain"); // "plain"
 * errorText(new Error("No such file or directory (os error 2)")); // "No such file or directory"
 * ```
 */
export function errorText(err: unknown): string {
  return (err instanceof Error ? err.message : String(err)).replace(/ \(os error \d+\)/g, "");
}
