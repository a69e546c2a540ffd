import { defineConfig } from 'vitest/config';

export default defineConfig({
  test: {
    include: ['test/**/*.test.ts'],
    // The compose stack has its own command (npm run test:compose) and config.
    exclude: ['test/compose/**', 'node_modules/**'],
    pool: 'forks',
    // Two cores: files run two at a time, each with its own redis-server.
    maxWorkers: 2,
    testTimeout: 30_000,
    hookTimeout: 60_000,
    reporters: process.env.CI ? ['default', ['json', { outputFile: 'test-results/vitest.json' }]] : ['default'],
  },
});
