import { defineConfig } from 'drizzle-kit';

// The GC pack's registry data model: its own migrations, applied only when the pack is enabled.
export default defineConfig({
  dialect: 'postgresql',
  schema: './src/store/gc/schema.ts',
  out: './migrations/gc',
});
