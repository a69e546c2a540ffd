export * from '../servers/test-servers.js';
