// The RPC floor: a RateLimiter entrypoint that does only what any RPC limiter must — one plain REST call
// (FLOOR = "limit", as the limit Worker) or nothing at all (FLOOR = "deny", a denial known locally) —
// and answers the same result object. Bound to the same caller Worker as edge-ratelimit's entrypoint,
// it shows what the service binding itself costs.
import { WorkerEntrypoint } from "cloudflare:workers";

export class RateLimiter extends WorkerEntrypoint {
  async limit() {
    if (this.env.FLOOR === "deny") {
      return { success: false, remaining: 0, reset: 60, retryAfter: 12, limit: 5, name: "default", shadowDenied: false };
    }
    const reply = await fetch(this.env.UPSTASH_REDIS_REST_URL, {
      method: "POST",
      headers: { authorization: `Bearer ${this.env.UPSTASH_REDIS_REST_TOKEN}` },
      body: '["PING"]',
    });
    await reply.text();
    return { success: true, remaining: 4, reset: 12, retryAfter: 0, limit: 5, name: "default", shadowDenied: false };
  }
}

export default {
  fetch() {
    return new Response("the RPC floor serves RPC only", { status: 404 });
  },
};
