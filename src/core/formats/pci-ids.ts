/**
 * @module pci-ids
 * Reads the PCI ID database (`pci.ids`, the file pciutils and hwdata ship): vendors, devices,
 * subsystems, classes, subclasses and programming interfaces. Vendor lines are indexed in one
 * pass; a vendor's device and subsystem lines are parsed the first time that vendor is looked up.
 * Lines that fit none of the file's shapes are skipped, never refused.
 */

export interface PciIds {
  /** The `Version:` comment at the top, when present. */
  readonly version: string | undefined;
  vendorName(vendor: number): string | undefined;
  deviceName(vendor: number, device: number): string | undefined;
  subsystemName(
    vendor: number,
    device: number,
    subVendor: number,
    subDevice: number,
  ): string | undefined;
  /** 24-bit class code (base, sub, prog-if): the subclass name, else the base class name. */
  className(classCode: number): string | undefined;
  /** 24-bit class code: the name of its programming interface, when the database has one. */
  progIfName(classCode: number): string | undefined;
  /** The vendor ID whose name is exactly `name`; undefined when none or several. */
  vendorByName(name: string): number | undefined;
  /** The device ID of `vendor` named exactly `name`; undefined when none or several. */
  deviceByName(vendor: number, name: string): number | undefined;
  /** `base << 8 | sub` of the subclass named exactly `name`; undefined when none or several. */
  subclassByName(name: string): number | undefined;
}

interface DeviceEntry {
  readonly name: string;
  /** key: subVendor << 16 | subDevice */
  readonly subsystems: Map<number, string>;
}

interface VendorEntry {
  readonly name: string;
  /** Line range [start, end) of the vendor's device and subsystem lines. */
  readonly start: number;
  end: number;
  devices?: Map<number, DeviceEntry>;
  byName?: Map<string, number | null>;
}

const VENDOR_RE = /^([0-9a-fA-F]{4})\s+(\S.*)$/;
const DEVICE_RE = /^\t([0-9a-fA-F]{4})\s+(\S.*)$/;
const SUBSYS_RE = /^\t\t([0-9a-fA-F]{4})\s+([0-9a-fA-F]{4})\s+(\S.*)$/;
const CLASS_RE = /^C\s+([0-9a-fA-F]{2})\s+(\S.*)$/;
const SUBCLASS_RE = /^\t([0-9a-fA-F]{2})\s+(\S.*)$/;
const PROGIF_RE = /^\t\t([0-9a-fA-F]{2})\s+(\S.*)$/;

const hex = (s: string): number => Number.parseInt(s, 16);

/** Adds name → id, remembering ambiguity as null. */
function index(map: Map<string, number | null>, name: string, id: number): void {
  const old = map.get(name);
  map.set(name, old === undefined || old === id ? id : null);
}

class PciIdsDb implements PciIds {
  readonly version: string | undefined;
  readonly #lines: readonly string[];
  readonly #vendors = new Map<number, VendorEntry>();
  /** key: base */
  readonly #classes = new Map<number, string>();
  /** key: base << 8 | sub */
  readonly #subclasses = new Map<number, string>();
  /** key: base << 16 | sub << 8 | prog-if */
  readonly #progIfs = new Map<number, string>();
  #vendorByName: Map<string, number | null> | undefined;
  #subclassByName: Map<string, number | null> | undefined;

