/**
 * The program's version, printed by `--version` and the plugin's `version`.
 *
 * @module
 */

/** The program's version. */
export const VERSION = "0.1.0";
