// Writes grafana/dashboards/*.json from grafana/dashboards.ts (run: npm run dashboards).
import { writeFileSync } from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { allDashboards } from '../grafana/dashboards.js';

const dir = path.join(path.dirname(fileURLToPath(import.meta.url)), '..', 'grafana', 'dashboards');
for (const [file, dashboard] of Object.entries(allDashboards())) {
  writeFileSync(path.join(dir, file), `${JSON.stringify(dashboard, null, 2)}\n`);
  console.log(`wrote grafana/dashboards/${file}`);
}
