/**
 * @module profile
 * Kernel profiles: every behaviour that differs between kernel versions is chosen here, never by
 * scattered version checks. `6.1` is Debian 12's kernel (the one in our QEMU oracle);
 * `mainline` is the current PCI tree.
 */

/** PCI_P2PDMA allowlist entry flag: both devices must sit under this one host bridge. */
export const REQ_SAME_HOST_BRIDGE = 1;
/** PCI_ANY_ID as a device match (mainline only). */
export const ANY_DEVICE = -1;

export interface AllowlistEntry {
  readonly vendor: number;
  readonly device: number;
  readonly flags: number;
}

export type MapTypeName =
  | "unknown"
  | "none"
  | "not-supported"
  | "bus-address"
  | "through-host-bridge";

export interface KernelProfile {
  readonly id: "6.1" | "mainline";
  readonly description: string;
  /** `pci_p2pdma_whitelist[]` in table order. */
  readonly allowlist: readonly AllowlistEntry[];
  /** `pci_host_bridge_dev()`: mainline and 6.1 fall back to a Root Port when 00.0 is absent. */
  readonly hostBridgeRootPortFallback: boolean;
  /** `enum pci_p2pdma_map_type` values. */
  readonly mapTypeEnum: Readonly<Partial<Record<MapTypeName, number>>>;
  /** Word the kernel's messages use ("whitelist" in 6.1 and in the current PCI tree). */
  readonly allowlistWord: "whitelist" | "allowlist";
  /**
   * `disable_acs_redir`: 6.1 clears RR|CR|EC from the current word (keeping the kernel's SV/UF);
   * mainline recomputes from the firmware word.
   */
  readonly disableAcsRedirFrom: "current" | "firmware";
  /** `pci=config_acs=` exists (mainline only). */
  readonly hasConfigAcs: boolean;
  /** `pci_has_p2pmem`: mainline also needs a gen_pool. */
  readonly findNeedsPool: boolean;
  /**
   * IOVA rcache (drivers/iommu/iova.c): pfns per magazine, and the depot of full magazines. 6.1:
   * a fixed array; when it is full the loaded magazine's pfns go back to the tree. Mainline
   * (6.7+): an unbounded list, trimmed by delayed work, one magazine per run, while it holds more
   * magazines than there are online CPUs.
   */
  readonly iovaRcache: IovaRcacheProfile;
  /**
   * `iommu_dma_alloc_iova`, PCI device with a DMA limit above 32 bits: 6.1 tries below 4 GiB
   * first on every allocation; mainline (6.4+, `pci_32bit_workaround`) stops after the first
   * failure and logs "Using N-bit DMA addresses".
   */
  readonly pciSacFirst: "every-allocation" | "until-first-failure";
  /** dma-iommu flush queue (DMA_FQ domains): per-CPU rings, and mainline's single big queue. */
  readonly iovaFlushQueue: {
    readonly perCpu: FlushQueueGeometry;
    readonly single: FlushQueueGeometry | null;
  };
  /** The dma-buf core (drivers/dma-buf/dma-buf.c); spec dma-buf.md §2, §3.3, §7. */
  readonly dmaBuf: DmaBufProfile;
  /**
   * vfio-pci's dma-buf export of BAR ranges (drivers/vfio/pci/vfio_pci_dmabuf.c, v6.19+); null
   * where the kernel has none (VFIO_DEVICE_FEATURE_DMA_BUF is an unknown feature: -ENOTTY).
   */
  readonly vfioDmaBuf: VfioDmaBufProfile | null;
  /** udmabuf (drivers/dma-buf/udmabuf.c): memfd pages turned into a dma-buf. */
  readonly udmabuf: UdmabufProfile;
}

/** What differs in vfio-pci's dma-buf exporter. */
export interface VfioDmaBufProfile {
  /**
   * `dma_buf_ops.pin` exists and returns -EOPNOTSUPP ("vfio: Prevent from pinned DMABUF importers
   * to attach to VFIO DMABUF", 61ceaf236115, v6.19-rc8): importers that pin (dma_buf_pin, or
   * pin-on-map) are refused, and the exporter counts as dynamic. false: v6.19 before the fix, a
   * static exporter that pinned importers could use and then keep using after a revoke.
   */
  readonly pinRefused: boolean;
}

