/**
 * interaction: a tiny script language for driving a raft cluster step by step, with a readable
 * transcript as expected output (etcd's datadriven interaction tests).
 *
 * A script file is a sequence of blocks:
 *
 *     command arg arg key=value
 *     ----
 *     expected output (may be empty)
 *     <blank line>
 *
 * Commands: add-nodes, campaign, propose, propose-fail, deliver, process-ready, stabilize, drop,
 * partition, isolate, heal, tick, tick-election, tick-heartbeat, transfer-leader, add-learner,
 * promote, remove, compact, restart, read-index, raft-state, raft-log, status.
 * Set CHARD_REWRITE=1 to rewrite the expected outputs from the actual ones (then review the diff).
 */

import { ConfChangeType, EMPTY_BYTES, EntryType, type Message, type NodeId } from '../../src/raft/types.js';
import { ChardError } from '../../src/errors.js';
import { decodeConfChange } from '../../src/raft/confchange.js';
import { Cluster, bytes, text } from './harness.js';

export interface Block {
  line: number;
  command: string;
  expected: string;
}

export function parseScript(source: string): Block[] {
  const lines = source.split('\n');
  const blocks: Block[] = [];
  let i = 0;
  while (i < lines.length) {
    const line = lines[i]!;
    if (line.trim() === '' || line.startsWith('#')) {
      i++;
      continue;
    }
    const start = i + 1;
    const command = line.trim();
    i++;
    if (lines[i] !== '----') throw new Error(`line ${start}: expected ---- after command`);
    i++;
    const out: string[] = [];
    while (i < lines.length && lines[i] !== '') out.push(lines[i++]!);
    blocks.push({ line: start, command, expected: out.join('\n') });
  }
  return blocks;
}

export function renderScript(blocks: Array<Block & { actual: string }>): string {
  return blocks.map((b) => `${b.command}\n----\n${b.actual}${b.actual === '' ? '' : '\n'}`).join('\n');
}

function describeEntry(e: { term: number; index: number; type: number; data: Uint8Array }): string {
  if (e.type === EntryType.ConfChange) {
    const cc = decodeConfChange(e.data);
    const body = cc.changes.length === 0 ? 'leave-joint' : cc.changes.map((c) => `${c.type}:${c.nodeId}`).join(',');
    return `${e.term}/${e.index} conf(${body})`;
  }
  return e.data.length === 0 ? `${e.term}/${e.index} empty` : `${e.term}/${e.index} ${JSON.stringify(text(e.data))}`;
}

export function describeMessage(m: Message): string {
  const parts = [`${m.from}->${m.to} ${m.type} term=${m.term}`];
  switch (m.type) {
    case 'App':
      parts.push(`prev=${m.logTerm}/${m.index} commit=${m.commit}`);
      if (m.entries.length > 0) parts.push(`[${m.entries.map(describeEntry).join(', ')}]`);
      break;
    case 'AppResp':
      parts.push(m.reject ? `reject index=${m.index} hint=${m.rejectTerm}/${m.rejectHint}` : `index=${m.index}`);
      break;
    case 'Vote':
    case 'PreVote':
      parts.push(`last=${m.logTerm}/${m.index}`);
      if (m.context.length > 0) parts.push(`ctx=${text(m.context)}`);
      break;
    case 'VoteResp':
    case 'PreVoteResp':
      if (m.reject) parts.push('reject');
      break;
    case 'Heartbeat':
      parts.push(`commit=${m.commit}`);
      if (m.context.length > 0) parts.push(`ctx=${text(m.context)}`);
      break;
    case 'HeartbeatResp':
    case 'ReadIndex':
      if (m.context.length > 0) parts.push(`ctx=${text(m.context)}`);
      break;
    case 'ReadIndexResp':
      parts.push(`index=${m.index} ctx=${text(m.context)}`);
      break;
    case 'Snap':
      if (m.snapshot !== undefined) {
        const s = m.snapshot;
        parts.push(`snapshot=${s.metadata.term}/${s.metadata.index} bytes=${s.offset}+${s.data.length}/${s.metadata.sizeBytes}${s.last ? ' last' : ''}`);
      }
      break;
    case 'SnapResp':
      parts.push(`snapshot=${m.index} held=${m.rejectHint}${m.reject ? ' reject' : ''}`);
      break;
    default:
      break;
  }
  return parts.join(' ');
}

