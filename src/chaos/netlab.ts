/**
 * netlab: real network faults between real node processes, inside network namespaces.
 *
 * NetLab builds a small private network that never touches the host's own network configuration:
 *
 *   switch namespace (`…-sw`): one Linux bridge `br0`, no address; one veth port per member
 *   node namespace (`…-n<id>`): `eth0` = <subnet>.(10 + id), `lo` up
 *   client namespace (`…-c`):   `eth0` = <subnet>.250, `lo` up (tests, CLI and NBD clients run here)
 *
 * Every veth pair is created with its ends directly inside the lab's namespaces (`ip -n SW link add
 * … peer … netns NODE`), so no interface ever exists in the host namespace, even for an instant.
 *
 * Faults are directed links `from -> to` whose IPv4 packets are dropped. They live in ONE nftables
 * table (`bridge chard`, hook `forward`) in the switch namespace, and every change replaces that whole
 * table in one `nft -f -` transaction: a change is atomic for the whole lab (there is never a moment
 * with half of a partition applied) and takes one process spawn (a few ms to a few tens of ms).
 * Rules are stateless: established TCP connections are cut as well, exactly like a pulled cable.
 *
 * One-way cuts are really one-way at the packet level. TCP needs both directions, so after
 * `cut(1, 2)` a connection attempt fails BOTH ways (1->2: the SYN is dropped; 2->1: the SYN arrives
 * but the SYN-ACK is dropped), while on an already established connection bytes 2->1 still reach
 * node 1's application (its ACKs are lost, so node 2 keeps retransmitting). UDP shows the asymmetry
 * directly: a datagram 1->2 is lost, 2->1 arrives. See docs/netlab.md.
 *
 * Crash safety: namespace names carry the creating pid (`<prefix><pid>-<labId>-<role>`) and a state
 * file `/run/chard-netlab/<prefix><pid>-<labId>.json` records the creator's pid and start time, so
 * `NetLab.cleanupStale(prefix)` can remove the namespaces of labs whose creator died (pid gone, or
 * reused by another process) without ever touching a live lab.
 */

import { spawn, type ChildProcess, type SpawnOptions } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { existsSync, readFileSync } from 'node:fs';
import { mkdir, readFile, readdir, rm, writeFile } from 'node:fs/promises';
import { constants } from 'node:os';
import { assert } from '../assert.js';
import { ErrorCode, RemoteError, UsageError } from '../errors.js';

/** nodesMax: the most nodes one lab holds (each costs a namespace, a veth pair and a bridge port). */
export const nodesMax = 64;
/** nodeIdMax: node ids are 1..nodeIdMax; a node's host part is nodeHostOffset + id (at most 249). */
export const nodeIdMax = 239;
export const nodeHostOffset = 10;
/** clientHost: host part of the client namespace's address. */
export const clientHost = 250;
/** setupCommandTimeoutMs: the longest one `ip`/`nft` command of setup or teardown may take. */
export const setupCommandTimeoutMs = 20_000;
/** execTimeoutMsDefault: default bound on `exec()` in a namespace. */
export const execTimeoutMsDefault = 60_000;
/** outputBytesMax: stdout/stderr kept per command; the rest is dropped (commands stay bounded). */
export const outputBytesMax = 1 << 20;
/** faultLinksMax: directed links a lab can cut: every ordered pair of members (nodes + client). */
export const faultLinksMax = (nodesMax + 1) * nodesMax;
/** prefixDefault: namespace name prefix of labs created without one. */
export const prefixDefault = 'chard-nl-';
/** stateDirectory: where each live lab records its creator (pid + process start time). */
export const stateDirectory = '/run/chard-netlab';

/**
 * systemDirectories: where `ip` and `nft` are looked up. Never $PATH: under `npx`, PATH starts with
 * node_modules/.bin, where `nft` is @vercel/nft's file tracer, which happily exits 0 on `nft -f -`.
 */