/** What differs in udmabuf between 6.1 and mainline. */
export interface UdmabufProfile {
  /**
   * How `get_sg_table()` builds a table: `from-pages` (6.1: sg_alloc_table_from_pages, physically
   * contiguous pages merged into one entry) or `page-per-entry` (mainline: sg_alloc_table of
   * pagecount entries, one sg_set_folio of PAGE_SIZE each).
   */
  readonly sgTable: "from-pages" | "page-per-entry";
  /** `dma_map_sgtable()` with DMA_ATTR_SKIP_CPU_SYNC (6.1) or no attributes (mainline). */
  readonly mapSkipCpuSync: boolean;
  /**
   * begin_cpu_access syncs for the CPU also right after it created its table (6.1), or only on
   * later calls (mainline: create, else sync).
   */
  readonly beginSyncsNewTable: boolean;
  /**
   * The direction release unmaps the CPU-access table with: the one of the begin_cpu_access that
   * created it (6.1 `ubuf->sg_dir`) or always DMA_BIDIRECTIONAL (mainline).
   */
  readonly releaseDir: "creating-begin" | "bidirectional";
  /**
   * How the memfd pages are held: a page reference from shmem_read_mapping_page (6.1) or a
   * FOLL_PIN pin from memfd_pin_folios (mainline; the model counts it as one reference).
   */
  readonly pageHold: "get-page" | "pin-folios";
  /** `vmap`/`vunmap` ops exist (mainline; 6.1 has none: dma_buf_vmap is -EINVAL). */
  readonly vmap: boolean;
}

/** What differs in the dma-buf core between kernel versions. */
export interface DmaBufProfile {
  /**
   * `dma_buf_ops.cache_sgt_mapping` exists: the core caches an exporter's first mapping per
   * attachment, and `dma_buf_export` refuses it together with pin/unpin (WARN, -EINVAL).
   * Removed by "dma-buf: drop caching of sg_tables" (b72f66f22c0e, ~6.15).
   */
  readonly cacheSgtMapping: boolean;
  /**
   * `dma_buf_dynamic_attach` maps at attach time (DMA_BIDIRECTIONAL, pinning a dynamic exporter
   * first) and caches the table when exactly one of importer/exporter is dynamic; `detach`
   * unmaps (and unpins) it. Removed by "dma-buf: stop mapping sg_tables on attach v2"
   * (de68b17d5d07, ~6.15).
   */
  readonly mapOnAttachIfMismatch: boolean;
  /**
   * When `dma_buf_map_attachment` pins (and unmap unpins). `exporter-dynamic-no-move-notify`
   * (6.1): exporter has pin and CONFIG_DMABUF_MOVE_NOTIFY is off (static importers of dynamic
   * exporters were pinned at attach). `pin-on-map` (mainline `dma_buf_pin_on_map`): exporter has
   * pin and (importer is static or CONFIG_DMABUF_MOVE_NOTIFY is off).
   */
  readonly pinOnMap: "exporter-dynamic-no-move-notify" | "pin-on-map";
  /**
   * Which map/unmap calls assert the resv lock: `dynamic` (6.1: only when the importer or the
   * exporter is dynamic) or `always` (mainline: every attachment).
   */
  readonly mapAssertsResv: "dynamic" | "always";
  /** Map warns (WARN_ON_ONCE) when the exporter's pin returns -EBUSY (mainline only). */
  readonly warnOnPinBusy: boolean;
  /**
   * CONFIG_DMABUF_DEBUG. `xor-page-link` (6.1 `mangle_sg_table`): the exporter's own table is
   * handed over with every CPU entry's `page_link` XORed with ~0xff (CHAIN/END bits kept) and
   * XORed back at unmap; an importer's `sg_page()` yields a wild pointer (the model throws).
   * `null-page-copy` (mainline "improve sg_table debugging hack v3"): the importer gets a copy
   * with `nents` entries, page NULL, offset and length 0, the DMA address and length copied; the
   * exporter's table is untouched and comes back at unmap; `sg_page()` yields NULL.
   */
  readonly debugSgt: "xor-page-link" | "null-page-copy";
  /**
   * How vmap/vunmap are serialised: `dmabuf-mutex` (6.1: `dmabuf->lock`, taken inside; callers
   * need not hold the resv) or `resv` (mainline: caller holds the resv; `_unlocked` variants).
   */
  readonly vmapLock: "dmabuf-mutex" | "resv";
}

export interface FlushQueueGeometry {
  /** Ring slots (`IOVA_*_FQ_SIZE`); one stays empty, so size - 1 frees fit. */
  readonly size: number;
  /** `IOVA_*_FQ_TIMEOUT`, ms. */
  readonly timeoutMs: number;
}

export type IovaRcacheProfile =
  | {
      readonly magSize: number;
      readonly depot: { readonly kind: "array"; readonly maxGlobalMags: number };
    }
  | {
      readonly magSize: number;
      readonly depot: { readonly kind: "list"; readonly depotDelayMs: number };
    };

