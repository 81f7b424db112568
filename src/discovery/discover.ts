/**
 * Device discovery: which image (a VHD, or a raw file) is behind a block device.
 *
 * xapi hands sparse_dd device paths, never image paths, so without this there is no allocation
 * to skip by. Three routes, as on real hosts (xapi's `Tapctl.of_device`, `Image.of_device` and
 * the 2010 sparse_dd's `vhd_of_device`):
 *
 * - **tapdev** (blktap2): the device's major is named `tapdev` in `/proc/devices`; the
 *   `tap-ctl list` entry with the device's minor names the image (`vhd:` or `aio:`).
 * - **nbd** (current XenServer): `/dev/nbdN` (major 43); `/var/run/nonpersistent/nbd/N` holds
 *   `{"path": socket, "exportname": ...}`; a socket resolving to `nbd<pid>.<minor>` belongs to a
 *   tapdisk, asked with `tap-ctl list -p PID -m MINOR`. Any other socket is reported as a plain
 *   NBD server.
 * - **blkfront** (a guest disk whose backend is in our own domain): `/sys/dev/block/M:m/device`
 *   links to `vbd-ID`; xenstore `device/vbd/ID/backend` then `BACKEND/params` name the backend
 *   device, which is resolved through the routes above.
 *
 * Not finding anything is a normal answer (route `none` with a reason), never an exception.
 * Every directory and command is injectable so tests can fake a host.
 *
 * @module
 */

import { TapCtlError, tapCtlList, type TapdiskEntry } from "./tapctl.ts";
import { XenstoreError, xenstoreRead } from "./xenstore.ts";
import { errorText } from "../core/error_text.ts";

/** Which route found the image. `none`: nothing behind the device was recognised. */
export type DiscoveryRoute = "tapdev" | "nbd" | "blkfront+tapdev" | "blkfront+nbd" | "none";

/** The image a tapdisk serves. */
export interface DiscoveredImage {
  /** `vhd` (a VHD file or chain leaf), `raw` (tapdisk's `aio`), `other` (any other driver). */
  kind: "vhd" | "raw" | "other";
  /** The tapdisk driver as printed (`vhd`, `aio`, ...). */
  driver: string;
  /** The image file. */
  path: string;
}

/** What {@linkcode discover} found. */
export interface Discovery {
  /** The device path asked about. */
  device: string;
  /** The route that led to an image or NBD server; `none` when nothing was found. */
  route: DiscoveryRoute;
  /** The image behind the device, when a tapdisk serves it. */
  image?: DiscoveredImage;
  /** The NBD server behind a `/dev/nbdN` not served by a (known) tapdisk. */
  nbd?: { socket: string; exportname?: string };
  /** The tapdisk that serves the image. */
  tapdisk?: { pid?: number; minor: number; state?: number };
  /** One line: why no image was found (set whenever `image` is not). */
  reason?: string;
  /** What each step saw, for `-verbose`-style output and the stats. */
  notes: string[];
}

/** Where to look and what to run; every default is the real host's. */
export interface DiscoveryOptions {
  /** sysfs mount point; default `/sys`. */
  sysfsRoot?: string;
  /** procfs mount point; default `/proc` (only `devices` is read). */
  procfsRoot?: string;
  /** Runtime directory; default `/var/run` (`nonpersistent/nbd/N` is read). */
  runRoot?: string;
  /** The tap-ctl command; default `tap-ctl`. */
  tapCtl?: string;
  /** Timeout for each tap-ctl run, ms; default 15000. */
  tapCtlTimeoutMs?: number;
  /** The xenstore-read command; default `xenstore-read`. */
  xenstoreRead?: string;
  /** Timeout for each xenstore-read run, ms; default 5000. */
  xenstoreTimeoutMs?: number;
  /** The environment for xenstore-read; default PATH plus XENSTORED_PATH/XENSTORED_RUNDIR. */
  xenstoreEnv?: Record<string, string>;
}

/** The Linux NBD block major. */
export const NBD_MAJOR = 43;

/**
 * Splits a `st_rdev` into major and minor the way glibc's `major()`/`minor()` do, so minors above
 * 255 (blktap allocates them freely) are not truncated.
 *
 * @example
 * ```ts
 * import { decodeRdev } from "./discover.ts";
 * decodeRdev(1792); // { major: 7, minor: 0 }
 * decodeRdev(0x100ca00 + 0x05); // { major: 202, minor: 0x1005 }
 * ```
 */