const systemDirectories = ['/usr/sbin', '/sbin', '/usr/bin', '/bin'];
const prefixPattern = /^[a-z][a-z0-9-]{0,23}$/;

/** systemTool: the absolute path of a system executable, or the bare name (spawn then fails ENOENT). */
function systemTool(name: string): string {
  for (const directory of systemDirectories) {
    const path = `${directory}/${name}`;
    if (existsSync(path)) return path;
  }
  return name;
}
const ipTool = systemTool('ip');
const nftTool = systemTool('nft');
const nftTable = 'chard';

export interface NetLabOptions {
  /** nodes: node ids, distinct integers in 1..nodeIdMax. */
  nodes: number[];
  /** prefix: namespace name prefix (`[a-z][a-z0-9-]{0,23}`); default prefixDefault. */
  prefix?: string;
  /** subnet: an IPv4 /24 written `a.b.c.0/24`; default 10.213.<random>.0/24. */
  subnet?: string;
}

/** NetLabDescriptor: enough to re-open a live lab from another process (NetLab.attach). */
export interface NetLabDescriptor {
  prefix: string;
  labId: string;
  nodes: number[];
  subnetBase: string;
}

/** Endpoint: a member of the lab: a node id, or the client namespace. */
export type Endpoint = number | 'client';

/** FaultLink: packets from `from` to `to` are dropped. */
export interface FaultLink {
  from: Endpoint;
  to: Endpoint;
}

export interface ExecResult {
  code: number;
  stdout: string;
  stderr: string;
}

/** NetLab: a private network of node namespaces plus a client namespace, with injectable faults. */
export class NetLab {
  readonly prefix: string;
  /** labId: `<pid>-<hex>`, unique per lab; part of every namespace name. */
  readonly labId: string;
  readonly nodes: readonly number[];
  /** subnetBase: the first three octets, e.g. `10.213.7`. */
  readonly subnetBase: string;
  private readonly children = new Set<ChildProcess>();
  private cuts = new Map<string, FaultLink>();
  private changes: Promise<unknown> = Promise.resolve();
  private destroyed = false;
  /** attached: this handle came from NetLab.attach (another process owns the lab). */
  private attached = false;

  private constructor(prefix: string, labId: string, nodes: number[], subnetBase: string) {
    this.prefix = prefix;
    this.labId = labId;
    this.nodes = Object.freeze([...nodes].sort((a, b) => a - b));
    this.subnetBase = subnetBase;
  }

  /**
   * NetLab.available: whether this machine can run a lab: root, `ip`, `nft`, and a probe that
   * creates a namespace with a bridge, a veth pair and the nftables bridge table, then removes it.
   */
  static async available(): Promise<{ ok: boolean; reason?: string }> {
    if (process.platform !== 'linux') return { ok: false, reason: 'NetLab needs Linux network namespaces' };
    if (process.getuid?.() !== 0) return { ok: false, reason: 'NetLab needs root (ip netns, nftables); not running as root' };
    const ip = await run(ipTool, ['-V']).catch((error: unknown) => error);
    if (!isOk(ip)) return { ok: false, reason: 'iproute2 `ip` not usable (apt-get install iproute2)' };
    const nft = await run(nftTool, ['--version']).catch((error: unknown) => error);
    if (!isOk(nft) || !(nft as ExecResult).stdout.startsWith('nftables')) return { ok: false, reason: 'nftables `nft` not usable (apt-get install nftables)' };
    const probe = `${prefixDefault}${process.pid}-${randomBytes(4).toString('hex')}-sw`;
    const peer = `${probe.slice(0, -3)}-c`;
    try {
      await must(ipTool, ['netns', 'add', probe]);
      await must(ipTool, ['netns', 'add', peer]);
      await must(ipTool, ['-n', probe, 'link', 'add', 'br0', 'type', 'bridge']);
      await must(ipTool, ['-n', probe, 'link', 'add', 'c', 'type', 'veth', 'peer', 'name', 'eth0', 'netns', peer]);
      await must(ipTool, ['netns', 'exec', probe, nftTool, '-f', '-'], { input: renderRuleset([], () => '10.0.0.1') });
      return { ok: true };
    } catch (error) {
      return { ok: false, reason: `cannot build a network namespace lab: ${(error as Error).message}` };
    } finally {
      await run(ipTool, ['netns', 'del', peer]).catch(() => undefined);
      await run(ipTool, ['netns', 'del', probe]).catch(() => undefined);
    }
  }

