// The anchor: the published @upstash/ratelimit token bucket (capacity 5, refill 5 per minute — or
// ANCHOR_CAPACITY of each — key from x-user-id) in a JavaScript Worker, forwarding allowed requests to the same origin.
import { Ratelimit } from "@upstash/ratelimit";
import { Redis } from "@upstash/redis/cloudflare";

let limiter;

export default {
  async fetch(request, env) {
    limiter ??= new Ratelimit({
      redis: new Redis({ url: env.UPSTASH_REDIS_REST_URL, token: env.UPSTASH_REDIS_REST_TOKEN }),
      // ANCHOR_CAPACITY (the busy-key rows): that many tokens, refilled that many per minute.
      limiter: Ratelimit.tokenBucket(Number(env.ANCHOR_CAPACITY ?? 5), "60 s", Number(env.ANCHOR_CAPACITY ?? 5)),
    });
    const id = request.headers.get("x-user-id") ?? request.headers.get("cf-connecting-ip") ?? "anonymous";
    const { success, reset } = await limiter.limit(id);
    if (!success) {
      const retry = Math.max(1, Math.ceil((reset - Date.now()) / 1000));
      return new Response("Too Many Requests", { status: 429, headers: { "retry-after": String(retry) } });
    }
    const url = new URL(request.url);
    return fetch(env.ORIGIN_URL + url.pathname + url.search, request);
  },
};
