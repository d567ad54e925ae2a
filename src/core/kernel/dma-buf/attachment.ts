/**
 * @module attachment
 * Attach, detach, pin and map (drivers/dma-buf/dma-buf.c): static and dynamic importers, the
 * reservation-lock rules, pin-on-map, ≤6.14's sg-table caching, and CONFIG_DMABUF_DEBUG's
 * page hiding. What differs by kernel is read from `profile.dmaBuf`.
 * Spec: ../../../../../shared/specs/dma-buf.md §1.2–1.5, §2.3–2.8, §3.2, §3.3, §7.
 *
 * Lifecycle: `attached` → `detached` (dma_buf_detach). Using a detached attachment, or
 * detaching twice, throws `KernelBug` naming it. Each table handed to the importer is tracked
 * until it is unmapped; unmapping one the core did not hand out throws.
 *
 * Lock rules: functions the kernel documents as "resv held" (pin, unpin, map, unmap) report a
 * lockdep entry in `core.lockdep` naming the function and the buffer when called unlocked, and
 * go on (as lockdep does); functions that take the lock themselves (attach, detach, the
 * `_unlocked` variants) throw `KernelBug` (deadlock) when called with it held.
 */

import type { DmaDevice } from "../dma/device.ts";
import type { DmaDirection } from "../dma/mapping.ts";
import { KernelBug, type KResult, kerr, kok } from "../errno.ts";
import {
  for_each_sgtable_dma_sg,
  poisonPages,
  type SgTable,
  sg_alloc_table,
  sg_dma_is_bus_address,
  sg_free_table,
  sg_set_page,
  unpoisonPages,
} from "../lib/scatterlist.ts";
import { PAGE_SIZE_N } from "../mm/page.ts";
import { type DmaBuf, dmaBufIsDynamic } from "./dma-buf.ts";

/** `struct dma_buf_attach_ops` (importer side). */
export interface DmaBufAttachOps {
  /** The importer copes with peer memory that has no struct page. */
  readonly allow_peer2peer?: boolean;
  /** Called with the resv held when the exporter moves the buffer; mandatory for dynamic importers. */
  readonly move_notify?: (attach: DmaBufAttachment) => void;
}

export type AttachmentState = "attached" | "detached";

/** A table handed to the importer, and what the core must hand back to the exporter. */
interface Handed {
  readonly importer: SgTable;
  readonly exporter: SgTable;
  readonly dir: DmaDirection;
}

let nextAttachId = 1;

/** `struct dma_buf_attachment`. */
export class DmaBufAttachment {
  readonly id = nextAttachId++;
  readonly dmabuf: DmaBuf;
  readonly dev: DmaDevice;
  readonly importer_ops: DmaBufAttachOps | null;
  readonly importer_priv: unknown;
  /** Copied from `allow_peer2peer`; the exporter's attach may clear it. */
  peer2peer: boolean;
  /** Exporter private data. */
  priv: unknown = null;
  /** ≤6.14: the cached mapping and its direction. */
  sgt: SgTable | null = null;
  dir: DmaDirection = "none";
  /** Tables handed out and not yet unmapped (the cached one included). */
  readonly handed: Handed[] = [];
  /**
   * The importer's own pins: successful `dma_buf_pin()` calls not yet undone by
   * `dma_buf_unpin()` (pins taken by map or attach go with their mapping, not counted here).
   */
  pins = 0;
  #state: AttachmentState = "attached";

  constructor(dmabuf: DmaBuf, dev: DmaDevice, ops: DmaBufAttachOps | null, priv: unknown) {
    this.dmabuf = dmabuf;
    this.dev = dev;
    this.importer_ops = ops;
    this.importer_priv = priv;
    this.peer2peer = ops ? ops.allow_peer2peer === true : false;
  }

  get state(): AttachmentState {
    return this.#state;
  }

  describe(): string {
    return `attachment #${this.id} of ${this.dev.name} to ${this.dmabuf.describe()}`;
  }