  /**
   * NetLab.create: builds the lab and returns it with every member reaching every other (no faults).
   * Throws UsageError(FAILED_PRECONDITION) when not root or a tool is missing, UsageError
   * (INVALID_ARGUMENT) for bad options; anything half-built is removed before it throws.
   */
  static async create(options: NetLabOptions): Promise<NetLab> {
    const prefix = options.prefix ?? prefixDefault;
    if (!prefixPattern.test(prefix)) {
      throw new UsageError(ErrorCode.InvalidArgument, `netlab: prefix ${JSON.stringify(prefix)} must match ${prefixPattern}`);
    }
    const nodes = options.nodes;
    if (!Array.isArray(nodes) || nodes.length === 0 || nodes.length > nodesMax) {
      throw new UsageError(ErrorCode.InvalidArgument, `netlab: nodes must list 1..${nodesMax} node ids`);
    }
    for (const node of nodes) {
      if (!Number.isInteger(node) || node < 1 || node > nodeIdMax) {
        throw new UsageError(ErrorCode.InvalidArgument, `netlab: node id ${node} is not an integer in 1..${nodeIdMax}`);
      }
    }
    if (new Set(nodes).size !== nodes.length) throw new UsageError(ErrorCode.InvalidArgument, 'netlab: node ids must be distinct');
    const subnetBase = parseSubnet(options.subnet);
    if (process.platform !== 'linux' || process.getuid?.() !== 0) {
      throw new UsageError(ErrorCode.FailedPrecondition, 'netlab: creating network namespaces needs root on Linux; run as root (or skip the test)');
    }
    const lab = new NetLab(prefix, `${process.pid}-${randomBytes(4).toString('hex')}`, nodes, subnetBase);
    try {
      await lab.build();
    } catch (error) {
      await lab.destroy().catch(() => undefined);
      throw error;
    }
    return lab;
  }

  /**
   * NetLab.cleanupStale: removes every lab with this prefix whose creating process is gone (or whose
   * pid now belongs to a process started at another time): kills what still runs in its namespaces,
   * deletes the namespaces (and with them veths, bridge and rules) and its state file. Returns the
   * namespaces removed. Labs of live processes are never touched.
   */
  static async cleanupStale(prefix: string = prefixDefault): Promise<string[]> {
    if (!prefixPattern.test(prefix)) {
      throw new UsageError(ErrorCode.InvalidArgument, `netlab: prefix ${JSON.stringify(prefix)} must match ${prefixPattern}`);
    }
    const pattern = new RegExp(`^${prefix.replace(/[-]/g, '\\-')}(\\d+)-([0-9a-f]{8})-(sw|c|n\\d+)$`);
    const labs = new Map<string, { pid: number; namespaces: string[] }>();
    for (const name of await listNamespaces()) {
      const match = pattern.exec(name);
      if (match === null) continue;
      const labId = `${match[1]}-${match[2]}`;
      const lab = labs.get(labId) ?? { pid: Number(match[1]), namespaces: [] };
      lab.namespaces.push(name);
      labs.set(labId, lab);
    }
    const stateFiles = new Map<string, string>();
    for (const file of await readdir(stateDirectory).catch(() => [] as string[])) {
      if (!file.startsWith(prefix) || !file.endsWith('.json')) continue;
      const labId = file.slice(prefix.length, -'.json'.length);
      if (!/^\d+-[0-9a-f]{8}$/.test(labId)) continue;
      stateFiles.set(labId, `${stateDirectory}/${file}`);
      if (!labs.has(labId)) labs.set(labId, { pid: Number(labId.split('-')[0]), namespaces: [] });
    }
    const removed: string[] = [];
    for (const [labId, lab] of labs) {
      const stateFile = stateFiles.get(labId);
      let startTime: string | undefined;
      if (stateFile !== undefined) {
        startTime = await readFile(stateFile, 'utf8').then((text) => (JSON.parse(text) as { startTime?: string }).startTime, () => undefined);
      }
      if (processAlive(lab.pid, startTime)) continue;
      for (const name of lab.namespaces) await killNamespaceProcesses(name);
      for (const name of lab.namespaces) {
        const result = await run(ipTool, ['netns', 'del', name]);
        if (result.code === 0) removed.push(name);
      }
      if (stateFile !== undefined) await rm(stateFile, { force: true });
    }
    return removed;
  }

