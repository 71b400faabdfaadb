// The hot-user floor for edge-ratelimit's answer: the 429 it sends (problem+json body, no-store, the
// RateLimit fields and Retry-After), answered by plain JS that already knows the caller is empty.
const BODY = JSON.stringify({
  type: "urn:edge-ratelimit:problem:rate-limited",
  title: "Too Many Requests",
  status: 429,
  detail: 'Rate limit "default" exceeded; retry in 12 s.',
});
export default {
  async fetch() {
    return new Response(BODY, {
      status: 429,
      headers: [
        ["content-type", "application/problem+json"],
        ["cache-control", "no-store"],
        ["ratelimit-policy", '"default";q=5;w=60'],
        ["ratelimit", '"default";r=0;t=12'],
        ["retry-after", "12"],
      ],
    });
  },
};
