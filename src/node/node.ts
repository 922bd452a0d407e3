/**
 * node: ChardNode, one chard node assembled from its layers —
 *   BlockStore (SQLite log + block state) ← Replica (raft Ready loop) → Transport (gRPC peers)
 *   NodeAdmin + LocalVolumeService → gRPC Admin/Block server (admin address)
 *   VolumeBackend → NbdServer (nbd address)
 * Start order: store (and bootstrap on first start), peer transport, replica, RPC, NBD. Stop order
 * is the reverse, after handing leadership away when `transfer` is asked (SIGTERM).
 */

import { randomBytes } from 'node:crypto';
import { mkdirSync } from 'node:fs';
import { BlockStore } from '../blockstore/index.js';
import { NbdServer } from '../nbd/server.js';
import { SeededRandom } from '../raft/random.js';
import type { Random } from '../raft/types.js';
import { StreamTransport } from '../transport/stream-transport.js';
import type { TransportCredentials } from '../transport/transport.js';
import type { Transport } from '../transport/transport.js';
import { Faults, FaultyTransport } from '../transport/faulty.js';
import { type CertSet, loadCerts, nodeCredentials, peerCerts } from '../transport/tls.js';
import type { NbdTlsOptions } from '../nbd/server.js';
import { FaultsFileWatcher } from './faults-file.js';
import { NodeAdmin } from './admin.js';
import { type Scheduler, systemScheduler } from './clock.js';
import { ReapDriver } from './reaper.js';
import { type NodeConfig, parseHostPort } from './config.js';
import { Counters, meteredBackend, PromExporter, watchEventLoopDelay, watchStateCheckpoints } from './metrics.js';
import { type MetricsServerHandle, startMetricsServer } from './metrics-http.js';
import { type MemberAddresses, Replica } from './replica.js';
import { BlockForwarder, encodeBlockCommand, startNodeRpcServer, type RpcServerHandle } from './rpc.js';
import { VolumeBackend } from './volume-backend.js';
import { requestLimits } from '../volume/rules.js';
import { LocalVolumeService } from './volume-service.js';

export interface Logger {
  info(o: object, m?: string): void;
  warn(o: object, m?: string): void;
  error(o: object, m?: string): void;
  debug(o: object, m?: string): void;
}

const silent: Logger = { info() {}, warn() {}, error() {}, debug() {} };

export interface ChardNodeOptions {
  config: NodeConfig;
  /** scheduler: time and timers of the node (default systemScheduler; the simulator passes its own). */
  scheduler?: Scheduler;
  random?: Random;
  logger?: Logger;
  /** credentials: TLS seam for the gRPC listeners and clients of this node (admin, block; default: insecure). */
  credentials?: TransportCredentials;
  /** transport: replace the peer transport (tests, the chaos harness's faulty transport). */
  transport?: (defaults: { clusterId: string; nodeId: number; listen: string }) => Transport;
  defaultVolume?: string;
  /** logContext: filled once the replica exists, so a logger's mixin can add the current term. */
  logContext?: LogContext;
}

/** LogContext: what a process-wide logger may add to every line (pino `mixin`). */
export interface LogContext {
  term?: () => number;
}

export class ChardNode {
  readonly counters = new Counters();
  /** eventLoopDelay: samples node.event_loop_delay_ms (chard_event_loop_delay_seconds) until stop. */
  private eventLoopDelay: { close(): void } | undefined;
  /** stateCheckpoints: copies the state.db checkpoint figures into the counters until stop. */
  private stateCheckpoints: { close(): void } | undefined;
  /** reaper: proposes the empty entries that reap deleted volumes' rows (src/node/reaper.ts). */
  private reaper: ReapDriver | undefined;
  private constructor(
    readonly config: NodeConfig,
    readonly store: BlockStore,
    readonly transport: Transport,
    readonly replica: Replica,
    readonly admin: NodeAdmin,
    readonly volumes: LocalVolumeService,
    private readonly rpc: RpcServerHandle,
    private readonly nbd: NbdServer,
    private readonly forwarder: BlockForwarder,
    readonly addresses: MemberAddresses,
    private readonly logger: Logger,
    private readonly faultsWatcher: FaultsFileWatcher | undefined,
    private readonly metrics: MetricsServerHandle | undefined,
  ) {}

  /** metricsAddress: where /metrics is served (undefined without a `metrics` listener). */
  get metricsAddress(): string | undefined {
    return this.metrics?.address;
  }