function parseArgs(command: string): { name: string; positional: string[]; keys: Map<string, string> } {
  const words = command.split(/\s+/);
  const name = words.shift()!;
  const positional: string[] = [];
  const keys = new Map<string, string>();
  for (const word of words) {
    const eq = word.indexOf('=');
    if (eq > 0) keys.set(word.slice(0, eq), word.slice(eq + 1));
    else positional.push(word);
  }
  return { name, positional, keys };
}

const ids = (value: string | undefined): NodeId[] => (value === undefined || value === '' ? [] : value.split(',').map(Number));

/** InteractionEnv: runs commands against one Cluster and renders their output. */
export class InteractionEnv {
  cluster = new Cluster();
  private lastLog = 0;

  private drainLog(out: string[]): void {
    const log = this.cluster.log;
    for (; this.lastLog < log.length; this.lastLog++) out.push(log[this.lastLog]!);
  }

  /** processReady: handle the Readys of the given nodes, printing what they emit. */
  private processReady(nodes: NodeId[], out: string[]): boolean {
    let any = false;
    for (const id of nodes) {
      const node = this.cluster.node(id);
      while (node.raw.hasReady()) {
        const before = this.cluster.queue.length;
        const appliedBefore = node.applied.length;
        const readsBefore = node.readStates.length;
        this.cluster.handleReady(id);
        any = true;
        this.drainLog(out);
        for (const entry of node.applied.slice(appliedBefore)) out.push(`${id}: applied ${describeEntry(entry)}`);
        for (const rs of node.readStates.slice(readsBefore)) out.push(`${id}: read-state index=${rs.index} ctx=${text(rs.requestContext)}`);
        for (const m of this.cluster.queue.slice(before)) out.push(`  ${describeMessage(m)}`);
      }
    }
    return any;
  }

  private deliver(filter: ((m: Message) => boolean) | undefined, out: string[]): number {
    const queued = this.cluster.queue.filter((m) => filter === undefined || filter(m));
    const delivered = this.cluster.deliver(filter);
    void queued;
    return delivered;
  }

