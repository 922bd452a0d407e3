/**
 * commands: the state machine's commands are the volume layer's (src/volume/command.ts); this
 * module only re-exports them for the block store's callers.
 */

export { CommandKind, type Command, type DataCommand, type BlockCommand, type Session, applyRows, commandLimits, decodeCommand, encodeCommand } from '../volume/command.js';
export { isValidVolumeName } from '../volume/rules.js';
