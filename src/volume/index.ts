/**
 * volume: the block volume layer, below the node and above raft — the one block command type and
 * its codec (command.ts), the validation rules of names, sizes and ranges (rules.ts) and the
 * sparse-range walker (ranges.ts). It imports only raft types, errors and assert.
 */

export * from './command.js';
export * from './rules.js';
export * from './ranges.js';