  run(command: string): string {
    const out: string[] = [];
    const { name, positional, keys } = parseArgs(command);
    const c = this.cluster;
    const id = Number(positional[0]);
    const all = () => [...c.nodes.keys()].sort((a, b) => a - b);
    try {
      switch (name) {
        case 'add-nodes': {
          const count = Number(positional[0]);
          const existing = c.nodes.size;
          const newIds = Array.from({ length: count }, (_, i) => existing + i + 1);
          const voters = keys.has('voters') ? ids(keys.get('voters')) : newIds;
          const learners = ids(keys.get('learners'));
          const options = {
            preVote: keys.get('prevote') !== 'false',
            checkQuorum: keys.get('checkquorum') !== 'false',
            readOnlyOption: keys.get('read') === 'lease' ? ('lease' as const) : ('safe' as const),
            snapshotChunkBytes: keys.has('chunk') ? Number(keys.get('chunk')) : 1024 * 1024,
            inflightMessagesMax: keys.has('inflight') ? Number(keys.get('inflight')) : 256,
          };
          if (keys.get('empty') === 'true') for (const n of newIds) c.addEmptyNode(n, options);
          else c.addNodes(newIds, voters, learners, options);
          out.push(`added ${newIds.join(',')} voters=(${voters.join(',')}) learners=(${learners.join(',')})`);
          break;
        }
        case 'campaign':
          c.node(id).raw.campaign();
          this.processReady([id], out);
          break;
        case 'propose':
          out.push(`index ${c.node(id).raw.propose(bytes(positional[1] ?? ''))}`);
          this.processReady([id], out);
          break;
        case 'deliver': {
          const to = keys.has('to') ? Number(keys.get('to')) : undefined;
          const delivered = this.deliver(to === undefined ? undefined : (m) => m.to === to, out);
          out.push(`delivered ${delivered}`);
          break;
        }
        case 'process-ready':
          this.processReady(positional.length > 0 ? positional.map(Number) : all(), out);
          break;
        case 'stabilize': {
          for (let round = 0; round < 200; round++) {
            const moved = this.processReady(all(), out);
            const delivered = this.deliver(undefined, out);
            if (!moved && delivered === 0 && c.queue.length === 0) break;
          }
          break;
        }
        case 'drop':
          c.queue = c.queue.filter((m) => !(m.from === Number(positional[0]) && (positional[1] === undefined || m.to === Number(positional[1]))));
          out.push(`queue ${c.queue.length}`);
          break;
        case 'cut':
          c.cutLink(Number(positional[0]), Number(positional[1]));
          break;
        case 'partition':
          c.partition(positional.map(ids));
          break;
        case 'isolate':
          c.isolate(id);
          break;
        case 'heal':
          c.heal();
          break;
        case 'tick': {
          const count = Number(positional[1] ?? 1);
          c.tick(id, count);
          this.processReady([id], out);
          break;
        }
        case 'tick-all': {
          // every node ticks once per round, then the cluster stabilizes (all clocks run together)
          for (let round = 0; round < Number(positional[0] ?? 1); round++) {
            for (const nodeId of all()) c.node(nodeId).raw.tick();
            for (let i = 0; i < 200; i++) {
              const moved = this.processReady(all(), out);
              const delivered = this.deliver(undefined, out);
              if (!moved && delivered === 0 && c.queue.length === 0) break;
            }
          }
          break;
        }
        case 'tick-election':
          c.tickElection(id);
          this.processReady([id], out);
          break;
        case 'tick-heartbeat':
          c.tick(id, c.node(id).raw.raft.config.heartbeatIntervalTicks);
          this.processReady([id], out);
          break;
        case 'transfer-leader':
          c.node(id).raw.transferLeadership(Number(positional[1]));
          this.processReady([id], out);
          break;
        case 'add-learner':
        case 'promote':
        case 'remove': {
          const type = name === 'add-learner' ? ConfChangeType.AddLearner : name === 'promote' ? ConfChangeType.AddNode : ConfChangeType.RemoveNode;
          const targets = positional.slice(1).map(Number);
          const index = c.node(id).raw.proposeConfChange({ changes: targets.map((nodeId) => ({ type, nodeId })), context: EMPTY_BYTES });
          out.push(`index ${index}`);
          this.processReady([id], out);
          break;
        }
        case 'compact':
          c.compact(id, positional[1] === undefined ? undefined : Number(positional[1]));
          out.push(`${id}: snapshot at ${c.node(id).storage.snapshot().index}, first index ${c.node(id).storage.firstIndex()}`);
          break;
        case 'restart':
          c.restart(id);
          out.push(`${id}: restarted`);
          break;
        case 'read-index':
          c.node(id).raw.readIndex(bytes(positional[1] ?? 'r'));
          this.processReady([id], out);
          break;
        case 'raft-state':
          for (const nodeId of all()) {
            const s = c.node(nodeId).raw.status();
            const cs = s.confState;
            const conf = `voters=(${cs.voters.join(',')})${cs.votersOutgoing.length ? `&&(${cs.votersOutgoing.join(',')})` : ''}${cs.learners.length ? ` learners=(${cs.learners.join(',')})` : ''}`;
            out.push(`${nodeId}: ${s.role} term=${s.term} leader=${s.leader} commit=${s.commit} applied=${s.applied} last=${s.lastIndex} ${conf}`);
          }
          break;
        case 'raft-log': {
          const node = c.node(id);
          const first = node.storage.firstIndex();
          const last = node.storage.lastIndex();
          out.push(`${id}: first=${first} last=${last}`);
          for (const e of node.storage.entries(first, last + 1, Number.MAX_SAFE_INTEGER)) out.push(`  ${describeEntry(e)}`);
          break;
        }
        case 'status': {
          const s = c.node(id).raw.status();
          out.push(`${id}: ${s.role} term=${s.term} lease=${s.leaseValid} transferee=${s.leadTransferee}`);
          for (const [peer, pr] of s.progress) {
            out.push(`  ${peer}: ${pr.state} match=${pr.match} next=${pr.next}${pr.learner ? ' learner' : ''} inflight=${pr.inflight}`);
          }
          break;
        }
        case 'data':
          for (const nodeId of all()) out.push(`${nodeId}: ${JSON.stringify(c.appliedData(nodeId))}`);
          break;
        default:
          throw new Error(`unknown command ${name}`);
      }
    } catch (error) {
      if (error instanceof ChardError) out.push(`error ${error.code}: ${error.message}`);
      else throw error;
    }
    this.drainLog(out);
    return out.join('\n');
  }
}
