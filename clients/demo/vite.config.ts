import { fileURLToPath } from 'node:url';
import { defineConfig } from 'vite';

const here = (path: string): string => fileURLToPath(new URL(path, import.meta.url));

/** Where `npm run dev` sends `/ws/*` and the gateway's HTTP endpoints. */
const gateway = process.env.C2S_GATEWAY ?? 'http://127.0.0.1:8080';

// The gateway serves `/` = gateway/static/demo/index.html and `/assets/<file>` from the same folder (embedded
// with rust-embed), so the build goes there with fixed names: one script, one stylesheet, no hashes.
export default defineConfig({
  base: '/',
  resolve: {
    // The SDK is consumed from its TypeScript sources: no build step of its own.
    alias: [
      { find: /^@chat2sql\/realtime\/react$/, replacement: here('../typescript/src/react/index.ts') },
      { find: /^@chat2sql\/realtime$/, replacement: here('../typescript/src/index.ts') },
    ],
    // The SDK's hooks import 'react' from outside this folder: use this package's single copy.
    dedupe: ['react', 'react-dom'],
  },
  build: {
    outDir: here('../../gateway/static/demo'),
    emptyOutDir: true,
    target: 'es2022',
    cssCodeSplit: false,
    modulePreload: { polyfill: false },
    reportCompressedSize: true,
    rollupOptions: {
      output: {
        entryFileNames: 'assets/demo.js',
        chunkFileNames: 'assets/demo-[name].js',
        assetFileNames: (asset) =>
          (asset.names ?? []).some((n) => n.endsWith('.css')) ? 'assets/demo.css' : 'assets/[name][extname]',
        inlineDynamicImports: true,
      },
    },
  },
  server: {
    fs: { allow: [here('..')] },
    proxy: {
      '/ws': { target: gateway, ws: true },
      '/schema': gateway,
      '/healthz': gateway,
      '/readyz': gateway,
    },
  },
});
