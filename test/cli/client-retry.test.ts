// client-retry: ClusterClient.change() — a membership change retried after its answer was lost
// may find its own earlier success; the refusal that says "already so" then counts as done, but
// only after an attempt whose outcome is unknown (a first-attempt refusal is the user's error).
// The operations are scripted functions, so no cluster is needed (the addresses are never dialled).
import test from 'ava';
import { ClusterClient } from '../../src/cli/client.js';
import { ErrorCode, NotLeaderError, RemoteError, UsageError } from '../../src/errors.js';

function client(): ClusterClient {
  return new ClusterClient([{ admin: '127.0.0.1:1' }], undefined, { retryBackoffMs: 1, retryBackoffMaxMs: 2 });
}

/** script: an operation that throws the given errors in turn, then succeeds; counts its calls. */
function script(errors: Error[]): { fn: () => Promise<void>; calls: () => number } {
  let calls = 0;
  return {
    fn: async () => {
      const error = errors[calls++];
      if (error !== undefined) throw error;
    },
    calls: () => calls,
  };
}

test('a removal refused as NOT_FOUND after a lost answer counts as done', async (t) => {
  const op = script([new RemoteError(ErrorCode.Unavailable, 'connection dropped'), new UsageError(ErrorCode.NotFound, 'node 3 is not a member')]);
  const c = client();
  await t.notThrowsAsync(c.change(op.fn, [ErrorCode.NotFound], 5000));
  t.is(op.calls(), 2);
  c.close();
});

test('NOT_FOUND on the first attempt is the user’s error and is reported', async (t) => {
  const op = script([new UsageError(ErrorCode.NotFound, 'node 9 is not a member')]);
  const c = client();
  await t.throwsAsync(c.change(op.fn, [ErrorCode.NotFound], 5000), { instanceOf: UsageError, message: /node 9 is not a member/ });
  c.close();
});

test('a NOT_LEADER answer is definite (nothing applied), so a later NOT_FOUND is reported', async (t) => {
  const op = script([new NotLeaderError(0, undefined), new UsageError(ErrorCode.NotFound, 'node 9 is not a member')]);
  const c = client();
  await t.throwsAsync(c.change(op.fn, [ErrorCode.NotFound], 5000), { instanceOf: UsageError });
  c.close();
});

test('another refusal after a lost answer is still reported', async (t) => {
  const op = script([new RemoteError(ErrorCode.Unavailable, 'timeout'), new UsageError(ErrorCode.FailedPrecondition, 'cannot remove the last voter')]);
  const c = client();
  await t.throwsAsync(c.change(op.fn, [ErrorCode.NotFound], 5000), { message: /last voter/ });
  c.close();
});