  /**
   * descriptor: what another process needs to drive this lab (see NetLab.attach): its prefix, id,
   * nodes and subnet. Plain JSON.
   */
  descriptor(): NetLabDescriptor {
    return { prefix: this.prefix, labId: this.labId, nodes: [...this.nodes], subnetBase: this.subnetBase };
  }

  /**
   * NetLab.attach: a handle on a lab that ANOTHER process created (e.g. a process re-executed
   * inside the lab's client namespace), from its descriptor(). It spawns, execs and changes faults
   * like the creator's handle (fault changes replace the whole table, so the handle that changes
   * last wins; use one handle for faults). It does not own the lab: the creator destroys it. Its
   * fault view starts empty. Throws UsageError(INVALID_ARGUMENT) for a malformed descriptor and
   * UsageError(NOT_FOUND) when the lab's namespaces do not exist.
   */
  static async attach(descriptor: NetLabDescriptor): Promise<NetLab> {
    const d = descriptor as Partial<NetLabDescriptor>;
    if (typeof d.prefix !== 'string' || !prefixPattern.test(d.prefix)) throw new UsageError(ErrorCode.InvalidArgument, 'netlab: descriptor has a bad prefix');
    if (typeof d.labId !== 'string' || !/^\d+-[0-9a-f]{8}$/.test(d.labId)) throw new UsageError(ErrorCode.InvalidArgument, 'netlab: descriptor has a bad labId');
    if (!Array.isArray(d.nodes) || d.nodes.length === 0 || d.nodes.length > nodesMax || !d.nodes.every((n) => Number.isInteger(n) && n >= 1 && n <= nodeIdMax)) {
      throw new UsageError(ErrorCode.InvalidArgument, 'netlab: descriptor has bad nodes');
    }
    if (typeof d.subnetBase !== 'string' || !/^\d{1,3}\.\d{1,3}\.\d{1,3}$/.test(d.subnetBase)) throw new UsageError(ErrorCode.InvalidArgument, 'netlab: descriptor has a bad subnet');
    const lab = new NetLab(d.prefix, d.labId, d.nodes, d.subnetBase);
    const existing = new Set(await listNamespaces());
    const missing = lab.namespaces().filter((name) => !existing.has(name));
    if (missing.length > 0) throw new UsageError(ErrorCode.NotFound, `netlab: lab ${d.labId} has no namespace ${missing.join(', ')}`);
    lab.attached = true;
    return lab;
  }

  /**
   * release: for an attached handle: SIGKILLs the children it spawned and marks it unusable,
   * without deleting anything (the creator's destroy() does that).
   */
  release(): void {
    for (const child of this.children) child.kill('SIGKILL');
    this.destroyed = true;
  }

  /** address: the node's IPv4 address inside the lab, e.g. `10.213.7.11` for node 1. */
  address(node: number): string {
    this.checkNode(node);
    return `${this.subnetBase}.${nodeHostOffset + node}`;
  }

