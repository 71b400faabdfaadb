// The anchor: the published @upstash/ratelimit token bucket (capacity 5, refill 5 per minute — or
// ANCHOR_CAPACITY of each per ANCHOR_WINDOW — key from x-user-id) in a JavaScript Worker, forwarding
// allowed requests to the same origin. `anchor` also makes bench/workers/anchor-fixed.js (its fixed window).
//
// ANCHOR_ROUTE_CAPACITY (the realistic mix): a second Ratelimit per route (that many per
// ANCHOR_ROUTE_WINDOW, key = the path), and both are asked on every request, at once — what a user of
// @upstash/ratelimit writes for a per-caller and a per-route limit (each debits on its own: no all or
// nothing; @upstash/redis's auto-pipelining, on by default, sends the two scripts in one REST call).
import { Ratelimit } from "@upstash/ratelimit";
import { Redis } from "@upstash/redis/cloudflare";

/** A Worker limiting with `algorithm(limit, window)` (a Ratelimit limiter): per caller, and per route if asked. */
export function anchor(algorithm) {
  let limiters;
  return {
    async fetch(request, env) {
      limiters ??= (() => {
        const redis = new Redis({ url: env.UPSTASH_REDIS_REST_URL, token: env.UPSTASH_REDIS_REST_TOKEN });
        const caller = new Ratelimit({ redis, limiter: algorithm(Number(env.ANCHOR_CAPACITY ?? 5), env.ANCHOR_WINDOW ?? "60 s") });
        const keyOfCaller = (req) => req.headers.get("x-user-id") ?? req.headers.get("cf-connecting-ip") ?? "anonymous";
        if (!env.ANCHOR_ROUTE_CAPACITY) return [[caller, keyOfCaller]];
        const route = new Ratelimit({ redis, prefix: "@upstash/ratelimit:route",
          limiter: algorithm(Number(env.ANCHOR_ROUTE_CAPACITY), env.ANCHOR_ROUTE_WINDOW ?? "60 s") });
        return [[caller, keyOfCaller], [route, (req) => new URL(req.url).pathname]];
      })();
      const answers = await Promise.all(limiters.map(([limiter, key]) => limiter.limit(key(request))));
      const denied = answers.find((a) => !a.success);
      if (denied) {
        const retry = Math.max(1, Math.ceil((denied.reset - Date.now()) / 1000));
        return new Response("Too Many Requests", { status: 429, headers: { "retry-after": String(retry) } });
      }
      const url = new URL(request.url);
      return fetch(env.ORIGIN_URL + url.pathname + url.search, request);
    },
  };
}

// The token bucket: `limit` tokens, refilled `limit` per `window` (Upstash refills in steps, once per window).
export default anchor((limit, window) => Ratelimit.tokenBucket(limit, window, limit));
