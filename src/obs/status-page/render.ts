// Draws the status page from its state: tables as HTML text (every value escaped), two uPlot
// charts created once and fed new data on each poll.

import uPlot from "uplot";

export interface MemberView {
  id: number;
  address: string;
  online: boolean;
  state: string;
  term?: number;
  commitIndex?: number;
  lastApplied?: number;
  snapshotIndex?: number;
  keyCount?: number;
  storageSize?: number;
  leaderId?: number | null;
  ready?: boolean | null;
  lag?: number;
  error?: string;
}

export interface PageState {
  ticks: number;
  self: number;
  leader: number | null;
  members: MemberView[];
  followers: { id: number; match: number; last: number; behind: number }[];
  levels: ({ level: number; files: number; bytes: number }[] | null)[];
  events: { node: number; time: number; kind: string; term: number; message: string }[];
  throughput: { time: number[]; writes: number[]; reads: number[] };
  latency: { time: number[]; p50: (number | null)[]; p99: (number | null)[] };
  errors: string[];
}

interface Element {
  innerHTML: string;
  textContent: string | null;
  clientWidth: number;
}
const doc = (globalThis as unknown as { document: { getElementById(id: string): Element | null; querySelector(s: string): Element | null } }).document;

function byId(id: string): Element {
  const element = doc.getElementById(id);
  if (element === null) throw new Error(`the page has no #${id}`);
  return element;
}

function escape(text: unknown): string {
  return String(text).replace(/[&<>"']/g, (c) => `&#${c.charCodeAt(0)};`);
}

function bytes(n: number | undefined): string {
  if (n === undefined) return "";
  const units = ["B", "KiB", "MiB", "GiB", "TiB"];
  let i = 0;
  while (n >= 1024 && i < units.length - 1) {
    n /= 1024;
    i++;
  }
  return `${n.toFixed(i === 0 ? 0 : 1)} ${units[i]}`;
}

const num = (n: number | undefined) => (n === undefined ? "" : n.toLocaleString("en"));

let charts: { throughput: uPlot; latency: uPlot } | null = null;

function makeCharts(): { throughput: uPlot; latency: uPlot } {
  const width = (id: string) => Math.max(320, byId(id).clientWidth - 8);
  const axes = [{}, { size: 56 }];
  const throughput = new uPlot(
    {
      width: width("throughput"),
      height: 220,
      axes,
      series: [{}, { label: "writes/s", stroke: "#2f6fde", width: 2 }, { label: "reads/s", stroke: "#0a7d32", width: 2 }],
      scales: { y: { range: (_u, _min, max) => [0, Math.max(10, max * 1.1)] } },
    },
    [[], [], []],
    byId("throughput") as unknown as ConstructorParameters<typeof uPlot>[2] & object,
  );
  const latency = new uPlot(
    {
      width: width("latency"),
      height: 220,
      axes,
      series: [{}, { label: "p50 ms", stroke: "#2f6fde", width: 2 }, { label: "p99 ms", stroke: "#b3261e", width: 2 }],
      scales: { y: { range: (_u, _min, max) => [0, Math.max(1, max * 1.1)] } },
    },
    [[], [], []],
    byId("latency") as unknown as ConstructorParameters<typeof uPlot>[2] & object,
  );
  return { throughput, latency };
}

export function render(state: PageState): void {
  byId("leader").textContent = state.leader === null ? "leader: none known" : `leader: node ${state.leader}`;
  byId("updated").textContent = `updated ${new Date().toLocaleTimeString()}${state.self >= 0 ? ` · served by node ${state.self}` : ""}`;

  doc.querySelector("#members tbody")!.innerHTML = state.members
    .map((m) =>
      m.online
        ? `<tr data-node="${m.id}"><td>${m.id}${m.id === state.self ? " (this)" : ""}</td><td class="text">${escape(m.address)}</td>` +
          `<td class="text ${escape(m.state)}">${escape(m.state)}</td><td>${num(m.term)}</td><td>${num(m.commitIndex)}</td>` +
          `<td>${num(m.lastApplied)}</td><td>${num(m.snapshotIndex)}</td><td>${num(m.keyCount)}</td><td>${bytes(m.storageSize)}</td>` +
          `<td>${m.lag === undefined ? "" : num(m.lag)}</td><td class="text">${m.ready === true ? "ready" : m.ready === false ? '<span class="error">not ready</span>' : ""}</td></tr>`
        : `<tr data-node="${m.id}"><td>${m.id}</td><td class="text">${escape(m.address)}</td><td class="text Offline">Offline</td>` +
          `<td colspan="8" class="text muted">${escape((m.error ?? "").slice(0, 120))}</td></tr>`,
    )
    .join("");

  doc.querySelector("#followers tbody")!.innerHTML =
    state.followers.length === 0
      ? `<tr><td colspan="4" class="text muted">no leader reachable</td></tr>`
      : state.followers
          .map((f) => {
            const share = f.last === 0 ? 100 : Math.min(100, (100 * f.match) / f.last);
            return `<tr><td>node ${f.id}</td><td>${num(f.match)}</td><td>${num(f.behind)}</td><td class="text"><div class="bar"><div style="width:${share.toFixed(1)}%"></div></div></td></tr>`;
          })
          .join("");

  // Levels up to the deepest one holding a table on any member (L0 always).
  const depth = Math.max(1, ...state.levels.map((l) => (l === null ? 0 : 1 + Math.max(0, ...l.filter((x) => x.files > 0).map((x) => x.level)))));
  doc.querySelector("#levels thead")!.innerHTML =
    `<tr><th class="text">node</th>${Array.from({ length: depth }, (_, i) => `<th>L${i}</th>`).join("")}</tr>`;
  doc.querySelector("#levels tbody")!.innerHTML = state.levels
    .map((levels, i) => [levels, state.members[i]?.id ?? i] as const)
    .map(([levels, id]) =>
      levels === null
        ? `<tr><td>${id}</td><td colspan="${Math.max(1, depth)}" class="text muted">no metrics</td></tr>`
        : `<tr><td>${id}</td>${levels.slice(0, depth).map((l) => `<td>${l.files} · ${bytes(l.bytes)}</td>`).join("")}</tr>`,
    )
    .join("");

  byId("events").innerHTML =
    state.events.length === 0
      ? `<li class="muted">none yet</li>`
      : state.events
          .map((e) => `<li class="${e.kind === "error" ? "error" : ""}">${escape(new Date(e.time).toLocaleTimeString())} · node ${e.node} · term ${e.term} · ${escape(e.message)}</li>`)
          .join("");

  charts ??= makeCharts();
  charts.throughput.setData([state.throughput.time, state.throughput.writes, state.throughput.reads]);
  charts.latency.setData([state.latency.time, state.latency.p50, state.latency.p99] as uPlot.AlignedData);
}