  /** clientAddress: the client namespace's IPv4 address. */
  clientAddress(): string {
    return `${this.subnetBase}.${clientHost}`;
  }

  /** namespace: the name of a member's network namespace (usable with `ip netns exec`). */
  namespace(where: Endpoint): string {
    if (where === 'client') return this.namespaceName('c');
    this.checkNode(where);
    return this.namespaceName(`n${where}`);
  }

  /** namespaces: every namespace of the lab, switch included. */
  namespaces(): string[] {
    return [this.namespaceName('sw'), this.namespaceName('c'), ...this.nodes.map((node) => this.namespaceName(`n${node}`))];
  }

  /**
   * spawn: starts `command args` inside a member's namespace (`ip netns exec` execs in place, so the
   * child's pid is the command's). The lab tracks the child and kills it in destroy().
   */
  spawn(where: Endpoint, command: string, args: string[], options: SpawnOptions = {}): ChildProcess {
    assert(!this.destroyed, 'netlab: spawn after destroy');
    const child = spawn(ipTool, ['netns', 'exec', this.namespace(where), command, ...args], options);
    this.children.add(child);
    child.once('exit', () => this.children.delete(child));
    child.once('error', () => this.children.delete(child));
    return child;
  }

  /**
   * exec: runs `command args` inside a member's namespace to completion and returns its exit code
   * and output (each bounded by outputBytesMax). Rejects with RemoteError(TIMEOUT) after timeoutMs.
   */
  async exec(where: Endpoint, command: string, args: string[], options: { timeoutMs?: number } = {}): Promise<ExecResult> {
    assert(!this.destroyed, 'netlab: exec after destroy');
    return run(ipTool, ['netns', 'exec', this.namespace(where), command, ...args], { timeoutMs: options.timeoutMs ?? execTimeoutMsDefault });
  }

  /** cut: adds a one-way fault: packets from `from` to `to` are dropped; the reverse still flows. */
  async cut(from: Endpoint, to: Endpoint): Promise<void> {
    this.checkEndpoint(from);
    this.checkEndpoint(to);
    if (from === to) throw new UsageError(ErrorCode.InvalidArgument, `netlab: cannot cut ${from} from itself`);
    await this.change((links) => [...links, { from, to }]);
  }

  /**
   * partition: adds symmetric faults between every two different groups. Every node must be in
   * exactly one group; 'client' may be placed in a group too, otherwise it keeps reaching everyone.
   */
  async partition(groups: Endpoint[][]): Promise<void> {
    const groupOf = new Map<Endpoint, number>();
    groups.forEach((group, index) => {
      for (const member of group) {
        this.checkEndpoint(member);
        if (groupOf.has(member)) throw new UsageError(ErrorCode.InvalidArgument, `netlab: ${member} is in two groups`);
        groupOf.set(member, index);
      }
    });
    for (const node of this.nodes) {
      if (!groupOf.has(node)) throw new UsageError(ErrorCode.InvalidArgument, `netlab: node ${node} is in no group`);
    }
    const added: FaultLink[] = [];
    for (const [a, groupA] of groupOf) {
      for (const [b, groupB] of groupOf) if (groupA !== groupB) added.push({ from: a, to: b });
    }
    await this.change((links) => [...links, ...added]);
  }

  /**
   * isolate: adds symmetric faults between `node` and every other node; with `client: true` also
   * between `node` and the client namespace (by default the operator's view keeps reaching it).
   */
  async isolate(node: number, options: { client?: boolean } = {}): Promise<void> {
    this.checkNode(node);
    const others: Endpoint[] = this.nodes.filter((other) => other !== node);
    if (options.client === true) others.push('client');
    await this.change((links) => [...links, ...others.flatMap((other): FaultLink[] => [{ from: node, to: other }, { from: other, to: node }])]);
  }

  /** restore: removes one directed fault (if present); the rest stay. */
  async restore(from: Endpoint, to: Endpoint): Promise<void> {
    this.checkEndpoint(from);
    this.checkEndpoint(to);
    await this.change((links) => links.filter((link) => !(link.from === from && link.to === to)));
  }

