import { defineConfig } from 'vitest/config';

/** `npm run test:compose`: the docker compose stack on a real engine (test/compose/), apart from `npm test`. */
export default defineConfig({
  test: {
    include: ['test/compose/**/*.test.ts'],
    pool: 'forks',
    maxWorkers: 1,
    testTimeout: 600_000,
    hookTimeout: 1_500_000,
    reporters: process.env.CI ? ['default', ['json', { outputFile: 'test-results/vitest-compose.json' }]] : ['default'],
  },
});