export function decodeRdev(rdev: number): { major: number; minor: number } {
  const r = BigInt(rdev);
  const major = Number(((r >> 8n) & 0xfffn) | ((r >> 32n) & 0xfffff000n));
  const minor = Number((r & 0xffn) | ((r >> 12n) & 0xffffff00n));
  return { major, minor };
}

/**
 * Parses `/proc/devices` into the names of block majors (and character majors). Lines before
 * any section header count as block devices, so a one-line test file such as `7 tapdev` works.
 *
 * @example
 * ```ts
 * import { parseProcDevices } from "./discover.ts";
 * const d = parseProcDevices("Character devices:\n  7 vcs\n\nBlock devices:\n  7 loop\n254 tapdev\n");
 * d.block.get(254); // "tapdev"
 * d.char.get(7); // "vcs"
 * ```
 */
export function parseProcDevices(
  text: string,
): { block: Map<number, string>; char: Map<number, string> } {
  const block = new Map<number, string>();
  const char = new Map<number, string>();
  let section = block;
  for (const line of text.split("\n")) {
    const t = line.trim();
    if (/^character devices:$/i.test(t)) section = char;
    else if (/^block devices:$/i.test(t)) section = block;
    else {
      const m = /^(\d+)\s+(\S+)$/.exec(t);
      if (m && !section.has(Number(m[1]))) section.set(Number(m[1]), m[2]);
    }
  }
  return { block, char };
}

/**
 * The vbd id in the target of `/sys/dev/block/M:m/device` for a Xen blkfront disk, or undefined
 * for anything else. Accepted: the old xenlinux form ending `devices/xen/vbd-ID` and the pvops
 * form `../../../vbd-ID` (only `..` components before the id, i.e. `/sys/devices/vbd-ID`).
 *
 * @example
 * ```ts
 * import { vbdIdOfDeviceLink } from "./discover.ts";
 * vbdIdOfDeviceLink("../../../vbd-51712"); // 51712
 * vbdIdOfDeviceLink("../../../devices/xen/vbd-768"); // 768
 * vbdIdOfDeviceLink("../../../virtio1"); // undefined
 * ```
 */
export function vbdIdOfDeviceLink(link: string): number | undefined {
  const parts = link.split("/").filter((p) => p !== "" && p !== ".");
  const last = parts.at(-1);
  const m = last === undefined ? null : /^vbd-(0|[1-9][0-9]*)$/.exec(last);
  if (!m) return undefined;
  const id = Number(m[1]);
  if (!Number.isSafeInteger(id)) return undefined;
  const before = parts.slice(0, -1);
  const oldForm = before.at(-1) === "xen" && before.at(-2) === "devices";
  const pvops = !link.startsWith("/") && before.length > 0 && before.every((p) => p === "..");
  return oldForm || pvops ? id : undefined;
}

/**
 * The domain id in a xenstore backend path `/local/domain/<domid>/backend/...`.
 *
 * @example
 * ```ts
 * import { backendDomain } from "./discover.ts";
 * backendDomain("/local/domain/0/backend/vbd/5/51712"); // 0
 * backendDomain("backend/vbd/5/51712"); // undefined
 * ```
 */
export function backendDomain(backend: string): number | undefined {
  const m = /^\/local\/domain\/(0|[1-9][0-9]*)\//.exec(backend);
  return m ? Number(m[1]) : undefined;
}

/**
 * Parses the `/var/run/nonpersistent/nbd/N` record xapi's nbd_client_manager writes.
 *
 * @example
 * ```ts
 * import { parseNbdRecord } from "./discover.ts";
 * parseNbdRecord('{"path": "/run/x/sock", "exportname": "abc"}'); // { socket: "/run/x/sock", exportname: "abc" }
 * parseNbdRecord("not json"); // undefined
 * ```
 */
export function parseNbdRecord(text: string): { socket: string; exportname?: string } | undefined {
  let value: unknown;
  try {
    value = JSON.parse(text);
  } catch {
    return undefined;
  }
  if (typeof value !== "object" || value === null) return undefined;
  const { path, exportname } = value as Record<string, unknown>;
  if (typeof path !== "string" || path === "") return undefined;
  return typeof exportname === "string" ? { socket: path, exportname } : { socket: path };
}

