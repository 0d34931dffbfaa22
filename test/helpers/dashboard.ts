/**
 * The dashboard in headless Chromium (Debian's, through playwright-core):
 * a page at the service's URL; after `f`, no script error may have
 * happened on it.
 */
import assert from 'node:assert/strict';
import { chromium, type Page } from 'playwright-core';

export async function onDashboard(url: string, f: (page: Page) => Promise<void>): Promise<void> {
  const browser = await chromium.launch({ executablePath: '/usr/bin/chromium', args: ['--no-sandbox'] });
  try {
    const page = await browser.newPage();
    const errors: string[] = [];
    page.on('pageerror', (e) => errors.push(String(e)));
    await page.goto(url);
    await f(page);
    assert.deepEqual(errors, [], 'script errors on the dashboard');
  } finally {
    await browser.close();
  }
}
