/**
 * assert: invariants that stay on in production (TigerBeetle style).
 *
 * A failed assertion is a programmer error: it throws AssertionFailure, which no layer catches
 * as an operating error. Untrusted input is validated at the wire with the protocol's error first;
 * these asserts then restate the same facts inside.
 */

export class AssertionFailure extends Error {
  constructor(message: string) {
    super(`assertion failed: ${message}`);
    this.name = 'AssertionFailure';
  }
}

export function assert(condition: unknown, message = 'invariant'): asserts condition {
  if (!condition) throw new AssertionFailure(message);
}

export function unreachable(value: never, message = 'unreachable'): never {
  throw new AssertionFailure(`${message}: ${String(value)}`);
}