/**
 * The tapdisk (pid, minor) named by its NBD socket's file name, `nbd<pid>.<minor>` (or the
 * old-protocol `nbd-old<pid>.<minor>`), or undefined.
 *
 * @example
 * ```ts
 * import { tapdiskOfNbdSocket } from "./discover.ts";
 * tapdiskOfNbdSocket("/run/blktap-control/nbd4242.3"); // { pid: 4242, minor: 3 }
 * ```
 */
export function tapdiskOfNbdSocket(path: string): { pid: number; minor: number } | undefined {
  const base = path.slice(path.lastIndexOf("/") + 1);
  const m = /^nbd(?:-old)?(0|[1-9][0-9]*)\.(0|[1-9][0-9]*)$/.exec(base);
  return m ? { pid: Number(m[1]), minor: Number(m[2]) } : undefined;
}

function imageOf(entry: TapdiskEntry): DiscoveredImage {
  const kind = entry.driver === "vhd" ? "vhd" : entry.driver === "aio" ? "raw" : "other";
  return { kind, driver: entry.driver, path: entry.path };
}

function describe(err: unknown): string {
  if (err instanceof Deno.errors.NotFound) return "not found";
  if (err instanceof Deno.errors.PermissionDenied) return "permission denied";
  return errorText(err);
}

/** Reads a small file, refusing anything but a regular file: a FIFO would block forever. */
async function readRegularFile(path: string): Promise<string> {
  const info = await Deno.stat(path);
  if (!info.isFile) throw new Error("not a regular file");
  return await Deno.readTextFile(path);
}

function stateText(state: number | undefined): string {
  return state === undefined ? "unknown" : state === 0 ? "0" : `0x${state.toString(16)}`;
}

interface Step {
  route?: "tapdev" | "nbd";
  image?: DiscoveredImage;
  nbd?: { socket: string; exportname?: string };
  tapdisk?: { pid?: number; minor: number; state?: number };
  reason?: string;
}

interface Context {
  options: DiscoveryOptions;
  notes: string[];
  devices?: Map<number, string>;
}

async function blockMajorNames(ctx: Context): Promise<Map<number, string>> {
  if (ctx.devices) return ctx.devices;
  const file = `${ctx.options.procfsRoot ?? "/proc"}/devices`;
  try {
    ctx.devices = parseProcDevices(await readRegularFile(file)).block;
  } catch (err) {
    ctx.notes.push(`cannot read ${file}: ${describe(err)}`);
    ctx.devices = new Map();
  }
  return ctx.devices;
}

function tapCtlOptions(o: DiscoveryOptions) {
  return { command: o.tapCtl, timeoutMs: o.tapCtlTimeoutMs };
}

function pickOne(
  ctx: Context,
  entries: TapdiskEntry[],
  what: string,
  route: "tapdev" | "nbd",
): Step {
  if (entries.length === 0) return { reason: `tap-ctl list has no entry for ${what}` };
  if (entries.length > 1) {
    return { reason: `tap-ctl list has ${entries.length} entries for ${what}; not guessing` };
  }
  const e = entries[0];
  ctx.notes.push(
    `tap-ctl: ${what} is tapdisk pid ${e.pid ?? "unknown"} state ${
      stateText(e.state)
    } serving ${e.driver}:${e.path}`,
  );
  return {
    route,
    image: imageOf(e),
    tapdisk: { pid: e.pid, minor: e.minor, state: e.state },
  };
}

function noteIgnored(ctx: Context, ignored: string[]): void {
  if (ignored.length === 0) return;
  const sample = ignored[0].length > 80 ? `${ignored[0].slice(0, 80)}...` : ignored[0];
  ctx.notes.push(
    `tap-ctl list: ignored ${ignored.length} line(s) that are not tapdisk entries, e.g. ${
      JSON.stringify(sample)
    }`,
  );
}