  constructor(text: string) {
    const lines = text.split("\n");
    this.#lines = lines;
    let version: string | undefined;
    let vendor: VendorEntry | undefined;
    let base = -1;
    let sub = -1;
    for (let i = 0; i < lines.length; i++) {
      const raw = lines[i]!;
      const c = raw.charCodeAt(0);
      if (c === 9 /* tab */) {
        if (base >= 0) {
          const line = raw.trimEnd();
          const pm = PROGIF_RE.exec(line);
          if (pm) {
            if (sub >= 0) this.#progIfs.set((base << 16) | (sub << 8) | hex(pm[1]!), pm[2]!);
            continue;
          }
          const sm = SUBCLASS_RE.exec(line);
          if (sm) {
            sub = hex(sm[1]!);
            this.#subclasses.set((base << 8) | sub, sm[2]!);
          }
        }
        continue; // vendor sub-lines are read lazily
      }
      if (c === 35 /* # */) {
        if (version === undefined && i < 50) {
          const m = /^#\s*Version:\s*(\S+)/.exec(raw);
          if (m) version = m[1];
        }
        continue;
      }
      const line = raw.trimEnd();
      if (line === "") continue;
      const cm = CLASS_RE.exec(line);
      if (cm) {
        if (vendor) vendor.end = i;
        vendor = undefined;
        base = hex(cm[1]!);
        sub = -1;
        this.#classes.set(base, cm[2]!);
        continue;
      }
      const vm = VENDOR_RE.exec(line);
      if (vm) {
        if (vendor) vendor.end = i;
        base = -1;
        vendor = { name: vm[2]!, start: i + 1, end: lines.length };
        const id = hex(vm[1]!);
        if (!this.#vendors.has(id)) this.#vendors.set(id, vendor);
        continue;
      }
      // another top-level section (or junk) ends the current vendor/class
      if (vendor) vendor.end = i;
      vendor = undefined;
      base = -1;
    }
    this.version = version;
  }

  #devices(vendor: number): { entry: VendorEntry; devices: Map<number, DeviceEntry> } | undefined {
    const entry = this.#vendors.get(vendor);
    if (!entry) return undefined;
    if (!entry.devices) {
      const devices = new Map<number, DeviceEntry>();
      let dev: DeviceEntry | undefined;
      for (let i = entry.start; i < entry.end; i++) {
        const line = this.#lines[i]!.trimEnd();
        const sm = SUBSYS_RE.exec(line);
        if (sm) {
          dev?.subsystems.set(((hex(sm[1]!) << 16) | hex(sm[2]!)) >>> 0, sm[3]!);
          continue;
        }
        const dm = DEVICE_RE.exec(line);
        if (dm) {
          const id = hex(dm[1]!);
          dev = devices.get(id);
          if (!dev) {
            dev = { name: dm[2]!, subsystems: new Map() };
            devices.set(id, dev);
          }
        }
      }
      entry.devices = devices;
    }
    return { entry, devices: entry.devices };
  }

  vendorName(vendor: number): string | undefined {
    return this.#vendors.get(vendor)?.name;
  }

  deviceName(vendor: number, device: number): string | undefined {
    return this.#devices(vendor)?.devices.get(device)?.name;
  }

  subsystemName(
    vendor: number,
    device: number,
    subVendor: number,
    subDevice: number,
  ): string | undefined {
    return this.#devices(vendor)
      ?.devices.get(device)
      ?.subsystems.get(((subVendor << 16) | subDevice) >>> 0);
  }

  className(classCode: number): string | undefined {
    const base = (classCode >> 16) & 0xff;
    const sub = (classCode >> 8) & 0xff;
    return this.#subclasses.get((base << 8) | sub) ?? this.#classes.get(base);
  }

  progIfName(classCode: number): string | undefined {
    return this.#progIfs.get(classCode & 0xffffff);
  }

  vendorByName(name: string): number | undefined {
    if (!this.#vendorByName) {
      const m = new Map<string, number | null>();
      for (const [id, v] of this.#vendors) index(m, v.name, id);
      this.#vendorByName = m;
    }
    return this.#vendorByName.get(name) ?? undefined;
  }

  deviceByName(vendor: number, name: string): number | undefined {
    const found = this.#devices(vendor);
    if (!found) return undefined;
    if (!found.entry.byName) {
      const m = new Map<string, number | null>();
      for (const [id, d] of found.devices) index(m, d.name, id);
      found.entry.byName = m;
    }
    return found.entry.byName.get(name) ?? undefined;
  }

  subclassByName(name: string): number | undefined {
    if (!this.#subclassByName) {
      const m = new Map<string, number | null>();
      for (const [key, n] of this.#subclasses) index(m, n, key);
      this.#subclassByName = m;
    }
    return this.#subclassByName.get(name) ?? undefined;
  }
}

/** Parses the text of a `pci.ids` file. Never throws: unreadable lines are skipped. */
export function parsePciIds(text: string): PciIds {
  return new PciIdsDb(text);
}
