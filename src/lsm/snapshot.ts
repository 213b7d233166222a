// Snapshots: a sequence number that reads and iterators see the database at; the DB keeps the
// live ones so compaction keeps every version some snapshot can still see.

/** A consistent point-in-time view: reads and iterators given it see the DB as of its creation. */
export class Snapshot {
  private released = false;
  /** @internal */
  constructor(readonly seq: number, private readonly onRelease: (s: Snapshot) => void) {}
  get isReleased(): boolean {
    return this.released;
  }
  release(): void {
    if (this.released) return;
    this.released = true;
    this.onRelease(this);
  }
}
