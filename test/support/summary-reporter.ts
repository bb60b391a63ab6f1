/**
 * Ends a test run with one plain line, `N passed, N failed[, N skipped]`, which any CI log reader
 * understands; vitest's own summary is coloured and spread over several lines.
 */
import type { Reporter, TestModule } from 'vitest/node';

export default class SummaryReporter implements Reporter {
  onTestRunEnd(testModules: ReadonlyArray<TestModule>, unhandledErrors: ReadonlyArray<unknown>): void {
    const count = { passed: 0, failed: 0, skipped: 0 };
    for (const module of testModules) {
      for (const test of module.children.allTests()) {
        const state = test.result().state;
        if (state === 'passed') count.passed += 1;
        else if (state === 'failed') count.failed += 1;
        else count.skipped += 1;
      }
      // A file that failed to load has no tests to count, but it failed.
      if (module.state() === 'failed' && ![...module.children.allTests()].length) count.failed += 1;
    }
    count.failed += unhandledErrors.length;
    const skipped = count.skipped ? `, ${count.skipped} skipped` : '';
    process.stdout.write(`\n${count.passed} passed, ${count.failed} failed${skipped}\n`);
  }
}
