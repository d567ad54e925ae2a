/**
 * Imported first: zod probes eval support with `Function("")`, which the server's CSP refuses
 * (with a console error). Saying up front that there is none keeps it from trying.
 */
import { config } from "zod";

config({ jitless: true });
