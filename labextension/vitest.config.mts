import { defineConfig } from 'vitest/config';

export default defineConfig({
  test: {
    include: ['test/**/*.test.ts'],
    environment: 'node',
    // JupyterLab packages ship ES modules without "type": "module": let Vite transform them.
    server: { deps: { inline: [/@jupyterlab\//, /@lumino\//] } },
    testTimeout: 20000
  }
});