async function viaTapdev(ctx: Context, minor: number): Promise<Step> {
  let list;
  try {
    list = await tapCtlList(tapCtlOptions(ctx.options));
  } catch (err) {
    if (err instanceof TapCtlError) return { reason: err.message };
    throw err;
  }
  noteIgnored(ctx, list.ignored);
  return pickOne(ctx, list.entries.filter((e) => e.minor === minor), `minor ${minor}`, "tapdev");
}

async function nbdIndex(
  ctx: Context,
  device: string,
  major: number,
  minor: number,
): Promise<number | undefined> {
  const fromName = (p: string) => {
    const m = /(?:^|\/)nbd(0|[1-9][0-9]*)$/.exec(p);
    return m ? Number(m[1]) : undefined;
  };
  let real = device;
  try {
    real = await Deno.realPath(device);
  } catch {
    // keep the name as given
  }
  const n = fromName(real) ?? fromName(device);
  if (n !== undefined) return n;
  // An alias with another name: ask sysfs which nbdN this major:minor is.
  const sys = `${ctx.options.sysfsRoot ?? "/sys"}/dev/block/${major}:${minor}`;
  try {
    return fromName(await Deno.readLink(sys));
  } catch {
    return undefined;
  }
}

async function viaNbd(ctx: Context, device: string, major: number, minor: number): Promise<Step> {
  const n = await nbdIndex(ctx, device, major, minor);
  if (n === undefined) {
    return { reason: `${device} is an NBD device but not named nbdN` };
  }
  const file = `${ctx.options.runRoot ?? "/var/run"}/nonpersistent/nbd/${n}`;
  let text;
  try {
    text = await readRegularFile(file);
  } catch (err) {
    return { reason: `no NBD connection record ${file} (${describe(err)})` };
  }
  const record = parseNbdRecord(text);
  if (!record) return { reason: `${file} is not a JSON {"path", "exportname"} record` };
  let socket = record.socket;
  try {
    socket = await Deno.realPath(record.socket);
  } catch (err) {
    ctx.notes.push(`cannot resolve NBD socket ${record.socket}: ${describe(err)}`);
  }
  ctx.notes.push(
    `nbd${n} is connected to ${socket}${
      record.exportname === undefined ? "" : ` export ${JSON.stringify(record.exportname)}`
    }`,
  );
  const nbd = { socket, exportname: record.exportname };
  const td = tapdiskOfNbdSocket(socket);
  if (!td) {
    return {
      route: "nbd",
      nbd,
      reason: `NBD socket ${socket} is not a tapdisk's (nbd<pid>.<minor>)`,
    };
  }
  let list;
  try {
    list = await tapCtlList(tapCtlOptions(ctx.options), td);
  } catch (err) {
    if (err instanceof TapCtlError) return { route: "nbd", nbd, reason: err.message };
    throw err;
  }
  noteIgnored(ctx, list.ignored);
  const step = pickOne(
    ctx,
    list.entries.filter((e) => e.minor === td.minor && (e.pid === undefined || e.pid === td.pid)),
    `tapdisk pid ${td.pid} minor ${td.minor}`,
    "nbd",
  );
  return step.image ? { ...step, nbd } : { ...step, route: "nbd", nbd };
}

/** The tapdev and nbd routes for one block device; undefined when neither applies. */
async function viaTapdisk(
  ctx: Context,
  device: string,
  major: number,
  minor: number,
): Promise<Step | undefined> {
  const name = (await blockMajorNames(ctx)).get(major);
  if (name === "tapdev") {
    ctx.notes.push(`block major ${major} is tapdev`);
    return await viaTapdev(ctx, minor);
  }
  if (major === NBD_MAJOR || name === "nbd") {
    ctx.notes.push(`block major ${major} is nbd`);
    return await viaNbd(ctx, device, major, minor);
  }
  return undefined;
}

/** What the caller already knows of a device (it stat'ed it once): no second stat. */
export interface KnownDevice {
  isBlockDevice: boolean;
  isFile: boolean;
  rdev: number | null;
}

async function statDevice(
  ctx: Context,
  device: string,
  known?: KnownDevice,
): Promise<{ major: number; minor: number } | string> {
  let st: KnownDevice;
  try {
    st = known ?? await Deno.stat(device).then((i) => ({ ...i, isBlockDevice: !!i.isBlockDevice }));
  } catch (err) {
    return `cannot stat ${device}: ${describe(err)}`;
  }
  if (!st.isBlockDevice || st.rdev === null) {
    return st.isFile
      ? `${device} is a regular file, not a device`
      : `${device} is not a block device`;
  }
  const d = decodeRdev(st.rdev);
  ctx.notes.push(`${device} is block device ${d.major}:${d.minor}`);
  return d;
}

