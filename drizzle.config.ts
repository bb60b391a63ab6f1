import { defineConfig } from 'drizzle-kit';

// Only `drizzle-kit generate` reads this: it diffs src/store/schema.ts against
// migrations/ and writes the next SQL migration. No database is needed for that.
export default defineConfig({
  dialect: 'postgresql',
  schema: './src/store/schema.ts',
  out: './migrations',
});
