// A Worker of the user's own that asks edge-ratelimit over a service binding (Workers RPC) and then
// forwards or answers 429 itself: what `env.LIMITER.limit({ key })` costs next to the gateway
// deciding the same request over HTTP. Both Workers run in one workerd, as on Cloudflare (a service
// binding stays on the same machine), so the CPU column counts both.
export default {
  async fetch(request, env) {
    const key = request.headers.get("x-user-id") ?? "anonymous";
    const r = await env.LIMITER.limit({ key });
    if (!r.success) {
      return new Response("Too Many Requests", { status: 429, headers: { "retry-after": String(r.retryAfter) } });
    }
    const url = new URL(request.url);
    return fetch(env.ORIGIN_URL + url.pathname + url.search, request);
  },
};
