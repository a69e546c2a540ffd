export * from '../../src/dev/test-servers.js';
