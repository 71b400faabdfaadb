// A Worker of your own that asks edge-ratelimit before doing expensive work (README, "Use it from
// your Worker"). Its wrangler.toml binds the limiter:
//   services = [{ binding = "LIMITER", service = "edge-ratelimit", entrypoint = "RateLimiter" }]
import type { RateLimiterBinding } from "../../js/edge-ratelimit";

interface Env {
  LIMITER: RateLimiterBinding;
}

export default {
  async fetch(request: Request, env: Env): Promise<Response> {
    const user = request.headers.get("x-user-id") ?? "anonymous";
    const r = await env.LIMITER.limit({ key: user, cost: request.method === "POST" ? 5 : 1 });
    if (!r.success) {
      return new Response("slow down", { status: 429, headers: { "retry-after": String(r.retryAfter) } });
    }
    return new Response(`ok, ${r.remaining} of ${r.limit} left${r.degraded ? ` (limiter degraded: ${r.degraded})` : ""}`);
  },
} satisfies ExportedHandler<Env>;