  /**
   * setFaults: replaces the whole fault set in one atomic step, e.g. to move from one partition to
   * another without a healed moment in between.
   */
  async setFaults(links: FaultLink[]): Promise<void> {
    for (const link of links) {
      this.checkEndpoint(link.from);
      this.checkEndpoint(link.to);
      if (link.from === link.to) throw new UsageError(ErrorCode.InvalidArgument, `netlab: cannot cut ${link.from} from itself`);
    }
    await this.change(() => links);
  }

  /** heal: removes every fault. */
  async heal(): Promise<void> {
    await this.change(() => []);
  }

  /** faults: the directed links currently cut (after the last completed change), sorted. */
  faults(): FaultLink[] {
    return [...this.cuts.values()].sort(compareLinks);
  }

  /**
   * destroy: kills every process still running in the lab's namespaces (spawned here or not), then
   * deletes the namespaces; the veths, the bridge and the nftables table go with them. Idempotent.
   */
  async destroy(): Promise<void> {
    assert(!this.attached, 'netlab: an attached handle does not own the lab; use release()');
    if (this.destroyed) return;
    this.destroyed = true;
    await this.changes.catch(() => undefined);
    for (const child of this.children) child.kill('SIGKILL');
    const existing = new Set(await listNamespaces());
    const mine = this.namespaces().filter((name) => existing.has(name));
    for (const name of mine) await killNamespaceProcesses(name);
    const errors: string[] = [];
    // Nodes and client first, the switch last: nothing is ever left dangling off a missing bridge.
    for (const name of [...mine.filter((name) => !name.endsWith('-sw')), ...mine.filter((name) => name.endsWith('-sw'))]) {
      const result = await run(ipTool, ['netns', 'del', name]);
      if (result.code !== 0) errors.push(`${name}: ${result.stderr.trim()}`);
    }
    await rm(this.stateFile(), { force: true });
    if (errors.length > 0) throw new RemoteError(ErrorCode.Unavailable, `netlab: destroy could not delete ${errors.join('; ')}`);
  }

  private async build(): Promise<void> {
    await mkdir(stateDirectory, { recursive: true });
    await writeFile(this.stateFile(), `${JSON.stringify({ pid: process.pid, startTime: processStartTime(process.pid), namespaces: this.namespaces() })}\n`);
    const switchName = this.namespaceName('sw');
    // Sequential on purpose: the first `ip netns add` on a machine sets up the /run/netns mount,
    // and parallel adds can race on that.
    for (const name of this.namespaces()) await must(ipTool, ['netns', 'add', name]);
    const members: { port: string; namespace: string; address: string }[] = [
      { port: 'c', namespace: this.namespace('client'), address: this.clientAddress() },
      ...this.nodes.map((node) => ({ port: `n${node}`, namespace: this.namespace(node), address: this.address(node) })),
    ];
    const switchBatch = ['link set lo up', 'link add br0 type bridge stp_state 0', 'link set br0 up'];
    for (const member of members) {
      switchBatch.push(`link add ${member.port} type veth peer name eth0 netns ${member.namespace}`);
      switchBatch.push(`link set ${member.port} master br0`, `link set ${member.port} up`);
    }
    await must(ipTool, ['-n', switchName, '-batch', '-'], { input: `${switchBatch.join('\n')}\n` });
    await Promise.all(members.map((member) => must(ipTool, ['-n', member.namespace, '-batch', '-'], {
      input: `link set lo up\naddr add ${member.address}/24 dev eth0\nlink set eth0 up\n`,
    })));
    await this.applyRuleset([]);
  }

