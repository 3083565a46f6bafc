/**
 * The pure rules of deploy/settings.cjs that the packaged template cannot show
 * by itself: which slice lengths a cron can follow, and when reservations fit
 * an account's concurrency quota (checked at `osls deploy` by the plugin).
 */
import assert from 'node:assert/strict';
import { createRequire } from 'node:module';
import { test } from 'node:test';

const settings = createRequire(import.meta.url)('../deploy/settings.cjs') as {
  sliceCron(sliceSeconds: number, offset: number): string;
  concurrencyProblem(accountLimit: number, reservedTotal: number): string | null;
};

test('the flush cron follows slices of whole minutes dividing an hour, or whole hours dividing a day, offset inside the slice', () => {
  assert.equal(settings.sliceCron(600, 1), 'cron(1/10 * * * ? *)');
  assert.equal(settings.sliceCron(300, 0), 'cron(0/5 * * * ? *)');
  assert.equal(settings.sliceCron(60, 0), 'cron(0/1 * * * ? *)');
  assert.equal(settings.sliceCron(3600, 2), 'cron(2 * * * ? *)');
  assert.equal(settings.sliceCron(21_600, 5), 'cron(5 0/6 * * ? *)');
  assert.throws(() => settings.sliceCron(600, 10), /OFFLOG_FLUSH_OFFSET_MINUTES: must be less than a slice \(10 min\), got 10/);
  for (const bad of [2, 90, 420, 5400, 25_200]) assert.throws(() => settings.sliceCron(bad, 0), new RegExp(`OFFLOG_SLICE_SECONDS=${bad}: no cron follows`));
});

test('reservations fit when the quota leaves Lambda its 100 unreserved; a new account (quota 10) is told both ways out', () => {
  assert.equal(settings.concurrencyProblem(1000, 9), null);
  assert.equal(settings.concurrencyProblem(109, 9), null);
  assert.equal(settings.concurrencyProblem(10, 0), null, 'nothing reserved: nothing to fit');
  const problem = settings.concurrencyProblem(108, 9);
  assert.match(problem ?? '', /reserve 9 concurrent executions, and this account's quota is 108: .* at least 109\. Ask for more .*L-B99A9384.*or set OFFLOG_RESERVED_CONCURRENCY=false/);
  assert.notEqual(settings.concurrencyProblem(10, 9), null);
});
