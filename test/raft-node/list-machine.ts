// A tiny replicated state machine for driver tests: the list of applied commands. It keeps a
// "durable" copy that only sync() (or an automatic flush every N entries) updates, so a crash loses
// what an LSM would lose, and it streams snapshots as msgpack chunks.

import { pack, unpackMultiple } from "msgpackr";
import { type Entry, EntryType, type SnapshotMeta, type StateMachine } from "../../src/raft/index.ts";

interface Image {
  commands: string[];
  index: number;
  term: number;
}

const ITEMS_PER_CHUNK = 16;
const decoder = new TextDecoder();

export class ListMachine implements StateMachine {
  private state: Image;
  private durable: Image;
  /** Problems seen (an index applied twice or out of order): tests assert this stays empty. */
  readonly violations: string[] = [];
  restores = 0;

  constructor(
    from: Image = { commands: [], index: 0, term: 0 },
    /** Makes the applied state durable on its own every this many entries (0 = only on sync). */
    private readonly flushEvery = 0,
  ) {
    this.state = copy(from);
    this.durable = copy(from);
  }

  /** The next incarnation after a crash: only the durable state survives. */
  recover(): ListMachine {
    return new ListMachine(this.durable, this.flushEvery);
  }

  get commands(): readonly string[] {
    return this.state.commands;
  }

  /** Set by the driver while it applied beyond its durable log (see StateMachine.limitDurableApplied). */
  durableLimit: number | null = null;

  limitDurableApplied(index: number | null): void {
    this.durableLimit = index;
  }

  /** Called at the start of every apply (tests look at what else is going on at that moment). */
  onApply: ((entries: Entry[]) => void) | null = null;

  async apply(entries: Entry[]): Promise<void> {
    this.onApply?.(entries);
    for (const e of entries) {
      if (e.index !== this.state.index + 1) {
        this.violations.push(`entry ${e.index} applied after ${this.state.index}`);
        continue;
      }
      if (e.type === EntryType.Normal) this.state.commands.push(decoder.decode(e.data));
      this.state.index = e.index;
      this.state.term = e.term;
      const mayFlush = this.durableLimit === null || this.state.index <= this.durableLimit;
      if (this.flushEvery > 0 && mayFlush && this.state.index - this.durable.index >= this.flushEvery) this.durable = copy(this.state);
    }
  }

  lastApplied(): number {
    return this.state.index;
  }
  lastAppliedTerm(): number {
    return this.state.term;
  }
  durableAppliedIndex(): number {
    return this.durable.index;
  }
  async sync(): Promise<number> {
    if (this.durableLimit !== null && this.state.index > this.durableLimit) {
      this.violations.push(`sync at applied ${this.state.index} while the log is durable only through ${this.durableLimit}`);
    }
    this.durable = copy(this.state);
    return this.durable.index;
  }

  async snapshot(): Promise<{ meta: SnapshotMeta; chunks: AsyncIterable<Uint8Array> }> {
    const image = copy(this.state);
    async function* chunks(): AsyncGenerator<Uint8Array> {
      for (let i = 0; i < image.commands.length; i += ITEMS_PER_CHUNK) {
        yield pack(image.commands.slice(i, i + ITEMS_PER_CHUNK));
      }
    }
    return { meta: { index: image.index, term: image.term, members: [] }, chunks: chunks() };
  }

  async restore(meta: SnapshotMeta, chunks: AsyncIterable<Uint8Array>): Promise<void> {
    // Chunk boundaries may differ from what snapshot() yielded (the driver re-cuts them): gather first.
    const parts: Uint8Array[] = [];
    for await (const chunk of chunks) parts.push(chunk);
    const commands: string[] = [];
    // msgpack values are self-delimiting: the stream is a sequence of string arrays.
    if (parts.length > 0) for (const slice of unpackMultiple(Buffer.concat(parts)) as string[][]) commands.push(...slice);
    this.state = { commands, index: meta.index, term: meta.term };
    this.durable = copy(this.state); // restore is atomic and durable
    this.restores++;
  }
}

function copy(image: Image): Image {
  return { commands: [...image.commands], index: image.index, term: image.term };
}
