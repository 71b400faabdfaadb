// The "limit Worker": one plain REST call to the Upstash endpoint, then forward. No Redis-backed
// limiter can cost less than this (one round trip + one forward).
export default {
  async fetch(request, env) {
    const reply = await fetch(env.UPSTASH_REDIS_REST_URL, {
      method: "POST",
      headers: { authorization: `Bearer ${env.UPSTASH_REDIS_REST_TOKEN}` },
      body: '["PING"]',
    });
    await reply.text();
    const url = new URL(request.url);
    return fetch(env.ORIGIN_URL + url.pathname + url.search, request);
  },
};