  /** change: computes the next fault set from the current one and applies it; changes are serialized. */
  private async change(next: (links: FaultLink[]) => FaultLink[]): Promise<void> {
    const step = this.changes.then(async () => {
      assert(!this.destroyed, 'netlab: fault change after destroy');
      const links = new Map<string, FaultLink>();
      for (const link of next(this.faults())) links.set(linkKey(link), { from: link.from, to: link.to });
      assert(links.size <= faultLinksMax, 'netlab: fault links bounded');
      await this.applyRuleset([...links.values()].sort(compareLinks));
      this.cuts = links;
    });
    this.changes = step.catch(() => undefined);
    await step;
  }

  private async applyRuleset(links: FaultLink[]): Promise<void> {
    const ruleset = renderRuleset(links, (endpoint) => (endpoint === 'client' ? this.clientAddress() : this.address(endpoint)));
    await must(ipTool, ['netns', 'exec', this.namespaceName('sw'), nftTool, '-f', '-'], { input: ruleset });
  }

  private namespaceName(role: string): string {
    return `${this.prefix}${this.labId}-${role}`;
  }

  private stateFile(): string {
    return `${stateDirectory}/${this.prefix}${this.labId}.json`;
  }

  private checkNode(node: number): void {
    if (!this.nodes.includes(node)) throw new UsageError(ErrorCode.InvalidArgument, `netlab: node ${node} is not in this lab (${this.nodes.join(', ')})`);
  }

  private checkEndpoint(endpoint: Endpoint): void {
    if (endpoint !== 'client') this.checkNode(endpoint);
  }
}

/**
 * renderRuleset: the whole `bridge chard` table for a fault set, as one nft transaction that
 * creates-then-deletes-then-recreates the table, so applying it is atomic whatever existed before.
 */
export function renderRuleset(links: FaultLink[], addressOf: (endpoint: Endpoint) => string): string {
  const rules = links.map((link) => `    ip saddr ${addressOf(link.from)} ip daddr ${addressOf(link.to)} drop`);
  return [
    `table bridge ${nftTable}`,
    `delete table bridge ${nftTable}`,
    `table bridge ${nftTable} {`,
    '  chain forward {',
    '    type filter hook forward priority 0; policy accept;',
    ...rules,
    '  }',
    '}',
    '',
  ].join('\n');
}

function linkKey(link: FaultLink): string {
  return `${link.from}>${link.to}`;
}

function endpointOrder(endpoint: Endpoint): number {
  return endpoint === 'client' ? 0 : endpoint;
}

function compareLinks(a: FaultLink, b: FaultLink): number {
  return endpointOrder(a.from) - endpointOrder(b.from) || endpointOrder(a.to) - endpointOrder(b.to);
}

function parseSubnet(subnet: string | undefined): string {
  if (subnet === undefined) return `10.213.${randomBytes(1)[0]}`;
  const match = /^(\d{1,3})\.(\d{1,3})\.(\d{1,3})\.0\/24$/.exec(subnet);
  if (match === null || match.slice(1, 4).some((octet) => Number(octet) > 255)) {
    throw new UsageError(ErrorCode.InvalidArgument, `netlab: subnet ${JSON.stringify(subnet)} must be an IPv4 /24 like 10.213.7.0/24`);
  }
  return match.slice(1, 4).map(Number).join('.');
}

/** processStat: state (field 3) and start time (field 22, clock ticks since boot) of a pid, if it exists. */
function processStat(pid: number): { state: string; startTime: string } | undefined {
  try {
    const stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
    const fields = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
    return { state: fields[0] ?? '', startTime: fields[19] ?? '' };
  } catch {
    return undefined;
  }
}

function processStartTime(pid: number): string | undefined {
  return processStat(pid)?.startTime;
}

/**
 * processAlive: the pid exists, is not a zombie (a crashed creator its parent has not reaped yet is
 * dead), and, when a start time was recorded, is still the same process (pids get reused).
 */