  live(what: string): this {
    if (this.#state === "detached")
      throw new KernelBug(`use-after-free: ${what} on ${this.describe()}, already detached`);
    this.dmabuf.live(what);
    return this;
  }

  markDetached(): void {
    this.#state = "detached";
  }
}

/** The importer handles move_notify (has importer_ops). models dma_buf_attachment_is_dynamic() */
export function dmaBufAttachmentIsDynamic(attach: DmaBufAttachment): boolean {
  return attach.importer_ops !== null;
}

/** Whether map pins and unmap unpins, per profile. models dma_buf_pin_on_map() (6.1: the inline test in map) */
export function dmaBufPinOnMap(attach: DmaBufAttachment): boolean {
  const { dmabuf } = attach;
  if (!dmabuf.ops.pin) return false;
  if (dmabuf.core.profile.dmaBuf.pinOnMap === "exporter-dynamic-no-move-notify")
    return !dmabuf.core.moveNotify;
  return !dmaBufAttachmentIsDynamic(attach) || !dmabuf.core.moveNotify;
}

// ── CONFIG_DMABUF_DEBUG ─────────────────────────────────────────────────────────────────────

/** What the importer gets for the exporter's table `sgt`: itself mangled (6.1) or a page-less copy. */
function debugWrap(dmabuf: DmaBuf, sgt: SgTable): KResult<SgTable> {
  if (!dmabuf.core.debug) return kok(sgt);
  if (dmabuf.core.profile.dmaBuf.debugSgt === "xor-page-link") {
    // models mangle_sg_table(): page_link ^= ~0xff on every CPU entry
    poisonPages(sgt);
    return kok(sgt);
  }
  // models the mainline wrapper: a copy with nents entries, page NULL, offset/length 0
  const copy = sg_alloc_table(Math.max(sgt.nents, 1), { name: `${sgt.name} (dma-buf debug copy)` });
  if (!copy.ok) return kerr("ENOMEM", "dma-buf debug wrapper allocation failed");
  const dst = [...for_each_sgtable_dma_sg(copy.value)];
  let i = 0;
  for (const s of for_each_sgtable_dma_sg(sgt)) {
    const d = dst[i++]!;
    sg_set_page(d, null, 0, 0);
    d.dma_address = s.dma_address;
    d.dma_length = s.dma_length;
  }
  copy.value.nents = sgt.nents;
  copy.value.orig_nents = sgt.nents;
  return kok(copy.value);
}

function debugUnwrap(dmabuf: DmaBuf, h: Handed): void {
  if (!dmabuf.core.debug) return;
  if (dmabuf.core.profile.dmaBuf.debugSgt === "xor-page-link") unpoisonPages(h.exporter);
  else sg_free_table(h.importer);
}

// ── attach / detach ─────────────────────────────────────────────────────────────────────────

/**
 * `ops->map_dma_buf`, then for static importers the wait on KERNEL fences, then the debug
 * wrapping. The caller pins/unpins. models __map_dma_buf() (6.1) / the body of mainline's map
 */
/** The trace of one exporter mapping: every DMA segment and what kind of address it is. */
function traceMap(attach: DmaBufAttachment, sgt: SgTable): void {
  const trace = attach.dmabuf.core.trace;
  if (!trace.enabled) return;
  const core = attach.dmabuf.core;
  const segments = [...for_each_sgtable_dma_sg(sgt)].map((s) => ({
    dma: s.dma_address,
    len: BigInt(s.dma_length),
    kind: core.addrKind(attach.dev, s.dma_address, sg_dma_is_bus_address(s)),
  }));
  trace.emit("dma_buf:map", `${attach.describe()}: ${segments.length} DMA segment(s)`, {
    device: attach.dev.fn.name,
    segments,
  });
}

function mapDmaBuf(attach: DmaBufAttachment, dir: DmaDirection): KResult<Handed> {
  const { dmabuf } = attach;
  const r = dmabuf.ops.map_dma_buf!(attach, dir);
  if (r === null) return kerr("ENOMEM", `${dmabuf.exp_name} map_dma_buf returned NULL`);
  if (!r.ok) {
    dmabuf.core.trace.emit(
      "dma_buf:map",
      `${attach.describe()}: ${dmabuf.exp_name} map_dma_buf failed: -${r.errno}${r.reason ? ` (${r.reason})` : ""}`,
      { device: attach.dev.fn.name, errno: r.errno },
    );
    return r;
  }
  const sgt = r.value;
  if (!dmaBufAttachmentIsDynamic(attach)) {
    const w = dmabuf.resv.waitTimeout("kernel", true);
    if (!w.ok) {
      dmabuf.ops.unmap_dma_buf!(attach, sgt, dir);
      return w;
    }
  }
  const wrapped = debugWrap(dmabuf, sgt);
  if (!wrapped.ok) {
    dmabuf.ops.unmap_dma_buf!(attach, sgt, dir);
    return wrapped;
  }
  // models the CONFIG_DMA_API_DEBUG page-alignment pr_debug
  for (const s of for_each_sgtable_dma_sg(sgt))
    if (s.dma_address % PAGE_SIZE_N !== 0n || BigInt(s.dma_length) % PAGE_SIZE_N !== 0n)
      dmabuf.core.log.push(
        `dma_buf_map_attachment: addr ${s.dma_address.toString(16)} or len ${s.dma_length.toString(16)} is not page aligned!`,
      );
  const h: Handed = { importer: wrapped.value, exporter: sgt, dir };
  attach.handed.push(h);
  traceMap(attach, sgt);
  return kok(h);
}

// models __unmap_dma_buf(): undo the debug wrapping, hand the exporter its own table with the
// direction the importer passed (not necessarily the one it mapped with: dma-debug's business).
function unmapDmaBuf(attach: DmaBufAttachment, h: Handed, dir: DmaDirection): void {
  const i = attach.handed.indexOf(h);
  if (i >= 0) attach.handed.splice(i, 1);
  attach.dmabuf.core.trace.emit(
    "dma_buf:unmap",
    `${attach.describe()}: unmap ${h.exporter.nents} segment(s)`,
  );
  debugUnwrap(attach.dmabuf, h);
  attach.dmabuf.ops.unmap_dma_buf!(attach, h.exporter, dir);
}

/**
 * Attach `dev`. `importerOps` null: static importer (peer2peer false). Dynamic importer without
 * move_notify: WARN, -EINVAL. The exporter's attach may refuse (its errno, nothing added). On
 * ≤6.14 profiles a dynamic-ness mismatch maps (and pins) right away and caches the table.
 * models dma_buf_dynamic_attach()
 */
export function dmaBufDynamicAttach(
  dmabuf: DmaBuf | null,
  dev: DmaDevice | null,
  importerOps: DmaBufAttachOps | null,
  importerPriv: unknown = null,
): KResult<DmaBufAttachment> {
  if (!dmabuf || !dev) return kerr("EINVAL", "dma_buf_dynamic_attach(NULL)", { warn: true });
  const core = dmabuf.live("dma_buf_dynamic_attach()").core;
  if (importerOps && !importerOps.move_notify) {
    const msg = `dma_buf_dynamic_attach(${dmabuf.describe()}, ${dev.name}): importer_ops without move_notify`;
    core.warn(msg);
    return kerr("EINVAL", msg, { warn: true });
  }
  const attach = new DmaBufAttachment(dmabuf, dev, importerOps, importerPriv);
  if (dmabuf.ops.attach) {
    const r = dmabuf.ops.attach(dmabuf, attach);
    if (!r.ok) {
      attach.markDetached();
      return r;
    }
  }
  dmabuf.resv.lock("dma_buf_dynamic_attach");
  dmabuf.attachments.unshift(attach); // list_add: at the head
  dmabuf.resv.unlock("dma_buf_dynamic_attach");
  core.trace.emit(
    "dma_buf:attach",
    `${attach.describe()}: ${importerOps ? "dynamic" : "static"} importer, peer2peer=${attach.peer2peer ? 1 : 0}`,
    { device: dev.fn.name, dynamic: importerOps !== null, peer2peer: attach.peer2peer },
  );

  if (
    core.profile.dmaBuf.mapOnAttachIfMismatch &&
    dmaBufAttachmentIsDynamic(attach) !== dmaBufIsDynamic(dmabuf)
  ) {
    const dyn = dmaBufIsDynamic(dmabuf);
    if (dyn) {
      dmabuf.resv.lock("dma_buf_dynamic_attach");
      const p = dmabuf.ops.pin!(attach);
      if (!p.ok) {
        dmabuf.resv.unlock("dma_buf_dynamic_attach");
        dmaBufDetach(dmabuf, attach);
        return p;
      }
    }
    const m = mapDmaBuf(attach, "bidirectional");
    if (!m.ok) {
      if (dyn) {
        dmabuf.ops.unpin!(attach);
        dmabuf.resv.unlock("dma_buf_dynamic_attach");
      }
      dmaBufDetach(dmabuf, attach);
      return m;
    }
    if (dyn) dmabuf.resv.unlock("dma_buf_dynamic_attach");
    attach.sgt = m.value.importer;
    attach.dir = "bidirectional";
  }
  return kok(attach);
}

/** A static importer: no importer_ops, so peer2peer is false. models dma_buf_attach() */
export function dmaBufAttach(
  dmabuf: DmaBuf | null,
  dev: DmaDevice | null,
): KResult<DmaBufAttachment> {
  return dmaBufDynamicAttach(dmabuf, dev, null, null);
}

/**
 * Unlink (under the resv), the exporter's detach (unlocked), free. ≤6.14: the cached table is
 * unmapped first (and unpinned for dynamic exporters). Mainline does not unmap: tables still
 * handed out are leaked (recorded in `core.modelReports`; the kernel says nothing).
 * models dma_buf_detach()
 */
export function dmaBufDetach(dmabuf: DmaBuf | null, attach: DmaBufAttachment | null): void {
  if (!dmabuf || !attach) {
    (dmabuf ?? attach?.dmabuf)?.core.warn("dma_buf_detach(NULL)");
    return;
  }
  attach.live("dma_buf_detach()");
  if (attach.dmabuf !== dmabuf) {
    dmabuf.core.warn(
      `dma_buf_detach(): ${attach.describe()} does not belong to ${dmabuf.describe()}`,
    );
    return;
  }
  const dyn = dmaBufIsDynamic(dmabuf);
  if (attach.sgt) {
    if (dyn) dmabuf.resv.lock("dma_buf_detach");
    const h = attach.handed.find((x) => x.importer === attach.sgt);
    if (h) unmapDmaBuf(attach, h, attach.dir);
    attach.sgt = null;
    if (dyn) {
      dmabuf.ops.unpin!(attach);
      dmabuf.resv.unlock("dma_buf_detach");
    }
  }
  if (attach.handed.length > 0) {
    dmabuf.core.modelReports.push(
      `${attach.describe()} detached with ${attach.handed.length} mapping(s) not unmapped: leaked`,
    );
    dmabuf.core.leftovers.add(attach);
  }
  dmabuf.resv.lock("dma_buf_detach");
  const i = dmabuf.attachments.indexOf(attach);
  if (i >= 0) dmabuf.attachments.splice(i, 1);
  dmabuf.resv.unlock("dma_buf_detach");
  dmabuf.ops.detach?.(dmabuf, attach);
  attach.markDetached();
}

// ── pin ─────────────────────────────────────────────────────────────────────────────────────

/** Dynamic importers only (WARN otherwise); resv held; ops->pin or 0. models dma_buf_pin() */
export function dmaBufPin(attach: DmaBufAttachment): KResult {
  const { dmabuf } = attach.live("dma_buf_pin()");
  if (!dmaBufAttachmentIsDynamic(attach))
    dmabuf.core.warn(`dma_buf_pin(): ${attach.describe()} is not a dynamic importer`);
  dmabuf.resv.assertHeld("dma_buf_pin");
  const r = dmabuf.ops.pin ? dmabuf.ops.pin(attach) : kok();
  if (r.ok) attach.pins++;
  return r;
}

// models dma_buf_unpin()
export function dmaBufUnpin(attach: DmaBufAttachment): void {
  const { dmabuf } = attach.live("dma_buf_unpin()");
  if (!dmaBufAttachmentIsDynamic(attach))
    dmabuf.core.warn(`dma_buf_unpin(): ${attach.describe()} is not a dynamic importer`);
  dmabuf.resv.assertHeld("dma_buf_unpin");
  dmabuf.ops.unpin?.(attach);
  if (attach.pins > 0) attach.pins--;
}

// ── map / unmap ─────────────────────────────────────────────────────────────────────────────

/**
 * The resv asserts of map/unmap, in the kernel's two places: before the cache check (`always`:
 * every attachment; 6.1: dynamic importers) and after it (6.1: dynamic exporters), so on 6.1 a
 * static importer getting its cached table back is not checked.
 */
function assertMapResv(
  attach: DmaBufAttachment,
  fn: string,
  where: "before-cache" | "after-cache",
): void {
  const p = attach.dmabuf.core.profile.dmaBuf;
  const need =
    where === "before-cache"
      ? p.mapAssertsResv === "always" || dmaBufAttachmentIsDynamic(attach)
      : p.mapAssertsResv === "dynamic" &&
        !dmaBufAttachmentIsDynamic(attach) &&
        dmaBufIsDynamic(attach.dmabuf);
  if (need) attach.dmabuf.resv.assertHeld(fn);
}

/**
 * A table mapped for the importer's device. ≤6.14: a cached table is returned again when the
 * direction matches or it is bidirectional, else -EBUSY; with `cache_sgt_mapping` the first
 * mapping is cached. Pin-on-map (profile) pins first and unpins on failure; mainline WARNs once
 * if pin says -EBUSY. NULL from the exporter → -ENOMEM. Static importers wait for KERNEL fences.
 * models dma_buf_map_attachment()
 */
export function dmaBufMapAttachment(
  attach: DmaBufAttachment | null,
  dir: DmaDirection,
): KResult<SgTable> {
  if (!attach) return kerr("EINVAL", "dma_buf_map_attachment(NULL)", { warn: true });
  const { dmabuf } = attach.live("dma_buf_map_attachment()");
  const core = dmabuf.core;
  assertMapResv(attach, "dma_buf_map_attachment", "before-cache");
  if (attach.sgt) {
    if (attach.dir !== dir && attach.dir !== "bidirectional")
      return kerr(
        "EBUSY",
        `${attach.describe()}: cached mapping is ${attach.dir}, ${dir} requested`,
      );
    return kok(attach.sgt);
  }
  assertMapResv(attach, "dma_buf_map_attachment", "after-cache");
  const pin = dmaBufPinOnMap(attach);
  if (pin) {
    const p = dmabuf.ops.pin!(attach);
    if (!p.ok) {
      if (p.errno === "EBUSY" && core.profile.dmaBuf.warnOnPinBusy) {
        core.warnOnce(
          "dma_buf_map_attachment:pin",
          "exporter made buffer inaccessible despite attachments",
        );
        return { ...p, warn: true };
      }
      return p;
    }
  }
  const m = mapDmaBuf(attach, dir);
  if (!m.ok) {
    if (pin) dmabuf.ops.unpin!(attach);
    return m;
  }
  if (core.profile.dmaBuf.cacheSgtMapping && dmabuf.ops.cache_sgt_mapping) {
    attach.sgt = m.value.importer;
    attach.dir = dir;
  }
  return kok(m.value.importer);
}

/** Lock, map, unlock. models dma_buf_map_attachment_unlocked() */
export function dmaBufMapAttachmentUnlocked(
  attach: DmaBufAttachment | null,
  dir: DmaDirection,
): KResult<SgTable> {
  if (!attach) return kerr("EINVAL", "dma_buf_map_attachment_unlocked(NULL)", { warn: true });
  const { resv } = attach.live("dma_buf_map_attachment_unlocked()").dmabuf;
  resv.lock("dma_buf_map_attachment_unlocked");
  try {
    return dmaBufMapAttachment(attach, dir);
  } finally {
    resv.unlock("dma_buf_map_attachment_unlocked");
  }
}

/**
 * Give a table back: ≤6.14 the cached one is left alone; else undo the debug wrapping, the
 * exporter's unmap with its own table, and unpin if map pinned. A table the core did not hand
 * out for this attachment throws (the kernel would unmap garbage). models dma_buf_unmap_attachment()
 */
export function dmaBufUnmapAttachment(
  attach: DmaBufAttachment | null,
  sgt: SgTable | null,
  dir: DmaDirection,
): void {
  if (!attach || !sgt) {
    attach?.dmabuf.core.warn("dma_buf_unmap_attachment(NULL)");
    return;
  }
  const { dmabuf } = attach.live("dma_buf_unmap_attachment()");
  assertMapResv(attach, "dma_buf_unmap_attachment", "before-cache");
  if (attach.sgt === sgt) return;
  assertMapResv(attach, "dma_buf_unmap_attachment", "after-cache");
  const h = attach.handed.find((x) => x.importer === sgt);
  if (!h)
    throw new KernelBug(
      `dma_buf_unmap_attachment(): ${sgt.name} was not mapped through ${attach.describe()} (or was already unmapped)`,
    );
  unmapDmaBuf(attach, h, dir);
  if (dmaBufPinOnMap(attach)) dmabuf.ops.unpin!(attach);
}

// models dma_buf_unmap_attachment_unlocked()
export function dmaBufUnmapAttachmentUnlocked(
  attach: DmaBufAttachment,
  sgt: SgTable,
  dir: DmaDirection,
): void {
  const { resv } = attach.live("dma_buf_unmap_attachment_unlocked()").dmabuf;
  resv.lock("dma_buf_unmap_attachment_unlocked");
  try {
    dmaBufUnmapAttachment(attach, sgt, dir);
  } finally {
    resv.unlock("dma_buf_unmap_attachment_unlocked");
  }
}
