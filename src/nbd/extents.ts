/**
 * `base:allocation` block status replies, checked and kept small. Every extent a server sends is
 * untrusted: zero lengths, extents after the one that reached the end of the request, extents
 * beyond the export are protocol errors; adjacent extents of the same kind are merged as they
 * arrive, and a map with too many pieces is coarsened (small holes between data count as data,
 * which only costs reading them). Pure: no I/O.
 *
 * @module
 */

import { NbdProtocolError, StateFlag } from "./protocol.ts";

/** A piece of the allocation map: `data` false for extents flagged HOLE or ZERO. */
export interface Run {
  length: number;
  data: boolean;
}

/** A data range of the export. */
export interface DataRange {
  start: number;
  length: number;
}

/**
 * The extents of one `NBD_REPLY_TYPE_BLOCK_STATUS` payload (context id, then length/flags
 * pairs) for a request `[offset, end)` on an export of `exportSize` bytes, appended to `runs`
 * merged with their neighbours and clipped to the request. Only the last extent may reach past
 * the request's end (the spec allows it), and none past the export's.
 *
 * @example
 * ```ts
 * import { appendExtents, type Run } from "./extents.ts";
 * const p = Uint8Array.of(0, 0, 0, 1, 0, 0, 2, 0, 0, 0, 0, 0, 0, 0, 2, 0, 0, 0, 0, 0);
 * const runs: Run[] = [];
 * appendExtents(p, 0, 4096, 1 << 20, runs); // 1024 bytes covered
 * runs; // [{ length: 1024, data: true }]
 * ```
 */
export function appendExtents(
  payload: Uint8Array,
  offset: number,
  end: number,
  exportSize: number,
  runs: Run[],
): number {
  if (payload.length < 12 || (payload.length - 4) % 8 !== 0) {
    throw new NbdProtocolError("NBD_REPLY_TYPE_BLOCK_STATUS has a bad length");
  }
  const v = new DataView(payload.buffer, payload.byteOffset, payload.byteLength);
  let at = offset;
  for (let i = 4; i < payload.length; i += 8) {
    const length = v.getUint32(i);
    const data = (v.getUint32(i + 4) & (StateFlag.Hole | StateFlag.Zero)) === 0;
    if (length === 0) throw new NbdProtocolError(`an extent of zero length at offset ${at}`);
    if (at >= end) {
      throw new NbdProtocolError(`extents beyond the end of the request [${offset}, ${end})`);
    }
    if (at + length > exportSize) {
      throw new NbdProtocolError(
        `extent [${at}, ${at + length}) beyond the end of the export (${exportSize} bytes)`,
      );
    }
    const n = Math.min(length, end - at);
    const last = runs[runs.length - 1];
    if (last && last.data === data) last.length += n;
    else runs.push({ length: n, data });
    at += n;
  }
  return at - offset;
}

/**
 * At most `max` data ranges covering every byte of `ranges` (sorted, disjoint): the gaps that
 * are smallest in scale are filled first, doubling the gap allowed until the list is short
 * enough. Coarser is always safe: those bytes are read and copied like any data.
 *
 * @example
 * ```ts
 * import { coarsen } from "./extents.ts";
 * coarsen([{ start: 0, length: 1 }, { start: 2, length: 1 }, { start: 100, length: 1 }], 2);
 * // [{ start: 0, length: 3 }, { start: 100, length: 1 }]
 * ```
 */
export function coarsen(ranges: DataRange[], max: number): DataRange[] {
  let out = ranges;
  for (let gap = 2; out.length > Math.max(1, max); gap *= 2) {
    const merged: DataRange[] = [];
    for (const r of out) {
      const last = merged[merged.length - 1];
      if (last && r.start - (last.start + last.length) < gap) {
        last.length = r.start + r.length - last.start;
      } else {
        merged.push({ ...r });
      }
    }
    out = merged;
  }
  return out;
}
