// Open addressing with linear probing and backward-shift deletion (no tombstones): the index under the flow, token
// and service tables. Entries are non-zero integers (0 = empty slot) that the owning table maps back to its records.
// The owner writes its own lookup loop over `slots`, since it alone knows how to compare its key; insertion and
// removal live here. No allocation after construction.

export class OpenIndex {
  /** A power of two of slots; entry 0 is an empty slot. */
  readonly slots: Int32Array;
  readonly mask: number;
  /** The hash an entry was inserted under: remove() needs it to move later entries back. */
  private readonly homeOf: (entry: number) => number;

  /** At least `minSlots` slots. `homeOf` is called only by remove(), with entries that are in the index. */
  constructor(minSlots: number, homeOf: (entry: number) => number = noRemove) {
    let size = 4;
    while (size < minSlots) size <<= 1;
    this.slots = new Int32Array(size);
    this.mask = size - 1;
    this.homeOf = homeOf;
  }

  /** Puts `entry` in the first free slot of hash h's probe chain. The caller keeps the load factor below 1. */
  insert(h: number, entry: number): void {
    const slots = this.slots, mask = this.mask;
    let s = h & mask;
    while (slots[s] !== 0) s = (s + 1) & mask;
    slots[s] = entry;
  }

  /**
   * Slot of the first entry in hash h's chain for which `matches` holds, or -1. Cold path (callers may pass a
   * closure); hot lookups loop over `slots` themselves.
   */
  findSlot(h: number, matches: (entry: number) => boolean): number {
    const slots = this.slots, mask = this.mask;
    for (let s = h & mask; slots[s] !== 0; s = (s + 1) & mask) if (matches(slots[s])) return s;
    return -1;
  }

  /**
   * Removes `entry`, inserted under hash h; false when it is not there. The entries after it in the chain move back
   * into the hole unless that would put them before their home slot, so every chain stays unbroken.
   */
  remove(h: number, entry: number): boolean {
    const slots = this.slots, mask = this.mask;
    let hole = h & mask;
    while (slots[hole] !== entry) {
      if (slots[hole] === 0) return false;
      hole = (hole + 1) & mask;
    }
    for (let j = (hole + 1) & mask; slots[j] !== 0; j = (j + 1) & mask) {
      const home = this.homeOf(slots[j]) & mask;
      // An entry may move to the hole when its home is not in the cyclic range (hole, j].
      if (hole <= j ? home <= hole || home > j : home <= hole && home > j) {
        slots[hole] = slots[j];
        hole = j;
      }
    }
    slots[hole] = 0;
    return true;
  }

  clear(): void { this.slots.fill(0); }
}

function noRemove(): number { throw new Error('this index does not remove entries'); }
