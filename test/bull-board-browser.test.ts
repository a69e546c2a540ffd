/**
 * Bull Board in a real browser (Debian's Chromium, driven by playwright-core): who gets in, what
 * the pages render, that no secret value reaches the DOM, and that read-only mode offers no
 * actions that change jobs. Screenshots land in test-results/bull-board/.
 */
import { existsSync, mkdirSync } from 'node:fs';
import path from 'node:path';
import { chromium, type Browser } from 'playwright-core';
import { FIXTURES } from './helpers/fleet.js';
import { boardFleet } from './helpers/board.js';
import { afterAll, describe, expect, it } from './helpers/fixture.js';

const CHROMIUM =
  process.env.FLEET_CHROMIUM ?? ['/usr/bin/chromium', '/usr/bin/chromium-browser'].find((p) => existsSync(p));
if (!CHROMIUM)
  console.warn(
    'SKIPPING the Bull Board browser test: no Chromium. Fix: apt-get install -y chromium (scripts/install-test-servers.sh does).',
  );
const ADMIN = 'browser-admin-token-0123456789';
const PLAIN = 'browser-plain-token-0123456789';
const SECRET_VALUE = 'browser-secret-value-5550123';
const SHOTS = path.join(FIXTURES, '..', '..', 'test-results', 'bull-board');

let browser: Browser | undefined;
afterAll(async () => {
  await browser?.close();
});

describe.skipIf(!CHROMIUM)('Bull Board in Chromium', () => {
  it('refuses non-admins, renders queues and jobs for an admin with masked data and no secret value in the DOM, and offers no write actions', async ({
    redis,
  }) => {
    mkdirSync(SHOTS, { recursive: true });
    const board = await boardFleet(redis.url, { admin: ADMIN, plain: PLAIN }, SECRET_VALUE);
    const { base, jobs } = board;
    try {
      browser = await chromium.launch({ executablePath: CHROMIUM!, args: ['--no-sandbox', '--disable-gpu'] });

      // No credentials, and a producer that is not an admin: refused.
      // Refused: the 401 page, or (when Chromium gives up on the Basic challenge) a navigation
      // that ends in ERR_INVALID_AUTH_CREDENTIALS. Either way nothing of the board is shown.
      const refused = async (credentials?: { username: string; password: string }): Promise<string> => {
        const ctx = await browser!.newContext(credentials ? { httpCredentials: credentials } : {});
        try {
          const r = await (await ctx.newPage()).goto(`${base}/`);
          return `status ${r?.status()}`;
        } catch (err) {
          return /ERR_INVALID_AUTH_CREDENTIALS/.test(String(err)) ? 'status 401' : String(err);
        } finally {
          await ctx.close();
        }
      };
      expect(await refused()).toBe('status 401');
      expect(await refused({ username: 'anyone', password: PLAIN })).toBe('status 401');
      expect(await refused({ username: 'anyone', password: 'not-a-token-at-all-0123456' })).toBe('status 401');

      const admin = await browser.newContext({ httpCredentials: { username: 'anyone', password: ADMIN } });
      const page = await admin.newPage();
      expect((await page.goto(`${base}/`))?.status()).toBe(200);
      await page.getByText('leaky', { exact: false }).first().waitFor({ timeout: 15_000 });
      await page.screenshot({ path: path.join(SHOTS, 'overview.png'), fullPage: true });
      const overview = await page.locator('body').innerText();
      expect(overview).toContain('ok');
      expect(overview).toContain('leaky');

      const dom: string[] = [await page.content()];
      for (const status of ['completed', 'failed']) {
        await page.goto(`${base}/queue/leaky?status=${status}`);
        await page
          .getByText(jobs[status === 'completed' ? 1 : 2]!.id.split('.')[1]!.slice(0, 8), { exact: false })
          .first()
          .waitFor({ timeout: 15_000 })
          .catch(() => undefined);
        await page.waitForLoadState('networkidle');
        // Open every job card's data view the UI offers.
        for (const tab of await page.getByRole('button', { name: /^data$/i }).all())
          await tab.click().catch(() => undefined);
        await page.screenshot({ path: path.join(SHOTS, `leaky-${status}.png`), fullPage: true });
        dom.push(await page.content());
        // Read-only: none of the actions that change jobs.
        for (const action of [/^retry/i, /^clean/i, /^remove/i, /^promote/i, /^pause/i, /^empty/i]) {
          expect(await page.getByRole('button', { name: action }).count(), `${status}: ${action}`).toBe(0);
        }
      }
      await page.goto(`${base}/queue/ok?status=completed`);
      await page.waitForLoadState('networkidle');
      for (const tab of await page.getByRole('button', { name: /^data$/i }).all())
        await tab.click().catch(() => undefined);
      dom.push(await page.content());
      await page.screenshot({ path: path.join(SHOTS, 'ok-completed.png'), fullPage: true });

      const all = dom.join('\n');
      expect(all).toContain('(secret references)');
      expect(all).toContain('api-key');
      for (const leak of [
        SECRET_VALUE,
        Buffer.from(SECRET_VALUE).toString('base64'),
        Buffer.from(SECRET_VALUE).toString('hex'),
        'tok-in-payload-123456',
      ])
        expect(all).not.toContain(leak);
      await admin.close();
    } finally {
      await board.release();
    }
  }, 90_000);
});