function processAlive(pid: number, startTime: string | undefined): boolean {
  try {
    process.kill(pid, 0);
  } catch (error) {
    if ((error as NodeJS.ErrnoException).code !== 'EPERM') return false;
  }
  const stat = processStat(pid);
  if (stat === undefined) return true; // no procfs: trust kill(0)
  if (stat.state === 'Z' || stat.state === 'X') return false;
  return startTime === undefined || stat.startTime === startTime;
}

async function listNamespaces(): Promise<string[]> {
  const result = await must(ipTool, ['netns', 'list']);
  return result.stdout.split('\n').map((line) => line.trim().split(' ')[0] ?? '').filter((name) => name.length > 0);
}

/** killNamespaceProcesses: SIGKILLs every process inside a (lab) namespace and waits until they are gone. */
async function killNamespaceProcesses(name: string): Promise<void> {
  const waitRoundsMax = 50;
  for (let round = 0; round < waitRoundsMax; round += 1) {
    const result = await run(ipTool, ['netns', 'pids', name]);
    const pids = result.stdout.split('\n').map((line) => Number(line.trim())).filter((pid) => Number.isInteger(pid) && pid > 0 && pid !== process.pid);
    if (pids.length === 0) return;
    for (const pid of pids) {
      try {
        process.kill(pid, 'SIGKILL');
      } catch {
        // already gone
      }
    }
    await new Promise((resolve) => setTimeout(resolve, 20));
  }
}

function isOk(value: unknown): boolean {
  return typeof value === 'object' && value !== null && (value as ExecResult).code === 0;
}

/** must: run, and turn a non-zero exit into a RemoteError naming the command and its stderr. */
async function must(command: string, args: string[], options: { input?: string; timeoutMs?: number } = {}): Promise<ExecResult> {
  const result = await run(command, args, { timeoutMs: setupCommandTimeoutMs, ...options });
  if (result.code !== 0) {
    throw new RemoteError(ErrorCode.Unavailable, `netlab: \`${command} ${args.join(' ')}\` exited ${result.code}: ${result.stderr.trim()}`);
  }
  return result;
}

/**
 * run: spawns a command, feeds it `input`, and resolves with its exit code and bounded output.
 * A missing executable is a UsageError(FAILED_PRECONDITION); a timeout is a RemoteError(TIMEOUT).
 */
function run(command: string, args: string[], options: { input?: string; timeoutMs?: number } = {}): Promise<ExecResult> {
  const timeoutMs = options.timeoutMs ?? setupCommandTimeoutMs;
  return new Promise((resolve, reject) => {
    const child = spawn(command, args, { stdio: ['pipe', 'pipe', 'pipe'] });
    const output = { stdout: '', stderr: '' };
    const collect = (key: 'stdout' | 'stderr') => (chunk: Buffer) => {
      if (output[key].length < outputBytesMax) output[key] += chunk.toString('utf8').slice(0, outputBytesMax - output[key].length);
    };
    child.stdout.on('data', collect('stdout'));
    child.stderr.on('data', collect('stderr'));
    let timedOut = false;
    const timer = setTimeout(() => {
      timedOut = true;
      child.kill('SIGKILL');
    }, timeoutMs);
    child.once('error', (error: NodeJS.ErrnoException) => {
      clearTimeout(timer);
      if (error.code === 'ENOENT') reject(new UsageError(ErrorCode.FailedPrecondition, `netlab: \`${command}\` is not installed`));
      else reject(new RemoteError(ErrorCode.Unavailable, `netlab: cannot run \`${command}\`: ${error.message}`, { cause: error }));
    });
    child.once('close', (code, signal) => {
      clearTimeout(timer);
      if (timedOut) reject(new RemoteError(ErrorCode.Timeout, `netlab: \`${command} ${args.join(' ')}\` timed out after ${timeoutMs} ms`));
      else resolve({ code: code ?? 128 + (signal === null ? 0 : constants.signals[signal]), stdout: output.stdout, stderr: output.stderr });
    });
    child.stdin.on('error', () => undefined); // the command may exit without reading its input
    child.stdin.end(options.input ?? '');
  });
}
