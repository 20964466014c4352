import react from '@vitejs/plugin-react';
import { defineConfig } from 'vite';

// The local ingress (localstack) answers both the predictor and the runtime config.
const backend = process.env.VITE_BACKEND_URL ?? 'http://127.0.0.1:8080';
const proxy = {
  '/v1': { target: backend, changeOrigin: true },
  '/config.json': { target: backend, changeOrigin: true },
};

export default defineConfig({
  plugins: [react()],
  server: { proxy },
  preview: { proxy },
  build: { outDir: 'dist', emptyOutDir: true, sourcemap: false },
  test: {
    environment: 'jsdom',
    include: ['test/**/*.test.{js,jsx}'],
    setupFiles: ['test/setup.js'],
    restoreMocks: true,
  },
});
