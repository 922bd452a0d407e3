/**
 * partition-probe: a tiny client run INSIDE the test network's client namespace by
 * partition.test.ts (the node processes live in namespaces the test process cannot reach).
 * Usage: node partition-probe.js read ADMIN VOLUME OFFSET LENGTH TIMEOUT_MS
 *        node partition-probe.js write ADMIN VOLUME OFFSET HEXBYTE SESSION SEQUENCE TIMEOUT_MS
 * Prints one JSON line: {"ok":true,"data":"<hex of first 16 bytes>"} or {"ok":false,"code":..,"message":..}.
 */

import * as grpc from '@grpc/grpc-js';
import { defaultClientLimits, NodeApi } from '../../src/cli/client.js';
import { ChardError } from '../../src/errors.js';

async function main(): Promise<void> {
  const [verb, admin, volume, offsetText, ...rest] = process.argv.slice(2);
  const api = new NodeApi(admin!, grpc.credentials.createInsecure(), defaultClientLimits);
  try {
    if (verb === 'read') {
      const [lengthText, timeoutText] = rest;
      const data = await Promise.race([
        api.read(volume!, Number(offsetText), Number(lengthText)),
        new Promise<never>((_, reject) => setTimeout(() => reject(new ChardError('TIMEOUT', 'probe timeout')), Number(timeoutText))),
      ]);
      console.log(JSON.stringify({ ok: true, data: data.subarray(0, 16).toString('hex') }));
    } else if (verb === 'write') {
      const [hexByte, session, sequenceText, timeoutText] = rest;
      const sequence = Number(sequenceText);
      await Promise.race([
        api.submit({ kind: 'write', volume: volume!, offset: Number(offsetText), data: Buffer.alloc(4096, Number.parseInt(hexByte!, 16)), session: { id: session!, sequence, ackedBelow: sequence } }),
        new Promise<never>((_, reject) => setTimeout(() => reject(new ChardError('TIMEOUT', 'probe timeout')), Number(timeoutText))),
      ]);
      console.log(JSON.stringify({ ok: true }));
    } else {
      throw new Error(`unknown verb ${verb}`);
    }
  } catch (error) {
    console.log(JSON.stringify({ ok: false, code: error instanceof ChardError ? error.code : 'ERROR', message: String((error as Error).message) }));
  } finally {
    api.close();
    setTimeout(() => process.exit(0), 50);
  }
}

void main();
