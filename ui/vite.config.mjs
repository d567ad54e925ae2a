// Builds the page (ui/) into ui-dist/, served by `peerbuf serve`. The page imports the core from
// ../src/core as TypeScript sources; elkjs's worker is loaded lazily as a separate asset.
import { fileURLToPath } from "node:url";
import { defineConfig } from "vite";

export default defineConfig({
  root: fileURLToPath(new URL(".", import.meta.url)),
  base: "./",
  logLevel: "warn",
  build: {
    outDir: fileURLToPath(new URL("../ui-dist", import.meta.url)),
    emptyOutDir: true,
    target: "es2022",
    chunkSizeWarningLimit: 4096,
    reportCompressedSize: false,
    rolldownOptions: {
      // the core imports parsers lazily for the CLI; in the page some are also static imports
      checks: { ineffectiveDynamicImport: false },
    },
  },
});