  static async start(options: ChardNodeOptions): Promise<ChardNode> {
    const { config } = options;
    const clock = options.scheduler ?? systemScheduler;
    const logger = options.logger ?? silent;
    const random = options.random ?? new SeededRandom(randomBytes(4).readUInt32LE(0));
    const counters = new Counters();
    const tls = config.tls ? nodeTls(config.tls) : undefined;
    const credentials = options.credentials ?? tls?.credentials;
    mkdirSync(config.dataDir, { recursive: true });

    const store = BlockStore.open(config.dataDir, { limits: config.store ?? {}, timer: clock });
    if (store.logStorage.lastIndex() === 0 && !config.join) {
      const members = new Map(Object.entries(config.initialMembers ?? {}).map(([id, a]) => [Number(id), a]));
      store.bootstrap([...members.keys()].sort((a, b) => a - b), [], members);
      logger.info({ voters: [...members.keys()] }, 'bootstrapped a new cluster');
    }

    let transport: Transport =
      options.transport?.({ clusterId: config.clusterId, nodeId: config.id, listen: config.listen.raft }) ??
      new StreamTransport({
        clusterId: config.clusterId,
        nodeId: config.id,
        listen: config.listen.raft,
        ...(tls ? { tls: tls.peer } : {}),
        ...(tls ? { peerUnit: 'node' } : {}),
        onEvent: counters.onEvent,
        logger,
      });
    let faultsWatcher: FaultsFileWatcher | undefined;
    if (config.testing?.faultsFile !== undefined) {
      const faults = new Faults(new SeededRandom(config.id * 7919));
      transport = new FaultyTransport(transport, faults);
      faultsWatcher = new FaultsFileWatcher(config.testing.faultsFile, faults, logger);
      logger.warn({ file: config.testing.faultsFile }, 'TESTING: peer traffic follows the faults file');
    }
    await transport.start();
    for (const [id, addresses] of Object.entries(config.peers ?? {})) {
      if (Number(id) !== config.id) transport.addPeer(Number(id), addresses.raft);
    }

    let volumes: LocalVolumeService | undefined;
    let reaper: ReapDriver | undefined;
    const replica = new Replica({
      id: config.id,
      store,
      transport,
      scheduler: clock,
      random,
      limits: config.limits ?? {},
      counters,
      logger,
      onApplied: () => reaper?.kick(),
    });
    // Rows of deleted volumes and shrunk tails are reaped by empty entries this node proposes while it leads.
    reaper = new ReapDriver(replica, () => store.state.reaping(), clock, () => counters.inc('store.reap_entries'));
    if (options.logContext !== undefined) options.logContext.term = () => replica.raw.raft.term;
    const admin = new NodeAdmin(replica, store, clock);
    const forwarder = new BlockForwarder((id) => replica.addressOf(id)?.admin, config.clusterId, credentials);
    volumes = new LocalVolumeService(replica, store, encodeBlockCommand, forwarder, clock, options.defaultVolume ?? 'default', {}, counters, logger);
    if (config.testing?.unsafeLocalReads === true) {
      volumes.unsafeLocalReads = true;
      logger.warn({}, 'TESTING: reads are served from local state without a linearizable barrier (may be stale)');
    }
    const rpc = await startNodeRpcServer({
      listen: config.listen.admin,
      clusterId: config.clusterId,
      admin,
      volumes,
      counters,
      ...(credentials ? { credentials } : {}),
    });
    const nbd = new NbdServer({
      backend: meteredBackend(new VolumeBackend(volumes), counters, logger),
      limits: { requestBytesMax: requestLimits.requestBytesMax },
      logger,
      onEvent: (event, amount) => counters.inc(`nbd.${event}`, amount),
      ...(tls?.nbd ? { tls: tls.nbd } : {}),
    });
    const nbdListen = parseHostPort(config.listen.nbd, 'listen.nbd');
    const nbdBound = await nbd.listen({ host: nbdListen.host, port: nbdListen.port });
    const nbdAddress = 'port' in nbdBound ? `${nbdListen.host}:${nbdBound.port}` : config.listen.nbd;
    // Metrics: prom-client fed by the same Counters, the raft status read at each scrape.
    let metrics: MetricsServerHandle | undefined;
    if (config.metrics !== undefined) {
      const exporter = new PromExporter({
        labels: { node: String(config.id) },
        status: () => {
          const s = admin.status();
          return { ...s, snapshotIndex: replica.snapshotIndex(), progress: s.progress };
        },
      });
      counters.attach(exporter);
      metrics = await startMetricsServer({ listen: config.metrics, exporter, logger, onRefused: () => counters.inc('refused.metrics.connections_max') });
    }
    replica.start();
    const addresses = { raft: transport.address(), admin: rpc.address, nbd: nbdAddress };
    logger.info({ id: config.id, cluster: config.clusterId, ...addresses, ...(metrics ? { metrics: metrics.address } : {}) }, 'node started');
    const node = new ChardNode(config, store, transport, replica, admin, volumes, rpc, nbd, forwarder, addresses, logger, faultsWatcher, metrics);
    (node as { counters: Counters }).counters = counters;
    node.eventLoopDelay = watchEventLoopDelay(counters);
    node.stateCheckpoints = watchStateCheckpoints(store.state.checkpointer, counters, store.state);
    node.reaper = reaper;
    reaper.kick();
    return node;
  }

  /** stop: hand leadership away (when asked), stop serving, close everything. */
  async stop(options: { transfer?: boolean } = {}): Promise<void> {
    this.logger.info({ transfer: options.transfer === true }, 'node stopping');
    this.faultsWatcher?.close();
    this.eventLoopDelay?.close();
    this.stateCheckpoints?.close();
    this.reaper?.close();
    await this.metrics?.close();
    await this.replica.close({ transfer: options.transfer === true });
    await this.nbd.close();
    await this.rpc.close();
    this.forwarder.close();
    await this.transport.close();
    this.store.close();
    this.logger.info({}, 'node stopped');
  }
}

/** nodeTls: the gRPC credentials, the peer transport's certificates and the NBD TLS options of a node's `tls` config block. */
function nodeTls(config: { certs: string; nbd: 'off' | 'optional' | 'required' }): { credentials: TransportCredentials; peer: CertSet; nbd?: NbdTlsOptions } {
  const credentials = nodeCredentials(config.certs);
  const peer = peerCerts(config.certs);
  if (config.nbd === 'off') return { credentials, peer };
  return { credentials, peer, nbd: { mode: config.nbd, ...loadCerts(config.certs, 'server', 'tls.certs') } };
}
