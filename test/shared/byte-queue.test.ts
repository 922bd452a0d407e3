/**
 * byte-queue: ByteQueue (src/byte-queue.ts), the one cut of received bytes into exact-size pieces
 * behind the NBD server's reader and the raft link's frame decoder. For every way of splitting
 * a 64-byte message into chunks and every piece size, the pieces reassemble the message; a piece
 * inside one chunk is a view of that chunk (shares its memory), a piece across chunks a copy;
 * taking more than is held is a programming error.
 */

import test from 'ava';
import { ByteQueue } from '../../src/byte-queue.js';

const message = Buffer.from(Array.from({ length: 64 }, (_, i) => i));

test('pieces reassemble the stream for every chunk split and piece size', (t) => {
  for (let split = 1; split <= 64; split++) {
    for (let piece = 1; piece <= 64; piece++) {
      const q = new ByteQueue();
      for (let at = 0; at < message.length; at += split) q.push(message.subarray(at, at + split));
      t.is(q.length, 64);
      const out: Buffer[] = [];
      while (q.length >= piece) out.push(q.take(piece));
      out.push(q.take(q.length));
      if (!Buffer.concat(out).equals(message)) {
        t.fail(`split ${split}, piece ${piece}`);
        return;
      }
    }
  }
  t.pass();
});

test('a piece within a chunk is a view, one across chunks a copy; empty chunks are ignored', (t) => {
  const a = Buffer.from('abcdef');
  const b = Buffer.from('ghij');
  const q = new ByteQueue();
  q.push(a);
  q.push(Buffer.alloc(0));
  q.push(b);
  t.is(q.length, 10);
  const view = q.take(4);
  t.is(view.toString(), 'abcd');
  a[0] = 0x41; // 'A'
  t.is(view.toString(), 'Abcd', 'a view of the first chunk: it sees the chunk change');
  const across = q.take(4);
  t.is(across.toString(), 'efgh');
  a[4] = 0x45; // 'E'
  b[0] = 0x47; // 'G'
  t.is(across.toString(), 'efgh', 'a copy: the chunks changing does not change it');
  t.is(q.take(0).length, 0);
  t.throws(() => q.take(3), { message: /take within the queue/ });
  t.is(q.take(2).toString(), 'ij');
  t.is(q.length, 0);
});