const ALLOWLIST_61: AllowlistEntry[] = [
  { vendor: 0x8086, device: 0x3c00, flags: REQ_SAME_HOST_BRIDGE },
  { vendor: 0x8086, device: 0x3c01, flags: REQ_SAME_HOST_BRIDGE },
  { vendor: 0x8086, device: 0x2f00, flags: REQ_SAME_HOST_BRIDGE },
  { vendor: 0x8086, device: 0x2f01, flags: REQ_SAME_HOST_BRIDGE },
  { vendor: 0x8086, device: 0x2030, flags: 0 },
  { vendor: 0x8086, device: 0x2031, flags: 0 },
  { vendor: 0x8086, device: 0x2032, flags: 0 },
  { vendor: 0x8086, device: 0x2033, flags: 0 },
  { vendor: 0x8086, device: 0x2020, flags: 0 },
  { vendor: 0x8086, device: 0x09a2, flags: 0 },
];

const ALLOWLIST_MAINLINE: AllowlistEntry[] = [
  ...ALLOWLIST_61,
  // Intel DSA/IAX/QAT devices that sit at 00.0 of their own root buses
  ...[0x0b25, 0x0cfe, 0x11fb, 0x1212, 0x1216, 0x4940, 0x4942, 0x4944, 0x4946, 0x4948].map(
    (device) => ({
      vendor: 0x8086,
      device,
      flags: 0,
    }),
  ),
  { vendor: 0x1ae0, device: ANY_DEVICE, flags: 0 }, // Google SoCs
  ...[0x2f95, 0x2f96, 0x2f97, 0x2f98].map((device) => ({ vendor: 0x10de, device, flags: 0 })),
  ...[0x1003, 0x1005, 0x1006, 0x1007].map((device) => ({
    vendor: 0x1d17,
    device,
    flags: REQ_SAME_HOST_BRIDGE,
  })),
  { vendor: 0x1d17, device: 0x1008, flags: 0 },
];

export const PROFILES: Readonly<Record<KernelProfile["id"], KernelProfile>> = {
  "6.1": {
    id: "6.1",
    description: "Linux 6.1 (Debian 12; the kernel-oracle captures)",
    allowlist: ALLOWLIST_61,
    hostBridgeRootPortFallback: true,
    mapTypeEnum: { unknown: 0, "not-supported": 1, "bus-address": 2, "through-host-bridge": 3 },
    allowlistWord: "whitelist",
    disableAcsRedirFrom: "current",
    hasConfigAcs: false,
    findNeedsPool: false,
    // 6.1.192 has the 127-entry magazine (backported) with the old depot array
    iovaRcache: { magSize: 127, depot: { kind: "array", maxGlobalMags: 32 } },
    pciSacFirst: "every-allocation",
    iovaFlushQueue: { perCpu: { size: 256, timeoutMs: 10 }, single: null },
    dmaBuf: {
      cacheSgtMapping: true,
      mapOnAttachIfMismatch: true,
      pinOnMap: "exporter-dynamic-no-move-notify",
      mapAssertsResv: "dynamic",
      warnOnPinBusy: false,
      debugSgt: "xor-page-link",
      vmapLock: "dmabuf-mutex",
    },
    vfioDmaBuf: null,
    udmabuf: {
      sgTable: "from-pages",
      mapSkipCpuSync: true,
      beginSyncsNewTable: true,
      releaseDir: "creating-begin",
      pageHold: "get-page",
      vmap: false,
    },
  },
  mainline: {
    id: "mainline",
    description: "current mainline (PCI tree, 2026)",
    allowlist: ALLOWLIST_MAINLINE,
    hostBridgeRootPortFallback: true,
    mapTypeEnum: {
      unknown: 0,
      none: 1,
      "not-supported": 2,
      "bus-address": 3,
      "through-host-bridge": 4,
    },
    allowlistWord: "whitelist",
    disableAcsRedirFrom: "firmware",
    hasConfigAcs: true,
    findNeedsPool: true,
    iovaRcache: { magSize: 127, depot: { kind: "list", depotDelayMs: 100 } },
    pciSacFirst: "until-first-failure",
    iovaFlushQueue: {
      perCpu: { size: 256, timeoutMs: 10 },
      single: { size: 32768, timeoutMs: 1000 },
    },
    dmaBuf: {
      cacheSgtMapping: false,
      mapOnAttachIfMismatch: false,
      pinOnMap: "pin-on-map",
      mapAssertsResv: "always",
      warnOnPinBusy: true,
      debugSgt: "null-page-copy",
      vmapLock: "resv",
    },
    vfioDmaBuf: { pinRefused: true },
    udmabuf: {
      sgTable: "page-per-entry",
      mapSkipCpuSync: false,
      beginSyncsNewTable: false,
      releaseDir: "bidirectional",
      pageHold: "pin-folios",
      vmap: true,
    },
  },
};

export const DEFAULT_PROFILE: KernelProfile["id"] = "6.1";

export function kernelProfile(id: string): KernelProfile | undefined {
  return (PROFILES as Record<string, KernelProfile>)[id];
}
