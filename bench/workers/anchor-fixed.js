// The anchor's other algorithm: the published @upstash/ratelimit fixed window (5 per 60 s — or
// ANCHOR_CAPACITY per ANCHOR_WINDOW — key from x-user-id; per route too with ANCHOR_ROUTE_CAPACITY),
// the same Worker as bench/workers/anchor.js otherwise.
import { Ratelimit } from "@upstash/ratelimit";
import { anchor } from "./anchor.js";

export default anchor((limit, window) => Ratelimit.fixedWindow(limit, window));