async function viaBlkfront(ctx: Context, major: number, minor: number): Promise<Step | string> {
  const o = ctx.options;
  const linkPath = `${o.sysfsRoot ?? "/sys"}/dev/block/${major}:${minor}/device`;
  let link;
  try {
    link = await Deno.readLink(linkPath);
  } catch (err) {
    return `not a tapdisk or NBD device, and not a Xen blkfront disk (${linkPath}: ${
      describe(err)
    })`;
  }
  const id = vbdIdOfDeviceLink(link);
  if (id === undefined) {
    return `not a tapdisk or NBD device, and not a Xen blkfront disk (${linkPath} -> ${link})`;
  }
  ctx.notes.push(`${major}:${minor} is Xen vbd ${id}`);
  const xs = { command: o.xenstoreRead, timeoutMs: o.xenstoreTimeoutMs, env: o.xenstoreEnv };
  let params;
  try {
    const self = (await xenstoreRead("domid", xs)).trim();
    const backend = (await xenstoreRead(`device/vbd/${id}/backend`, xs)).trim();
    const bedom = backendDomain(backend);
    if (bedom === undefined) return `vbd ${id} backend ${JSON.stringify(backend)} names no domain`;
    if (String(bedom) !== self) {
      return `vbd ${id} backend is in domain ${bedom}, not ours (${self}): cannot see its image`;
    }
    params = (await xenstoreRead(`${backend}/params`, xs)).trim();
    ctx.notes.push(`vbd ${id} backend ${backend} params ${params}`);
  } catch (err) {
    if (err instanceof XenstoreError) return err.message;
    throw err;
  }
  if (!params.startsWith("/")) {
    return `vbd ${id} backend params ${JSON.stringify(params)} is not a device`;
  }
  const dev = await statDevice(ctx, params);
  if (typeof dev === "string") return `vbd ${id} backend: ${dev}`;
  const step = await viaTapdisk(ctx, params, dev.major, dev.minor);
  if (!step) return `vbd ${id} backend device ${params} is not a tapdisk or NBD device`;
  return step;
}

/**
 * Finds the image behind `device`. Never throws for an unrecognised, unreadable or missing device:
 * the result then has route `none` and a `reason`. `known`: the device's `stat`, when the caller
 * already has it.
 *
 * @example
 * ```ts ignore
 * import { discover } from "./discover.ts";
 * const d = await discover("/dev/sm/backend/SR/VDI");
 * if (d.image?.kind === "vhd") console.error(`auto-detect src vhd: ${d.image.path}`);
 * else console.error(`auto-detect src vhd: None (${d.reason})`);
 * ```
 */
export async function discover(
  device: string,
  options: DiscoveryOptions = {},
  known?: KnownDevice,
): Promise<Discovery> {
  const ctx: Context = { options, notes: [] };
  const done = (route: DiscoveryRoute, step: Step | string): Discovery => {
    if (typeof step === "string") return { device, route: "none", reason: step, notes: ctx.notes };
    const r: Discovery = { device, route: step.route ? route : "none", notes: ctx.notes };
    if (step.image) r.image = step.image;
    if (step.nbd) r.nbd = step.nbd;
    if (step.tapdisk) r.tapdisk = step.tapdisk;
    if (!step.image) r.reason = step.reason ?? "no image found";
    else if (step.image.kind === "other") {
      r.reason = `tapdisk driver ${step.image.driver} is neither vhd nor aio`;
    }
    return r;
  };
  const dev = await statDevice(ctx, device, known);
  if (typeof dev === "string") return done("none", dev);
  const direct = await viaTapdisk(ctx, device, dev.major, dev.minor);
  if (direct) return done(direct.route ?? "none", direct);
  const front = await viaBlkfront(ctx, dev.major, dev.minor);
  if (typeof front === "string") return done("none", front);
  return done(front.route === "nbd" ? "blkfront+nbd" : "blkfront+tapdev", front);
}
